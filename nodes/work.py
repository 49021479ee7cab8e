"""The work nodes: answer, plan and implement, each bound to the model selected for it."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.config import get_config, get_stream_writer
from langgraph.runtime import Runtime

from modelyard.configs import ModelRegistry, PullProgress
from modelyard.configs.templates import render_prompt
from modelyard.nodes.calls import call_model
from modelyard.nodes.context import Context
from modelyard.nodes.stats import StatsBook
from modelyard.state import (
    CooldownReason,
    ModelCallError,
    ModelErrorKind,
    ModelNotOnServerError,
    Step,
    TaskContext,
    TaskEvent,
    TaskState,
    TaskStatus,
)
from modelyard.state.task import utcnow


class WorkNode(Protocol):
    """A node that runs one step on its selected model."""

    async def __call__(self, state: TaskState, runtime: Runtime[Context]) -> dict[str, Any]: ...


#: The state key each step writes its text to.
OUTPUT_KEYS = {Step.ANSWER: "result", Step.PLAN: "plan", Step.IMPLEMENT: "implementation"}


def work_node(step: Step, *, final: bool) -> WorkNode:
    """Return a node that runs `step` on its selected model.

    Args:
        step: The step; its prompt template is `configs/prompts/<step>.md`.
        final: Whether this step's text is the task's result, ending the task.
    """

    async def work(state: TaskState, runtime: Runtime[Context]) -> dict[str, Any]:
        registry = runtime.context.models()
        selection = state["selections"][step.value]
        model = registry.get(selection.model)
        messages: list[BaseMessage] = []
        if model.system_prompt:
            messages.append(SystemMessage(model.system_prompt))
        messages.append(HumanMessage(render_prompt(step.value, **_prompt_values(state))))
        attempt = runtime.execution_info.node_attempt if runtime.execution_info else 1
        task_context = state.get("context") or TaskContext()
        book = StatsBook(runtime.store, registry.config)
        if attempt > 1:
            await wait_out_rate_limit(book, registry, model.name, attempt)
        try:
            await ensure_on_server(registry, model.name, attempt=attempt)
            message, call = await call_model(
                registry,
                model.name,
                messages,
                step=step.value,
                overrides=task_context.options,
                config=_tagged(get_config(), state, step, model.name, attempt),
                attempt=attempt,
            )
        except ModelCallError as error:
            if error.kind is ModelErrorKind.NOT_FOUND:
                registry.server_models.forget(model.name)  # ask its server again next time
            stats = await book.record_failure(error)
            too_long = (error.retry_after or 0.0) > registry.config.retry.max_retry_after
            resting = stats.cooldown_reason is CooldownReason.FAILURES
            if (resting and stats.cooldown_left(book.clock()) > 0) or too_long:
                error.give_up = True  # the model is resting: fall back, do not retry it
            raise
        await book.record_success(call)
        retried = f" after {attempt} attempts" if attempt > 1 else ""
        event = TaskEvent(
            kind="model_call",
            step=step.value,
            model=model.name,
            detail=f"{model.name} answered in {call.latency_ms:.0f} ms{retried}",
            data={
                "latency_ms": call.latency_ms,
                "input_tokens": call.input_tokens,
                "output_tokens": call.output_tokens,
                "attempts": attempt,
            },
        )
        update: dict[str, Any] = {
            OUTPUT_KEYS[step]: message.content,
            "calls": [call],
            "attempts": attempt,
            "history": [event],
        }
        if final:
            update |= {
                "result": message.content,
                "assigned_model": model.name,
                "status": TaskStatus.COMPLETED,
                "finished_at": utcnow(),
                "error": None,
                "history": [event, TaskEvent(kind="completed", step=step.value, model=model.name)],
            }
        return update

    work.__name__ = work.__qualname__ = step.value
    return work


async def wait_out_rate_limit(
    book: StatsBook, registry: ModelRegistry, name: str, attempt: int
) -> None:
    """Before a retry: wait out the model's Retry-After, or give up on a model cooled down.

    Raises:
        ModelCallError: the model was cooled down for failures, or its server asked for a
            longer wait than `retry.max_retry_after`; not retryable, so the step falls back.
    """
    stats = await book.get(name)
    left = stats.cooldown_left(book.clock())
    if left <= 0:
        return
    cap = registry.config.retry.max_retry_after
    if stats.cooldown_reason is CooldownReason.RATE_LIMITED and left <= cap:
        await asyncio.sleep(left)
        return
    last = stats.last_error or {}
    error = ModelCallError(
        ModelErrorKind(last.get("kind", ModelErrorKind.SERVER_ERROR.value)),
        model=name,
        url=registry.base_url(name),
        detail=f"cooled down for {left:.1f} s more after: {last.get('message', 'failures')}",
    )
    error.attempts, error.give_up = attempt - 1, True
    raise error


async def ensure_on_server(registry: ModelRegistry, name: str, *, attempt: int = 1) -> None:
    """Before a call: make sure the model is on its server, pulling it when it may.

    Pull progress goes to the run's custom stream (`{"modelyard_event": "pull", ...}`).

    Raises:
        ModelCallError: `not_found`, not retryable: the server lacks the model and it may
            not be pulled, or the pull failed; says what the server has and what to do.
    """
    try:
        await registry.server_models.ensure(name, listener=stream_pull_progress)
    except ModelNotOnServerError as exc:
        (missing,) = exc.missing
        error = ModelCallError(
            ModelErrorKind.NOT_FOUND,
            model=name,
            url=registry.base_url(name),
            detail=missing.detail,
            hint=missing.advice,
        )
        error.attempts = attempt
        raise error from exc


def stream_pull_progress(progress: PullProgress) -> None:
    """Report a pull's progress on the run's custom stream; do nothing outside a run."""
    try:
        write = get_stream_writer()
    except (RuntimeError, KeyError):
        return
    write(progress.as_event())


def _prompt_values(state: TaskState) -> dict[str, str]:
    return {"prompt": state["prompt"], "plan": state.get("plan", "")}


def _tagged(
    config: RunnableConfig, state: TaskState, step: Step, model: str, attempt: int
) -> RunnableConfig:
    """Return the run config with the routing in its tags and metadata, for tracing."""
    task_type = state.get("task_type")
    return {
        **config,
        "run_name": f"{step.value}:{model}",
        "tags": [*config.get("tags", []), f"modelyard:{step.value}", f"model:{model}"],
        "metadata": {
            **config.get("metadata", {}),
            "modelyard_task_id": state.get("task_id"),
            "modelyard_task_type": str(task_type) if task_type else None,
            "modelyard_step": step.value,
            "modelyard_model": model,
            "modelyard_attempt": attempt,
        },
    }
