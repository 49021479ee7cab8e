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


class Classification(BaseModel):
    """A classifier's decision about a prompt."""

    task_type: TaskType
    """The task type chosen."""
    confidence: float = Field(ge=0.0, le=1.0)
    """How sure the classifier is, 0.0 to 1.0."""
    method: str
    """Which method decided: `caller`, `keyword`, ..."""
    scores: dict[TaskType, float] = Field(default_factory=dict)
    """Raw score per task type, for explaining the decision."""
