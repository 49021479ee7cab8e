"""The checkpoint serializer that knows modelyard's state types (no unregistered-type warnings)."""

from __future__ import annotations

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from modelyard.state.fan_out import Branch, BranchResult
from modelyard.state.graph_state import CandidateScore, FailedAttempt, ModelCall, Selection
from modelyard.state.post_completion import PostCompletionResult, StagedWrite, ToolCallRecord
from modelyard.state.review import ReviewRound, Verdict
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

CHECKPOINT_TYPES: tuple[type, ...] = (
    Alternative, Branch, BranchResult, CandidateScore, Classification, ClassifierStep,
    FailedAttempt, ModelCall, Priority,
    Requirements, Selection, Step, Task, TaskContext, TaskEvent, TaskStatus, TaskType,
    ReviewRound, Verdict, PostCompletionResult, StagedWrite, ToolCallRecord,
)  # fmt: skip


def checkpoint_serializer() -> JsonPlusSerializer:
    """Return a serializer for checkpointers that allows exactly modelyard's state types.

    Pass it as `serde=` when you build a checkpointer for modelyard's graphs, e.g.
    `AsyncSqliteSaver(conn, serde=checkpoint_serializer())`.
    """
    return JsonPlusSerializer(
        allowed_msgpack_modules=[(t.__module__, t.__name__) for t in CHECKPOINT_TYPES]
    )
