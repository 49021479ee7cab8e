"""The work nodes: answer, plan, implement, review and revise, each bound to its model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from langchain_core.runnables import RunnableConfig
from langgraph.config import get_config, get_stream_writer
from langgraph.runtime import Runtime

from modelyard.configs import ModelRegistry, PullProgress
from modelyard.configs.templates import render_messages
from modelyard.nodes.calls import call_model
from modelyard.nodes.context import Context
from modelyard.nodes.stats import StatsBook
from modelyard.state import (
    CooldownReason,
    ModelCall,
    ModelCallError,
    ModelErrorKind,
    ModelNotOnServerError,
    Step,
    TaskContext,
    TaskEvent,
    TaskState,
    TaskStatus,
    TaskType,
)
from modelyard.state.task import utcnow


class WorkNode(Protocol):
    """A node that runs one step on its selected model."""

    async def __call__(self, state: TaskState, runtime: Runtime[Context]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class StepReply:
    """A model's answer to one step, for the function that turns it into a state update."""

    text: str
    """The answer's text."""
    model: str
    """The configured model that answered."""
    url: str
    """Where it was called."""
    call: ModelCall
    """The record of the call (latency, tokens, ...)."""
    attempt: int
    """Which attempt on this model it was (1 = no retry)."""


#: Turns a step's answer into the state update; may raise ModelCallError for an answer it
#: cannot use (it is retried and falls back like any failed call). History events it
#: returns come after the step's `model_call` event.
Finish = Callable[[TaskState, StepReply], dict[str, Any]]

#: The values a step's prompt template fills in, from the state.
PromptValues = Callable[[TaskState], dict[str, Any]]

#: Which configured model runs a step, from the state.
ModelFor = Callable[[TaskState], str]

#: The state key each step writes its text to.
OUTPUT_KEYS = {Step.ANSWER: "result", Step.PLAN: "plan", Step.IMPLEMENT: "implementation"}


def work_node(
    step: Step,
    *,
    final: bool = False,
    values: PromptValues | None = None,
    model: ModelFor | None = None,
    finish: Finish | None = None,
) -> WorkNode:
    """Return a node that runs `step` on its model.

    Every step gets the same machinery: the model's template for the step
    (`configs.templates`), the wait for a rate limit before a retry, the check that the
    model is on its server, the call with the routing in its tags and metadata, the
    model's stats, and errors as ModelCallError for the retry policy and the fallback.

    Args:
        step: The step; it names the model's prompt template and the stream metadata.
        final: Whether this step's text is the task's result, ending the task (with the
            default `finish`).
        values: The template's values; default: the task's prompt and its plan.
        model: The model to run; default: the one selected for `step`.
        finish: Turns the answer into the state update; default: the text goes to the
            step's key in `OUTPUT_KEYS` (and to `result`, when `final`).
    """
    values = values or _prompt_values
    model_for = model or _selected_model(step)
    finish = finish or write_output(step, final=final)

    async def work(state: TaskState, runtime: Runtime[Context]) -> dict[str, Any]:
        registry = runtime.context.models()
        model = registry.get(model_for(state))
        messages, prompt = render_messages(model, step.value, **values(state))
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
                config=tagged(get_config(), state, step.value, model.name, attempt),
                attempt=attempt,
            )
            answered_at = utcnow()  # the model_call event comes before what finish adds
            reply = StepReply(
                str(message.content), model.name, registry.base_url(model.name), call, attempt
            )
            update = _finish(finish, state, reply)
        except ModelCallError as error:
            await note_failure(book, registry, error)
            raise
        await book.record_success(call)
        retried = f" after {attempt} attempts" if attempt > 1 else ""
        event = TaskEvent(
            at=answered_at,
            kind="model_call",
            step=step.value,
            model=model.name,
            detail=f"{model.name} answered in {call.latency_ms:.0f} ms{retried}",
            data={
                "latency_ms": call.latency_ms,
                "input_tokens": call.input_tokens,
                "output_tokens": call.output_tokens,
                "attempts": attempt,
                "prompt": prompt,
            },
        )
        return update | {
            "calls": [call],
            "attempts": attempt,
            "history": [event, *update.get("history", [])],
        }

    work.__name__ = work.__qualname__ = step.value
    return work


