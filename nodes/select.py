"""The select nodes: pick the model for a step from the config and the models' live stats."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from langgraph.config import get_stream_writer
from langgraph.runtime import Runtime

from modelyard.nodes.context import Context
from modelyard.nodes.stats import StatsBook
from modelyard.routers import estimate_tokens, select_model, task_type_for_step
from modelyard.state import (
    AttemptsExhaustedError,
    FailedAttempt,
    ModelErrorKind,
    NoModelAvailableError,
    Requirements,
    Selection,
    Step,
    TaskEvent,
    TaskState,
)


class SelectNode(Protocol):
    """A node that selects the model for one step."""

    async def __call__(self, state: TaskState, runtime: Runtime[Context]) -> dict[str, Any]: ...


def select_model_for(step: Step) -> SelectNode:
    """Return a node that selects the model for `step` and records why.

    Models that already failed in this task are left out, and after a context overflow only
    models with a larger window are candidates. When every candidate is cooled down, the
    node waits for the first to come back, up to `cooldown.max_wait_seconds`.
    """

    async def select(state: TaskState, runtime: Runtime[Context]) -> dict[str, Any]:
        registry = runtime.context.models()
        config = registry.config
        book = StatsBook(runtime.store, config)
        failures = state.get("failures") or []
        step_failures = [f for f in failures if f.step == step.value]
        overflowed = [
            f.context_window or 0
            for f in step_failures
            if f.kind == ModelErrorKind.CONTEXT_OVERFLOW.value
        ]
        task_type = task_type_for_step(step, state.get("task_type"))
        override = (state.get("step_models") or {}).get(step.value) or state.get("model")
        waited = 0.0
        while True:
            stats = await book.snapshot()
            try:
                selection = select_model(
                    step=step,
                    task_type=task_type,
                    models=config.models,
                    requirements=state.get("requirements") or Requirements(),
                    prompt_tokens=estimate_tokens(state["prompt"]),
                    stats=stats,
                    settings=config.selection,
                    cooldown=config.cooldown,
                    override=override,
                    excluded={f.model for f in failures if not f.handed_off},
                    larger_than=max(overflowed, default=0),
                    now=book.clock(),
                    explain=True,
                )
            except NoModelAvailableError as error:
                pause = min(error.back_in.values(), default=None)
                if pause is None or waited + pause > config.cooldown.max_wait_seconds:
                    if step_failures:
                        attempts = [f.as_record() for f in step_failures]
                        tried = {f.model for f in failures if not f.handed_off}
                        others = {m: why for m, why in error.reasons.items() if m not in tried}
                        raise AttemptsExhaustedError(step.value, attempts, others) from None
                    raise
                await asyncio.sleep(pause + 0.01)
                waited += pause + 0.01
                continue
            if not selection.trial or await book.claim_trial(selection.model):
                break
        return {
            "selections": {step.value: selection},
            "history": _events(step, selection, step_failures[-1] if step_failures else None),
        }

    select.__name__ = select.__qualname__ = f"select_{step.value}"
    return select


def _events(step: Step, selection: Selection, failed: FailedAttempt | None) -> list[TaskEvent]:
    """Return the `selected` event, after a `fallback` event when a model just failed.

    A model that failed after streaming tokens is announced on the custom stream too, so
    that whoever shows the stream can say that the text so far came from a failed model.
    """
    events = []
    if failed is not None:
        notice = (
            f"{failed.model} failed after {failed.streamed_tokens} tokens: {failed.kind}; "
            f"continuing on {selection.model}"
            if failed.streamed_tokens
            else f"{failed.model} failed: {failed.kind}; continuing on {selection.model}"
        )
        data = failed.as_record() | {"next_model": selection.model}
        events.append(
            TaskEvent(
                kind="fallback", step=step.value, model=failed.model, detail=notice, data=data
            )
        )
        if failed.streamed_tokens:
            get_stream_writer()({"modelyard_event": "fallback", "detail": notice, **data})
    events.append(
        TaskEvent(
            kind="selected",
            step=step.value,
            model=selection.model,
            detail=selection.reason,
            data={
                "candidates": selection.candidates,
                "excluded": selection.excluded,
                "ranking": [c.model_dump() for c in selection.ranking],
                "trial": selection.trial,
            },
        )
    )
    return events
