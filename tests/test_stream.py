"""Streaming: tokens carry the step and model that produced them, over real HTTP clients."""

from __future__ import annotations

import pytest
from support import CODING_MODEL, REASONING_MODEL, scripted_context

from modelyard.configs import ModelyardConfig, load_config
from modelyard.configs.schema import RetrySettings
from modelyard.graphs import build_route_graph
from modelyard.graphs.stream import (
    Finished,
    Notice,
    StepUpdate,
    StreamEvent,
    Token,
    astream_task,
    stream_events,
)
from modelyard.nodes import Context
from modelyard.state import ModelCallError, ModelErrorKind, Task, TaskStatus
from modelyard.testing.scripted import ScriptedChatModel
from modelyard.testing.server import Fault, LocalModelServer

pytestmark = pytest.mark.protocol

PLAN = "1. Read the lines. 2. Count the words. 3. Print the total."
CODE = "def count_words(path):\n    return sum(len(line.split()) for line in open(path))\n"
PROMPT = "Write a Python function that counts the words in a file"


async def collect(task: Task | str, config: ModelyardConfig, graph: str) -> list[StreamEvent]:
    return [
        event
        async for event in astream_task(
            task,
            graph=graph,  # type: ignore[arg-type]
            context=Context(config=config),
        )
    ]


def memory(config: ModelyardConfig) -> ModelyardConfig:
    persistence = config.persistence.model_copy(update={"url": "memory"})
    return config.model_copy(update={"persistence": persistence})


async def test_plan_and_implement_streams_each_steps_tokens_with_its_model(
    server: LocalModelServer, server_config: ModelyardConfig
) -> None:
    server.script(REASONING_MODEL, [PLAN])
    server.script(CODING_MODEL, [CODE])

    events = await collect(PROMPT, memory(server_config), "plan_and_implement")

    tokens = [e for e in events if isinstance(e, Token)]
    assert len(tokens) > 4  # streamed in pieces, not in one answer
    plan_tokens = [t for t in tokens if t.step == "plan"]
    code_tokens = [t for t in tokens if t.step == "implement"]
    assert {(t.model, t.node) for t in plan_tokens} == {("reasoner", "plan")}
    assert {(t.model, t.node) for t in code_tokens} == {("coder", "implement")}
    assert "".join(t.text for t in plan_tokens) == PLAN
    assert "".join(t.text for t in code_tokens) == CODE
    # Every plan token comes before the first implementation token.
    assert tokens.index(code_tokens[0]) > tokens.index(plan_tokens[-1])

    updates = [e for e in events if isinstance(e, StepUpdate)]
    assert [u.node for u in updates] == [
        "classify", "select_planner", "plan", "select_coder", "implement",
    ]  # fmt: skip
    selected = [ev for u in updates for ev in u.events if ev.kind == "selected"]
    assert [(ev.step, ev.model) for ev in selected] == [
        ("plan", "reasoner"),
        ("implement", "coder"),
    ]
    # A step's update arrives after its tokens.
    plan_update = next(u for u in updates if u.node == "plan")
    assert events.index(plan_update) > events.index(plan_tokens[-1])

    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.state["status"] is TaskStatus.COMPLETED
    assert finished.state["plan"] == PLAN and finished.state["result"] == CODE


async def test_a_fallback_is_announced_between_the_two_models_tokens(
    server: LocalModelServer, server_config: ModelyardConfig
) -> None:
    retry = server_config.retry.model_copy(update={"max_attempts": 1})
    config = memory(server_config.model_copy(update={"retry": retry}))
    server.script(REASONING_MODEL, ["The reasoner takes over and answers."])
    server.inject_fault(Fault.cut_stream(after_chunks=2), model=CODING_MODEL, times=None)

    events = await collect(PROMPT, config, "route")

    notices = [e for e in events if isinstance(e, Notice)]
    (fallback,) = [n for n in notices if n.kind == "fallback"]
    assert (fallback.data["model"], fallback.data["next_model"]) == ("coder", "reasoner")
    before = [e for e in events[: events.index(fallback)] if isinstance(e, Token)]
    after = [e for e in events[events.index(fallback) :] if isinstance(e, Token)]
    assert before and {t.model for t in before} == {"coder"}
    assert {t.model for t in after} == {"reasoner"}
    assert "".join(t.text for t in after) == "The reasoner takes over and answers."


async def test_a_model_that_does_not_stream_gives_its_answer_once() -> None:
    reasoner = ScriptedChatModel(replies=["Whole answer."], disable_streaming=True)
    graph = build_route_graph().compile()
    events = [
        event
        async for event in stream_events(
            graph, {"prompt": "Explain DNS"}, context=scripted_context(reasoner=reasoner)
        )
    ]
    tokens = [e for e in events if isinstance(e, Token)]
    assert [(t.step, t.model, t.text) for t in tokens] == [("answer", "reasoner", "Whole answer.")]


async def test_a_retried_step_streams_its_attempt_number() -> None:
    failure = ModelCallError(
        ModelErrorKind.SERVER_ERROR, model="reasoner", url="http://t", detail="500"
    )
    reasoner = ScriptedChatModel(replies=[failure, "Second time lucky."])
    retry = RetrySettings(max_attempts=2, initial_interval=0.0, jitter=False)
    graph = build_route_graph(load_config("default").model_copy(update={"retry": retry})).compile()
    events = [
        event
        async for event in stream_events(
            graph, {"prompt": "Explain DNS"}, context=scripted_context(reasoner=reasoner)
        )
    ]
    tokens = [e for e in events if isinstance(e, Token)]
    assert tokens and {t.attempt for t in tokens} == {2}
    assert "".join(t.text for t in tokens) == "Second time lucky."
