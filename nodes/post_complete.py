"""The post_complete node: run the next post-completion step on its model, with its tools.

Steps run one per visit, in config order (`routers.post_completion.post_steps`), after the
main completion: each sees the task's prompt and result. A model with `supports.tools`
gets the granted tools bound and may call them (up to `MAX_TOOL_ROUNDS` rounds); any other
model gets the `git diff` in its prompt and writes through ```file: blocks
(`nodes.post_prompt`). Writes are only staged here; `apply_effects` performs them.
"""

from __future__ import annotations

import time
from typing import Any, Literal, cast

from langgraph.config import get_config
from langgraph.errors import NodeError
from langgraph.runtime import Runtime
from langgraph.types import Command

from modelyard.configs.templates import render_messages
from modelyard.nodes.context import Context
from modelyard.nodes.post_prompt import prefetched, stage_file_blocks, tool_list
from modelyard.nodes.stats import StatsBook
from modelyard.nodes.tool_loop import converse
from modelyard.nodes.tools import Workspace
from modelyard.nodes.work import ensure_on_server, note_failure, tagged, wait_out_rate_limit
from modelyard.routers.post_completion import next_post_step, post_steps
from modelyard.state import (
    ModelCallError,
    ModelyardError,
    PostCompletionProgress,
    PostCompletionResult,
    TaskEvent,
    TaskState,
    ToolCallRecord,
)

STEP = "post_complete"


async def post_complete(state: TaskState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Run the next post-completion step and record its output, tool calls and staged writes.

    Raises:
        ModelCallError: the step's model failed; retried per the config's `retry`, then
            recorded by `record_post_failure` (there is no fallback to another model: the
            step is that model's role).
        ToolRoundsError: the model kept calling tools.
    """
    registry = runtime.context.models()
    steps = post_steps(registry.config)
    index = len(state.get("post_completions") or [])
    if index >= len(steps):
        return {}  # the config lost steps since this task's checkpoint: nothing left to run
    name, step = steps[index]
    model = registry.get(name)
    attempt = runtime.execution_info.node_attempt if runtime.execution_info else 1
    book = StatsBook(runtime.store, registry.config)
    if attempt > 1:
        await wait_out_rate_limit(book, registry, name, attempt)
    workspace = Workspace(step.tools)
    tool_calling = model.supports.tools
    records: list[ToolCallRecord] = []
    if tool_calling:
        tools_text = tool_list(workspace)
    else:
        tools_text, records = await prefetched(workspace)
    messages, prompt = render_messages(
        model,
        STEP,
        prompt=state["prompt"],
        result=state.get("result", ""),
        task=step.task,
        tools=tools_text,
    )
    started = time.perf_counter()
    try:
        await ensure_on_server(registry, name, attempt=attempt)
        talk = await converse(
            registry,
            name,
            messages,
            workspace=workspace,
            tool_calling=tool_calling,
            step=STEP,
            config=tagged(get_config(), state, STEP, name, attempt, post_index=index),
            attempt=attempt,
            book=book,
        )
    except ModelCallError as error:
        await note_failure(book, registry, error)
        raise
    records += talk.tool_calls
    if not tool_calling:
        records += stage_file_blocks(workspace, talk.output)
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    staged = list(workspace.staged.values())
    result = PostCompletionResult(
        index=index,
        model=name,
        task=step.task,
        output=talk.output,
        tool_calls=records,
        staged=staged,
        latency_ms=latency_ms,
    )
    event = TaskEvent(
        kind="post_completion",
        step=STEP,
        model=name,
        detail=f"{name} ran post-completion step {index + 1} in {latency_ms:.0f} ms "
        f"({len(records)} tool call(s), {len(staged)} file(s) to write)",
        data={"index": index, "task": step.task, "attempts": attempt, "prompt": prompt},
    )
    return {"post_completions": [result], "calls": talk.calls, "history": [event]}


async def record_post_failure(
    state: TaskState, error: NodeError, runtime: Runtime[Context]
) -> Command[Literal["post_complete", "__end__"]]:
    """Record a failed post-completion step and go on with the next one.

    The step's result holds the error record and nothing is written for it; the history
    gets a `post_completion_failed` event. The task keeps its status and result. Errors
    that are bugs (not modelyard's own) are raised.
    """
    exc = error.error
    if not isinstance(exc, ModelyardError):
        raise exc
    steps = post_steps(runtime.context.models().config)
    index = len(state.get("post_completions") or [])
    name, step = steps[index]
    as_record = getattr(exc, "as_record", None)
    record = as_record() if callable(as_record) else {"kind": type(exc).__name__}
    record = {**record, "message": str(exc)}
    result = PostCompletionResult(index=index, model=name, task=step.task, error=record)
    event = TaskEvent(
        kind="post_completion_failed",
        step=STEP,
        model=name,
        detail=f"post-completion step {index + 1} on {name} failed: {exc}",
        data={"index": index, **record},
    )
    ran = cast(
        TaskState, {**state, "post_completions": [*state.get("post_completions", []), result]}
    )
    return Command(
        goto=next_post_step(ran, len(steps)),
        update={"post_completions": [result], "history": [event]},
    )


async def post_completion_route(
    state: PostCompletionProgress, runtime: Runtime[Context]
) -> Literal["post_complete", "__end__"]:
    """Return `post_complete` while the task completed and a configured step has not run.

    Async only so that LangGraph calls it on the event loop: LangGraph runs a plain edge
    function on a worker thread, two hand-offs through the loop per task for a lookup.
    """
    return next_post_step(state, len(post_steps(runtime.context.models().config)))
