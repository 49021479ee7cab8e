"""The fan-out graph's state: the branches to run side by side, and the results they gather."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from modelyard.state.graph_state import ModelCall
from modelyard.state.task import Requirements, Task, TaskContext
from modelyard.state.types import TaskStatus, TaskType

#: The graphs a branch can run: one answer, or a plan and then its implementation.
BranchGraph = Literal["route", "plan_and_implement"]


class Branch(BaseModel):
    """One task of a fan-out: what to ask, and optionally its task type, model and graph."""

    prompt: str
    """What to ask."""
    label: str = ""
    """The branch's name in the results; default: its model, else `branch <n>`."""
    task_type: TaskType | None = None
    """Skip classification and route as this task type."""
    model: str | None = None
    """Run on this configured model only: no fallback to another model."""
    graph: BranchGraph = "route"
    """`route` (classify, select, answer) or `plan_and_implement` (plan, then code)."""
    requirements: Requirements = Field(default_factory=Requirements)
    """What a model must offer to take this branch."""
    context: TaskContext = Field(default_factory=TaskContext)
    """Generation overrides and caller metadata for this branch."""
    max_attempts: int = Field(default=3, ge=1)
    """Most models a step of this branch may try."""

    def to_task(self) -> Task:
        """Return the Task this branch runs."""
        return Task(
            prompt=self.prompt,
            task_type=self.task_type,
            model=self.model,
            requirements=self.requirements,
            context=self.context,
            max_attempts=self.max_attempts,
        )


class BranchResult(BaseModel):
    """What one branch came back with, failed or not; written by the branch node."""

    index: int
    """The branch's position in the input; results are kept in this order."""
    label: str
    """The branch's label."""
    task_id: str
    """The id of the task the branch ran."""
    prompt: str
    """What was asked."""
    status: TaskStatus
    """`completed`, or `failed` with `error` set."""
    task_type: TaskType | None = None
    """The task type it was routed as."""
    model: str | None = None
    """The model that answered; for a failed branch, the model asked for, else the last tried."""
    answer: str | None = None
    """The answer (the implementation, for `plan_and_implement`)."""
    plan: str | None = None
    """The plan, for `plan_and_implement`."""
    latency_ms: float
    """The branch's wall time: classification, selection, every call, retries and fallbacks."""
    started_at: datetime
    """When the branch started (UTC)."""
    finished_at: datetime
    """When the branch ended (UTC)."""
    input_tokens: int = 0
    """Tokens sent, over the branch's successful calls."""
    output_tokens: int = 0
    """Tokens received, over the branch's successful calls."""
    cost: float = 0.0
    """Cost of the branch's successful calls."""
    attempts: int = 0
    """Model calls made, retries and failed calls included."""
    calls: list[ModelCall] = Field(default_factory=list)
    """Every successful model call of the branch."""
    error: dict[str, Any] | None = None
    """The branch's terminal error record, when it failed."""

    @property
    def ok(self) -> bool:
        """Whether the branch completed."""
        return self.status is TaskStatus.COMPLETED


def collect_results(
    left: list[BranchResult] | None, right: list[BranchResult] | None
) -> list[BranchResult]:
    """Merge branch results by index, in branch order; `None` clears them for a new run."""
    if right is None:
        return []
    merged = {r.index: r for r in left or []} | {r.index: r for r in right}
    return [merged[index] for index in sorted(merged)]


class FanOutInput(TypedDict):
    """What a caller passes: `branches`, or one `prompt` to ask each of `models`."""

    branches: NotRequired[list[Branch | dict[str, Any]]]
    prompt: NotRequired[str]
    models: NotRequired[list[str]]
    task_type: NotRequired[TaskType | str | None]


class BranchJob(TypedDict):
    """What the fan-out sends to one run of the branch node."""

    index: int
    """The branch's position in the input."""
    branch: Branch
    """The branch to run."""


class FanOutState(TypedDict, total=False):
    """State of the fan-out graph; keys are absent until a node writes them."""

    branches: list[Branch]
    """The branches, checked and labelled; given by the caller, normalised by `fan_out`."""
    prompt: str | None
    """With `models`: the one prompt every model answers; set by the caller, cleared by
    `fan_out` once it is in `branches`."""
    models: list[str] | None
    """With `prompt`: the models to compare, one branch each; set by the caller, cleared by
    `fan_out`."""
    task_type: TaskType | str | None
    """With `prompt` and `models`: skip classification; set by the caller, cleared by
    `fan_out`."""
    results: Annotated[list[BranchResult], collect_results]
    """One result per branch, in branch order; cleared by `fan_out`, added to by `branch`."""
    failed: list[str]
    """Labels of the branches that failed, in branch order; written by `gather`."""
