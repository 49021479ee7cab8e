"""The Task: one request to modelyard and everything that happened to it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from modelyard.state.post_completion import PostCompletionResult
from modelyard.state.review import DEFAULT_MAX_ROUNDS, ReviewRound
from modelyard.state.types import Priority, TaskStatus, TaskType

if TYPE_CHECKING:
    from modelyard.state.graph_state import TaskInput


def utcnow() -> datetime:
    """Return the current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def new_task_id() -> str:
    """Return a fresh task id."""
    return uuid.uuid4().hex


class Requirements(BaseModel):
    """What a model must offer to take a task."""

    min_context_length: int | None = Field(default=None, ge=1)
    """Smallest context window (tokens) acceptable; the prompt's own size is always checked."""
    target_model: str | None = None
    """Run on this configured model only."""
    target_provider: str | None = None
    """Run on models of this provider only (`ollama`, `openai`, ...)."""
    needs_streaming: bool = False
    """Only models that stream tokens."""
    needs_tools: bool = False
    """Only models that support tool calling."""


class TaskContext(BaseModel):
    """Per-task settings that shape the model calls."""

    options: dict[str, Any] = Field(default_factory=dict)
    """Generation parameter overrides for this task (`temperature`, `num_ctx`, ...)."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Free-form data the caller wants carried along (user id, source, ...)."""


class TaskEvent(BaseModel):
    """One entry in a task's history."""

    at: datetime = Field(default_factory=utcnow)
    """When it happened (UTC)."""
    kind: str
    """What happened: `classified`, `selected`, `model_call`, `completed`, `failed`, ..."""
    step: str | None = None
    """The step it belongs to, if any."""
    model: str | None = None
    """The model involved, if any."""
    detail: str = ""
    """A human-readable sentence."""
    data: dict[str, Any] = Field(default_factory=dict)
    """Structured details (scores, latency, error record)."""


class Task(BaseModel):
    """A request and its lifecycle: what was asked, who took it, what came back."""

    id: str = Field(default_factory=new_task_id)
    """Unique id; also the LangGraph thread id when the task is durable."""
    prompt: str
    """What the user asked."""
    task_type: TaskType | None = None
    """Given by the caller, or set by the classifier."""
    model: str | None = None
    """A configured model name that overrides routing for every step."""
    priority: int = Priority.NORMAL
    """Higher runs first."""
    context: TaskContext = Field(default_factory=TaskContext)
    """Generation overrides and caller metadata."""
    requirements: Requirements = Field(default_factory=Requirements)
    """What a model must offer to take this task."""
    status: TaskStatus = TaskStatus.PENDING
    """Where the task is in its lifecycle."""
    assigned_model: str | None = None
    """The model that produced the final result."""
    plan: str | None = None
    """The plan, for plan-then-implement."""
    result: str | None = None
    """The final answer (the implementation, for plan-then-implement)."""
    error: dict[str, Any] | None = None
    """The terminal error record, when the task failed."""
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    """Model calls made, retries included."""
    max_attempts: int = Field(default=3, ge=1)
    """Most models one step may try (each with the config's retries) before the task fails."""
    max_rounds: int = Field(default=DEFAULT_MAX_ROUNDS, ge=1)
    """Most review rounds in the review graphs before the loop stops without approval."""
    rounds: list[ReviewRound] = Field(default_factory=list)
    """Every review round (code, verdict, comments, models), for the review graphs."""
    history: list[TaskEvent] = Field(default_factory=list)
    """Every event, in order."""
    post_completions: list[PostCompletionResult] = Field(default_factory=list)
    """The post-completion steps that ran after the result, in config order."""

    def to_input(self) -> TaskInput:
        """Return the graph input that runs this task."""
        payload: TaskInput = {
            "task_id": self.id,
            "prompt": self.prompt,
            "priority": self.priority,
            "context": self.context,
            "requirements": self.requirements,
            "max_attempts": self.max_attempts,
            "max_rounds": self.max_rounds,
            "created_at": self.created_at,
        }
        if self.task_type is not None:
            payload["task_type"] = self.task_type
        if self.model is not None:
            payload["model"] = self.model
        return payload

    def with_state(self, state: dict[str, Any]) -> Task:
        """Return a copy updated from a graph's final state."""
        task_type, status = state.get("task_type", self.task_type), state.get("status", self.status)
        # Checkpointers that keep plain strings as JSON (PostgreSQL) give enums back as str.
        return self.model_copy(
            update={
                "task_type": TaskType(task_type) if task_type is not None else None,
                "status": TaskStatus(status),
                "plan": state.get("plan", self.plan),
                "assigned_model": state.get("assigned_model", self.assigned_model),
                "result": state.get("result", self.result),
                "error": state.get("error", self.error),
                "started_at": state.get("started_at", self.started_at),
                "finished_at": state.get("finished_at", self.finished_at),
                "attempts": state.get("attempts", self.attempts),
                "history": list(state.get("history", self.history)),
                "post_completions": [
                    PostCompletionResult.model_validate(p)
                    for p in state.get("post_completions", self.post_completions)
                ],
                "rounds": [ReviewRound.model_validate(r) for r in state.get("rounds", self.rounds)],
            }
        )
