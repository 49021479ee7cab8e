"""The error handler: a step that failed for good ends the task with a clear error record."""

from __future__ import annotations

from typing import Literal

from langgraph.errors import NodeError
from langgraph.types import Command

from modelyard.state import ModelCallError, ModelyardError, TaskEvent, TaskState, TaskStatus
from modelyard.state.task import utcnow


async def record_failure(state: TaskState, error: NodeError) -> Command[Literal["__end__"]]:
    """End the task as failed with the error's record; re-raise errors that are bugs."""
    exc = error.error
    if not isinstance(exc, ModelyardError):
        raise exc
    if isinstance(exc, ModelCallError):
        record = exc.as_record()
    else:
        record = {"kind": type(exc).__name__, "message": str(exc)}
    record["node"] = error.node
    model = record.get("model")
    event = TaskEvent(
        kind="failed",
        step=error.node,
        model=model if isinstance(model, str) else None,
        detail=str(exc),
        data=record,
    )
    update: dict[str, object] = {
        "status": TaskStatus.FAILED,
        "error": record,
        "finished_at": utcnow(),
        "history": [event],
    }
    if isinstance(exc, ModelCallError):
        update["attempts"] = exc.attempts  # the failed calls count too
    return Command(goto="__end__", update=update)
