"""Typed shared state: the Task and its lifecycle, task types, statuses, errors, reducers."""

from modelyard.state.errors import (
    ConfigError,
    ConfigProblem,
    InvalidTaskError,
    ModelCallError,
    ModelErrorKind,
    ModelyardError,
    NoModelAvailableError,
    UnknownModelError,
)
from modelyard.state.graph_state import ModelCall, Selection, TaskInput, TaskState
from modelyard.state.task import Requirements, Task, TaskContext, TaskEvent
from modelyard.state.types import Classification, Priority, Step, TaskStatus, TaskType

__all__ = [
    "Classification",
    "ConfigError",
    "ConfigProblem",
    "InvalidTaskError",
    "ModelCall",
    "ModelCallError",
    "ModelErrorKind",
    "ModelyardError",
    "NoModelAvailableError",
    "Priority",
    "Requirements",
    "Selection",
    "Step",
    "Task",
    "TaskContext",
    "TaskEvent",
    "TaskInput",
    "TaskState",
    "TaskStatus",
    "TaskType",
    "UnknownModelError",
]
