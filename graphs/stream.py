"""Stream a task as typed events: tokens with their step and model, step updates, notices."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph.pregel import Pregel
from langgraph.store.base import BaseStore
from langgraph.types import StreamMode

from modelyard.configs import ModelyardConfig
from modelyard.configs.persistence import open_store
from modelyard.graphs.run import BUILDERS, GraphName, recursion_limit
from modelyard.nodes import Context
from modelyard.state import Task, TaskEvent


@dataclass(frozen=True)
class Token:
    """A piece of a model's answer, as it arrives."""

    step: str
    """The step speaking: `answer`, `plan`, `implement`, `review`, ..."""
    model: str
    """The configured model's name."""
    text: str
    attempt: int = 1
    """The attempt on this model; a retry starts the step's text over."""
    node: str = ""
    """The graph node that made the call."""
    post_index: int | None = None
    """For a post-completion step: its place in the config's order (0 = first)."""


@dataclass(frozen=True)
class StepUpdate:
    """A node finished: the history events it wrote, and its whole update."""

    node: str
    events: tuple[TaskEvent, ...] = ()
    update: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Notice:
    """Something the graph reports while it happens: `fallback`, `pull`, ..."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Finished:
    """The run ended: the final state (the last `values` chunk)."""

    state: dict[str, Any]


StreamEvent = Token | StepUpdate | Notice | Finished
STREAM_MODES: list[StreamMode] = ["messages", "updates", "values", "custom"]


async def stream_events(
    graph: Pregel[Any, Any, Any, Any],
    graph_input: Any,
    *,
    context: Context,
    config: RunnableConfig | None = None,
) -> AsyncIterator[StreamEvent]:
    """Run any modelyard graph (or one of your own on its nodes) and yield typed events.

    Tokens come from `stream_mode="messages"` with the step, model and attempt the work
    nodes put in the call's metadata; step updates from `updates`; fallbacks and pulls from
    `custom`. A model that answers without streaming yields its whole answer as one token.
    The last event is always `Finished`.
    """
    streamed: set[str] = set()
    state: dict[str, Any] = {}
    async for mode, chunk in graph.astream(
        graph_input, config, context=context, stream_mode=STREAM_MODES
    ):
        if mode == "values":
            state = cast(dict[str, Any], chunk)
        elif mode == "custom":
            if isinstance(chunk, dict) and "modelyard_event" in chunk:
                data = {k: v for k, v in chunk.items() if k != "modelyard_event"}
                yield Notice(str(chunk["modelyard_event"]), data)
        elif mode == "updates":
            for node, update in cast(dict[str, Any], chunk).items():
                if not isinstance(update, dict):
                    continue
                events = tuple(e for e in update.get("history") or [] if isinstance(e, TaskEvent))
                yield StepUpdate(node, events, update)
        elif mode == "messages":
            message, metadata = cast(tuple[BaseMessage, dict[str, Any]], chunk)
            token = _token(message, metadata, streamed)
            if token is not None:
                yield token
    yield Finished(state)


def _token(message: BaseMessage, metadata: dict[str, Any], streamed: set[str]) -> Token | None:
    step, model = metadata.get("modelyard_step"), metadata.get("modelyard_model")
    if step is None or model is None or not isinstance(message.content, str):
        return None
    attempt = int(metadata.get("modelyard_attempt") or 1)
    post = metadata.get("modelyard_post_index")
    post_index = post if isinstance(post, int) else None
    if isinstance(message, AIMessageChunk):
        if message.id:
            streamed.add(message.id)
    elif message.id and message.id in streamed:
        return None  # the whole message after its chunks: already yielded
    if not message.content:
        return None
    node = str(metadata.get("langgraph_node", ""))
    return Token(str(step), str(model), message.content, attempt, node, post_index)


async def astream_task(
    task: Task | str,
    *,
    graph: GraphName = "route",
    context: Context | None = None,
    config: ModelyardConfig | None = None,
    store: BaseStore | None = None,
) -> AsyncIterator[StreamEvent]:
    """Run a task through one of modelyard's graphs and yield its events as they happen.

    ```python
    async for event in astream_task("Write a stack class", graph="plan_and_implement"):
        if isinstance(event, Token):
            print(event.text, end="")  # event.step, event.model say who is speaking
    ```

    Args:
        task: The task, or just its prompt.
        graph: A graph name from `modelyard.graphs.run.BUILDERS`.
        context: The run's context; default: built from `config`, else the default config.
        config: A config object to run with, when no context is given.
        store: Where the models' stats live; default: the config's `persistence.url`.
    """
    task = Task(prompt=task) if isinstance(task, str) else task
    context = context or Context(config=config)
    settings = context.models().config
    if store is None:
        async with open_store(settings.persistence) as opened:
            async for event in astream_task(task, graph=graph, context=context, store=opened):
                yield event
        return
    compiled = BUILDERS[graph](settings).compile(store=store)
    run_config: RunnableConfig = {"recursion_limit": recursion_limit(task, settings)}
    async for event in stream_events(compiled, task.to_input(), context=context, config=run_config):
        yield event
