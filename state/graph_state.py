"""The state that flows through modelyard's graphs, and its reducers."""

from __future__ import annotations

import operator
from datetime import datetime
from typing import Annotated, Any, NotRequired

from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from modelyard.state.post_completion import PostCompletionResult, merge_post_completions
from modelyard.state.review import ReviewRound
from modelyard.state.task import Requirements, TaskContext, TaskEvent
from modelyard.state.types import Classification, TaskStatus, TaskType


class CandidateScore(BaseModel):
    """One candidate's score, factor by factor (each factor 0.0 to 1.0, before weighting)."""

    model: str
    score: float
    """The weighted sum of the factors."""
    factors: dict[str, float] = Field(default_factory=dict)
    """capability, success_rate, latency, cost and provider."""
    trial: bool = False
    """Its cooldown is over and the next call is its trial; trials go first."""


class Selection(BaseModel):
    """The model chosen for one step, and why."""

    step: str
    """The step the model was chosen for (`answer`, `plan`, `implement`)."""
    model: str
    """The configured model's name."""
    task_type: TaskType
    """The task type the model was chosen for."""
    reason: str
    """One sentence saying why this model."""
    score: float = 0.0
    """The winning score."""
    candidates: dict[str, float] = Field(default_factory=dict)
    """Score of every model that passed the filters."""
    excluded: dict[str, str] = Field(default_factory=dict)
    """Why each other model was left out."""
    ranking: list[CandidateScore] = Field(default_factory=list)
    """Every candidate's score by factor, best first (when selection was asked to explain)."""
    trial: bool = False
    """The chosen model is back from a cooldown and this call is its trial."""


class ModelCall(BaseModel):
    """One successful model call: who answered, how fast, at what cost."""

    step: str
    model: str
    provider: str
    latency_ms: float
    first_token_ms: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    attempts: int = 1
    """Attempts this step took on this model (1 = no retry)."""
    prompt: list[dict[str, str]] = Field(default_factory=list)
    """The messages sent (role and content), for the history."""


class FailedAttempt(BaseModel):
    """A model that failed a step for good (its retries spent, or not worth retrying)."""

    step: str
    model: str
    url: str = ""
    """Where the model was called."""
    kind: str
    """The error kind (`server_error`, `timeout`, ...)."""
    message: str
    calls: int = 1
    """Calls made to the model for the step, retries included."""
    streamed_tokens: int = 0
    """Tokens it had streamed before the last failure."""
    context_window: int | None = None
    """Its context window, for a context overflow: the next model needs a larger one."""
    handed_off: bool = False
    """The model was cooled down before its retries were spent: the step moved on without
    counting it as failed for the task, and may come back to it after the cooldown."""

    def as_record(self) -> dict[str, Any]:
        """Return the JSON-safe summary the terminal error lists."""
        return self.model_dump(exclude={"context_window"})


def merge_dicts(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    """Merge two dicts, right winning; the reducer for keyed maps several nodes write."""
    return {**(left or {}), **(right or {})}


class TaskInput(TypedDict):
    """What a caller passes to run a task; only `prompt` is required."""

    prompt: str
    task_id: NotRequired[str]
    task_type: NotRequired[TaskType | str | None]
    model: NotRequired[str | None]
    step_models: NotRequired[dict[str, str]]
    requirements: NotRequired[Requirements | dict[str, Any]]
    context: NotRequired[TaskContext | dict[str, Any]]
    priority: NotRequired[int]
    max_attempts: NotRequired[int]
    max_rounds: NotRequired[int]
    implementation: NotRequired[str]
    created_at: NotRequired[datetime]


class TaskState(TypedDict, total=False):
    """Shared state of modelyard's graphs; keys are absent until a node writes them."""

    task_id: str
    """Task id; set by the caller or by `start`."""
    prompt: str
    """What the user asked; set by the caller."""
    task_type: TaskType | None
    """Given by the caller, else written by `classify`."""
    model: str | None
    """Caller's override: a configured model name for every step."""
    step_models: dict[str, str]
    """Caller's per-step overrides, e.g. {"plan": "reasoner"}."""
    requirements: Requirements
    """What a model must offer; set by the caller, normalised by `classify`."""
    context: TaskContext
    """Generation overrides and caller metadata."""
    priority: int
    """Higher runs first; used by the task runner."""
    max_attempts: int
    """Most models one step may try, the first included, before the task fails."""
    classification: Classification
    """How the task type was decided; written by `classify`."""
    selections: Annotated[dict[str, Selection], merge_dicts]
    """Model chosen per step, and why; written by the select nodes."""
    calls: Annotated[list[ModelCall], operator.add]
    """Every successful model call; appended by the work nodes."""
    history: Annotated[list[TaskEvent], operator.add]
    """Every event; appended by every node."""
    attempts: Annotated[int, operator.add]
    """Model calls made, retries included; added to by the work nodes."""
    failures: Annotated[list[FailedAttempt], operator.add]
    """Models that failed a step for good; selection leaves them out for the rest of the task."""
    plan: str
    """The plan; written by `plan`."""
    implementation: str
    """The code; written by `implement`, and by `revise` in the review loop."""
    rounds: Annotated[list[ReviewRound], operator.add]
    """Every round of the review loop (code, verdict, comments, models); appended by `review`."""
    max_rounds: int
    """Most review rounds before the loop stops without approval; set by the caller."""
    result: str
    """The final answer; written by the last work node."""
    assigned_model: str
    """The model that produced `result`."""
    status: TaskStatus
    """Lifecycle status; running from `classify`, completed by the last work node."""
    error: dict[str, Any] | None
    """Terminal error record, when the task failed."""
    post_completions: Annotated[list[PostCompletionResult], merge_post_completions]
    """One entry per post-completion step that ran, in config order; written by
    `post_complete`, its files by `apply_effects` (entries are merged by index)."""
    created_at: datetime
    started_at: datetime
    finished_at: datetime


class PostCompletionProgress(TypedDict, total=False):
    """The part of `TaskState` that says whether a post-completion step runs next.

    The route after the last work node reads only these keys; LangGraph then copies two
    channels for it instead of the whole state.
    """

    status: TaskStatus
    post_completions: Annotated[list[PostCompletionResult], merge_post_completions]
