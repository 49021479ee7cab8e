"""Typed shared state: the Task and its lifecycle, task types, statuses, errors, reducers."""

from modelyard.state.errors import (
    AttemptsExhaustedError,
    ConfigError,
    ConfigProblem,
    InvalidTaskError,
    MissingModel,
    ModelCallError,
    ModelErrorKind,
    ModelNotOnServerError,
    ModelyardError,
    NoModelAvailableError,
    UnknownModelError,
)
from modelyard.state.graph_state import (
    CandidateScore,
    FailedAttempt,
    ModelCall,
    PostCompletionProgress,
    Selection,
    TaskInput,
    TaskState,
)
from modelyard.state.post_completion import (
    PostCompletionResult,
    StagedWrite,
    ToolCallRecord,
)
from modelyard.state.review import DEFAULT_MAX_ROUNDS, ReviewRound, Verdict
from modelyard.state.stats import CooldownReason, Health, ModelStats
from modelyard.state.task import Requirements, Task, TaskContext, TaskEvent
from modelyard.state.types import (
    Alternative,
    Classification,
    ClassifierStep,
    Priority,
    Step,
    TaskStatus,
    TaskType,
)

__all__ = [
    "DEFAULT_MAX_ROUNDS",
    "Alternative",
    "AttemptsExhaustedError",
    "CandidateScore",
    "Classification",
    "ClassifierStep",
    "ConfigError",
    "ConfigProblem",
    "CooldownReason",
    "FailedAttempt",
    "Health",
    "InvalidTaskError",
    "MissingModel",
    "ModelCall",
    "ModelCallError",
    "ModelErrorKind",
    "ModelNotOnServerError",
    "ModelStats",
    "ModelyardError",
    "NoModelAvailableError",
    "PostCompletionProgress",
    "PostCompletionResult",
    "Priority",
    "Requirements",
    "ReviewRound",
    "Selection",
    "StagedWrite",
    "Step",
    "Task",
    "TaskContext",
    "TaskEvent",
    "TaskInput",
    "TaskState",
    "TaskStatus",
    "TaskType",
    "ToolCallRecord",
    "UnknownModelError",
    "Verdict",
]
