"""Task types, statuses, priorities and the steps a graph runs."""

from __future__ import annotations

from enum import IntEnum, StrEnum

from pydantic import BaseModel, Field


class TaskType(StrEnum):
    """The kind of work a prompt asks for (see ../shared/eval/LABELS.md)."""

    PLANNING = "planning"
    CODE_GENERATION = "code_generation"
    CODE_REVIEW = "code_review"
    PROBLEM_SOLVING = "problem_solving"
    EXPLANATION = "explanation"
    GENERAL = "general"


class TaskStatus(StrEnum):
    """Where a task is in its lifecycle."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Priority(IntEnum):
    """Named priorities; any int works, higher runs first."""

    LOW = 0
    NORMAL = 5
    HIGH = 10
    URGENT = 20


class Step(StrEnum):
    """A unit of model work inside a graph; each step gets its own model."""

    ANSWER = "answer"
    PLAN = "plan"
    IMPLEMENT = "implement"
    REVIEW = "review"
    REVISE = "revise"


class Alternative(BaseModel):
    """A task type the classifier considered, with its probability."""

    task_type: TaskType
    confidence: float = Field(ge=0.0, le=1.0)


class ClassifierStep(BaseModel):
    """One method tried by a classifier cascade, and what came of it."""

    method: str
    """`keyword`, `embedding` or `llm`."""
    task_type: TaskType | None = None
    """Its answer; None when it failed."""
    confidence: float | None = None
    """Its confidence in that answer."""
    outcome: str
    """`decided`, `unsure` (under its threshold: the next method was asked), `failed`
    (with `note` saying why) or `skipped`."""
    note: str = ""
    seconds: float = 0.0
    """How long the method took."""


class Classification(BaseModel):
    """A classifier's decision about a prompt."""

    task_type: TaskType
    """The task type chosen."""
    confidence: float = Field(ge=0.0, le=1.0)
    """How sure the classifier is, 0.0 to 1.0."""
    method: str
    """Which method decided: `caller`, `keyword`, `embedding` or `llm`."""
    scores: dict[TaskType, float] = Field(default_factory=dict)
    """Score per task type, for explaining the decision: raw keyword scores, or the
    embedding classifier's probabilities."""
    alternatives: list[Alternative] = Field(default_factory=list)
    """The next most likely task types, most likely first (up to three)."""
    steps: list[ClassifierStep] = Field(default_factory=list)
    """Each method a cascade tried, in order, one of them `decided` (empty for one method)."""