def write_output(step: Step, *, final: bool) -> Finish:
    """Return the default `finish`: the text to the step's key, and to `result` when final.

    Raises:
        ValueError: the step has no key of its own (review, revise): give `finish=`.
    """
    if step not in OUTPUT_KEYS:
        raise ValueError(
            f"the {step.value} step writes no text of its own: pass finish= to work_node, "
            f"or use modelyard.nodes.review for the review loop's steps"
        )

    def write(state: TaskState, reply: StepReply) -> dict[str, Any]:
        update: dict[str, Any] = {OUTPUT_KEYS[step]: reply.text}
        if final:
            update |= {
                "result": reply.text,
                "assigned_model": reply.model,
                "status": TaskStatus.COMPLETED,
                "finished_at": utcnow(),
                "error": None,
                "history": [TaskEvent(kind="completed", step=step.value, model=reply.model)],
            }
        return update

    return write


def _finish(finish: Finish, state: TaskState, reply: StepReply) -> dict[str, Any]:
    """Run `finish`; an answer it refuses counts as a failed call of this attempt."""
    try:
        return finish(state, reply)
    except ModelCallError as error:
        error.attempts = reply.attempt
        # Its text was streamed: whoever shows the stream must hear that it was dropped.
        error.streamed_tokens = reply.call.output_tokens if reply.call.first_token_ms else 0
        raise


def _selected_model(step: Step) -> ModelFor:
    def selected(state: TaskState) -> str:
        return state["selections"][step.value].model

    return selected


async def note_failure(book: StatsBook, registry: ModelRegistry, error: ModelCallError) -> None:
    """Fold a failed call into the model's stats before it is raised.

    A `not_found` model's server is asked again next time. A model the failure put to
    rest, or whose server asked for a longer wait than `retry.max_retry_after`, is given
    up on (`error.give_up`): its step falls back instead of retrying it.
    """
    if error.kind is ModelErrorKind.NOT_FOUND:
        registry.server_models.forget(error.model)
    stats = await book.record_failure(error)
    too_long = (error.retry_after or 0.0) > registry.config.retry.max_retry_after
    resting = stats.cooldown_reason is CooldownReason.FAILURES
    if (resting and stats.cooldown_left(book.clock()) > 0) or too_long:
        error.give_up = True


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


def tagged(
    config: RunnableConfig,
    state: TaskState,
    step: str,
    model: str,
    attempt: int,
    **metadata: Any,
) -> RunnableConfig:
    """Return the run config with the routing in its run name, tags and metadata.

    Tracing (LangSmith, or any LangChain callback handler) shows each model call as
    `STEP:MODEL`, tagged `modelyard:STEP`, `model:MODEL`, `task_type:TYPE` (and `fallback`
    when an earlier model failed the step), with the metadata `modelyard_task_id`,
    `modelyard_task_type`, `modelyard_step`, `modelyard_model`, `modelyard_attempt`,
    `modelyard_selection_reason`, `modelyard_fallback_from` and `modelyard_fallback_reason`
    (None on a first choice), and any `metadata` given (as `modelyard_<key>`). Token
    streams (`stream_mode="messages"`) carry the same metadata.
    """
    task_type = state.get("task_type")
    kind = str(task_type.value if isinstance(task_type, TaskType) else task_type or "")
    selection = (state.get("selections") or {}).get(step)
    failed = [f for f in state.get("failures") or [] if f.step == step]
    last = failed[-1] if failed else None
    tags = [f"modelyard:{step}", f"model:{model}"]
    if kind:
        tags.append(f"task_type:{kind}")
    if last is not None:
        tags.append("fallback")
    return {
        **config,
        "run_name": f"{step}:{model}",
        "tags": [*config.get("tags", []), *tags],
        "metadata": {
            **config.get("metadata", {}),
            "modelyard_task_id": state.get("task_id"),
            "modelyard_task_type": kind or None,
            "modelyard_step": step,
            "modelyard_model": model,
            "modelyard_attempt": attempt,
            "modelyard_selection_reason": selection.reason if selection else None,
            "modelyard_fallback_from": last.model if last else None,
            "modelyard_fallback_reason": (
                f"{last.model} failed: {last.kind}: {last.message}" if last else None
            ),
            **{f"modelyard_{key}": value for key, value in metadata.items()},
        },
    }
