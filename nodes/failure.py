"""Error handlers: fall back to another model when one fails a step, or end the task clearly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langgraph.errors import NodeError
from langgraph.runtime import Runtime
from langgraph.types import Command

from modelyard.nodes.context import Context
from modelyard.state import (
    AttemptsExhaustedError,
    FailedAttempt,
    ModelCallError,
    ModelErrorKind,
    ModelyardError,
    Step,
    TaskEvent,
    TaskState,
    TaskStatus,
)
from modelyard.state.task import utcnow


async def record_failure(state: TaskState, error: NodeError) -> Command[Any]:
    """End the task as failed with the error's record; re-raise errors that are bugs."""
    exc = error.error
    if not isinstance(exc, ModelyardError):
        raise exc
    return _fail(error.node, exc)


#: Hand-offs from cooled-down models a step may make per attempt it may count.
MAX_HAND_OFFS = 3

#: An error handler that sends a failed step back to selection; LangGraph passes it the
#: state, the `NodeError` and the run's `Runtime`.
FallbackHandler = Callable[..., Awaitable[Command[Any]]]


def fall_back(step: Step, select_node: str) -> FallbackHandler:
    """Return the error handler of a work node: on a failed model, select another one.

    It runs when the node's retries are spent, or at once for an error not worth retrying.
    The failed model is recorded in `failures` (selection leaves it out for the rest of the
    task) and the graph goes back to `select_node`, until the step has tried the task's
    `max_attempts` models; then the task fails with every attempt listed. A model that was
    cooled down before its retries were spent is handed off instead: not left out, not
    counted (up to `MAX_HAND_OFFS` times `max_attempts` hand-offs). A caller's model
    override is never replaced by another model.
    """

    async def handler(
        state: TaskState, error: NodeError, runtime: Runtime[Context]
    ) -> Command[Any]:
        exc = error.error
        if not isinstance(exc, ModelCallError):
            return await record_failure(state, error)
        registry = runtime.context.models()
        model = registry.get(exc.model)
        failed = FailedAttempt(
            step=step.value,
            model=exc.model,
            url=exc.url,
            kind=exc.kind.value,
            message=str(exc),
            calls=exc.attempts,
            streamed_tokens=exc.streamed_tokens,
            context_window=(
                model.context_window if exc.kind is ModelErrorKind.CONTEXT_OVERFLOW else None
            ),
            handed_off=exc.give_up and exc.attempts < registry.config.retry.max_attempts,
        )
        tried = [f for f in state.get("failures") or [] if f.step == step.value] + [failed]
        pinned = state.get("model") or (state.get("step_models") or {}).get(step.value)
        max_attempts = state.get("max_attempts", 3)
        counted = [f for f in tried if not f.handed_off]
        handed_off = len(tried) - len(counted)
        if len(counted) >= max_attempts or handed_off > MAX_HAND_OFFS * max_attempts or pinned:
            failed_models = {f.model for f in state.get("failures") or []} | {exc.model}
            why = (
                f"the caller asked for {pinned} only"
                if pinned
                else f"not tried: the task's max_attempts ({max_attempts}) was reached"
            )
            remaining = {
                name: why for name in registry.config.model_names if name not in failed_models
            }
            exhausted = AttemptsExhaustedError(
                step.value, [f.as_record() for f in tried], remaining
            )
            return _fail(error.node, exhausted, {"failures": [failed], "attempts": exc.attempts})
        return Command(
            goto=select_node,
            update={
                "failures": [failed],
                "attempts": exc.attempts,
                "history": [
                    TaskEvent(
                        kind="model_failed",
                        step=step.value,
                        model=exc.model,
                        detail=str(exc),
                        data=exc.as_record(),
                    )
                ],
            },
        )

    handler.__name__ = handler.__qualname__ = f"fall_back_{step.value}"
    return handler


def _fail(node: str, exc: ModelyardError, extra: dict[str, Any] | None = None) -> Command[Any]:
    if isinstance(exc, ModelCallError | AttemptsExhaustedError):
        record = exc.as_record()
    else:
        record = {"kind": type(exc).__name__, "message": str(exc)}
    record["node"] = node
    model = record.get("model")
    event = TaskEvent(
        kind="failed",
        step=node,
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
    return Command(goto="__end__", update=update | (extra or {}))
