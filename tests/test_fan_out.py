"""The fan-out graph: several tasks, or one prompt on several models, at once (`Send`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore
from support import record_thread_handoffs, scripted_context, write_config

from modelyard.configs import load_config
from modelyard.configs.schema import RetrySettings
from modelyard.graphs import (
    Branch,
    BranchResult,
    acompare,
    arun_fan_out,
    build_fan_out_graph,
    compare_models,
    parallel_tasks,
)
from modelyard.nodes import Context, StatsBook
from modelyard.state import InvalidTaskError, ModelCallError, ModelErrorKind, TaskStatus
from modelyard.state.serde import checkpoint_serializer
from modelyard.testing.scripted import ScriptedChatModel
from modelyard.testing.server import Fault, LocalModelServer

FAST = load_config("default").model_copy(
    update={"retry": RetrySettings(initial_interval=0.0, max_interval=0.0, jitter=False)}
)
ROOT = Path(__file__).resolve().parent.parent


def call_error(kind: ModelErrorKind, model: str = "coder") -> ModelCallError:
    return ModelCallError(kind, model=model, url="http://test", detail=f"scripted {kind.value}")


async def test_several_tasks_run_side_by_side_each_routed_to_its_model() -> None:
    reasoner = ScriptedChatModel(replies=["it doubles x"])
    coder = ScriptedChatModel(replies=["def test_double(): assert f(2) == 4"])
    branches = parallel_tasks(
        {
            "analysis": "Explain what this function does: def f(x): return x * 2",
            "tests": "Write pytest unit tests for a function f that doubles a number",
        }
    )
    handed = record_thread_handoffs()

    results = await arun_fan_out(
        branches, context=scripted_context(reasoner, coder), store=InMemoryStore()
    )

    assert handed == []  # the fan-out edge and the branches' graphs run on the event loop
    assert [(r.index, r.label, r.model, r.task_type) for r in results] == [
        (0, "analysis", "reasoner", "explanation"),
        (1, "tests", "coder", "code_generation"),
    ]
    assert [r.answer for r in results] == ["it doubles x", "def test_double(): assert f(2) == 4"]
    assert all(r.status is TaskStatus.COMPLETED and r.error is None for r in results)
    assert all(r.output_tokens > 0 and r.latency_ms > 0 and r.attempts == 1 for r in results)
    assert len(reasoner.calls) == len(coder.calls) == 1
    assert "def f(x)" in str(reasoner.calls[0][-1].content)


async def test_one_prompt_on_several_models_answers_from_each_in_the_order_given() -> None:
    reasoner = ScriptedChatModel(replies=["recursion, by the reasoner"])
    coder = ScriptedChatModel(replies=["recursion, by the coder"])

    results = await acompare(
        "Explain recursion",
        ["coder", "reasoner"],
        context=scripted_context(reasoner, coder),
        store=InMemoryStore(),
    )

    assert [(r.label, r.model, r.answer) for r in results] == [
        ("coder", "coder", "recursion, by the coder"),
        ("reasoner", "reasoner", "recursion, by the reasoner"),
    ]
    assert [r.calls[0].model for r in results] == ["coder", "reasoner"]
    # Each model gets the prompt in its own style (stepwise for the reasoner, terse for the coder).
    assert [str(m.calls[0][-1].content).split("\n")[0] for m in (reasoner, coder)] == [
        "Explain recursion"
    ] * 2


async def test_a_failing_model_fails_its_branch_only() -> None:
    reasoner = ScriptedChatModel(replies=["from the reasoner"])
    coder = ScriptedChatModel(replies=[call_error(ModelErrorKind.AUTH), "never"])
    graph = build_fan_out_graph(FAST).compile()

    state = await graph.ainvoke(
        {"branches": compare_models("Explain DNS", ["reasoner", "coder"])},
        context=scripted_context(reasoner, coder),
    )

    ok, failed = state["results"]
    assert (ok.label, ok.status, ok.answer) == (
        "reasoner",
        TaskStatus.COMPLETED,
        "from the reasoner",
    )
    assert (failed.label, failed.model, failed.status) == ("coder", "coder", TaskStatus.FAILED)
    assert failed.answer is None and failed.attempts == 1
    assert failed.error is not None and failed.error["kind"] == "all_models_failed"
    assert [a["model"] for a in failed.error["attempts"]] == ["coder"]
    assert failed.error["remaining"] == {"reasoner": "the caller asked for coder only"}
    assert state["failed"] == ["coder"]
    assert len(reasoner.calls) == 1  # the coder's branch did not fall back to it
    assert len(coder.calls) == 1


async def test_a_branch_without_a_model_falls_back_like_the_route_graph() -> None:
    coder = ScriptedChatModel(replies=[call_error(ModelErrorKind.NOT_FOUND)])
    reasoner = ScriptedChatModel(replies=["sorted by the reasoner"])

    (result,) = await arun_fan_out(
        ["Write a Python function that sorts a list"],
        context=scripted_context(reasoner, coder),
        store=InMemoryStore(),
    )

    assert (result.label, result.status, result.model) == ("branch 1", TaskStatus.COMPLETED,
                                                           "reasoner")  # fmt: skip
    assert result.answer == "sorted by the reasoner"
    assert result.attempts == 2 and [c.model for c in result.calls] == ["reasoner"]


async def test_branches_run_at_once_so_the_wall_time_is_the_slowest_not_the_sum() -> None:
    reasoner = ScriptedChatModel(replies=["slow"], delay=0.8)
    coder = ScriptedChatModel(replies=["fast"], delay=0.4)
    context = scripted_context(reasoner, coder)

    started = time.perf_counter()
    results = await acompare("Explain DNS", ["reasoner", "coder"], context=context,
                             store=InMemoryStore())  # fmt: skip
    wall = time.perf_counter() - started

    assert [r.answer for r in results] == ["slow", "fast"]
    assert results[0].latency_ms >= 800 and results[1].latency_ms >= 400
    assert 0.8 <= wall < 0.8 + 0.3  # one after another: 1.2 s
    assert results[1].finished_at < results[0].finished_at  # the fast one was not held back


async def test_each_result_is_reported_as_its_branch_finishes() -> None:
    reasoner = ScriptedChatModel(replies=["quick"])
    coder = ScriptedChatModel(replies=["slow"], delay=0.3)
    seen: list[str] = []

    results = await acompare(
        "Explain DNS",
        ["coder", "reasoner"],
        context=scripted_context(reasoner, coder),
        store=InMemoryStore(),
        on_result=lambda r: seen.append(r.label),
    )

    assert seen == ["reasoner", "coder"]  # as they finished
    assert [r.label for r in results] == ["coder", "reasoner"]  # as they were given


async def test_every_branch_records_its_calls_in_the_stats_store() -> None:
    store = InMemoryStore()
    context = scripted_context()
    await acompare("Explain DNS", ["reasoner", "coder"], context=context, store=store)

    book = StatsBook(store, context.models().config)
    stats = await book.snapshot()
    assert (stats["reasoner"].calls, stats["coder"].calls) == (1, 1)
    assert stats["coder"].output_tokens > 0


async def test_a_branch_can_plan_then_implement() -> None:
    reasoner = ScriptedChatModel(
        respond=lambda m: "1. parse\n2. print" if "plan" in str(m[-1].content) else "DNS: names"
    )
    coder = ScriptedChatModel(replies=["def main(): ..."])
    branches = [
        Branch(label="app", prompt="Build a todo CLI", graph="plan_and_implement"),
        Branch(label="question", prompt="Explain DNS", model="reasoner"),
    ]

    app, question = await arun_fan_out(
        branches, context=scripted_context(reasoner, coder), store=InMemoryStore()
    )

    assert (app.plan, app.answer, app.model) == ("1. parse\n2. print", "def main(): ...", "coder")
    assert [c.model for c in app.calls] == ["reasoner", "coder"]
    assert (question.answer, question.model) == ("DNS: names", "reasoner")


async def test_an_unknown_model_fails_its_branch_listing_the_configured_models() -> None:
    results = await acompare("hello", ["reasoner", "gpt-9"], context=scripted_context(),
                             store=InMemoryStore())  # fmt: skip
    assert results[0].status is TaskStatus.COMPLETED
    assert results[1].status is TaskStatus.FAILED
    assert results[1].error is not None
    assert results[1].error["kind"] == "UnknownModelError"
    assert "'gpt-9'" in results[1].error["message"]
    assert "reasoner, coder" in results[1].error["message"]


async def test_one_prompt_and_models_as_input_like_langgraph_studio_sends() -> None:
    graph = build_fan_out_graph(FAST).compile()
    state = await graph.ainvoke(
        {"prompt": "Look at this: def f(): pass", "models": ["reasoner", "coder"],
         "task_type": "code_review"},
        context=scripted_context(),
    )  # fmt: skip
    assert [(r.label, r.task_type) for r in state["results"]] == [
        ("reasoner", "code_review"),
        ("coder", "code_review"),
    ]
    assert [b.prompt for b in state["branches"]] == ["Look at this: def f(): pass"] * 2


async def test_results_are_checkpointed_and_a_new_run_on_the_thread_replaces_them() -> None:
    saver = InMemorySaver(serde=checkpoint_serializer())
    graph = build_fan_out_graph(FAST).compile(checkpointer=saver)
    config: Any = {"configurable": {"thread_id": "fan-out"}}
    context = scripted_context()

    first = await graph.ainvoke(
        {"branches": parallel_tasks(["Explain DNS", "Write a sort function"])}, config,
        context=context,
    )  # fmt: skip
    second = await graph.ainvoke({"prompt": "Explain TCP", "models": ["coder"]}, config,
                                 context=context)  # fmt: skip

    assert [r.model for r in first["results"]] == ["reasoner", "coder"]
    assert [(r.label, r.prompt) for r in second["results"]] == [("coder", "Explain TCP")]
    saved = await graph.aget_state(config)
    (result,) = saved.values["results"]
    assert isinstance(result, BranchResult) and result.answer is not None
    assert "Explain TCP" in result.answer


@pytest.mark.parametrize(
    ("branches", "message"),
    [
        ([], "there is nothing to run"),
        ([Branch(prompt="a", label="x"), Branch(prompt="b", label="x")], "labelled 'x'"),
        ([{"promt": "typo"}], "branches[0] is malformed (prompt: Field required)"),
    ],
)
async def test_bad_branches_are_refused_saying_what_to_fix(branches: Any, message: str) -> None:
    graph = build_fan_out_graph(FAST).compile()
    with pytest.raises(InvalidTaskError) as raised:
        await graph.ainvoke({"branches": branches}, context=scripted_context())
    assert message in str(raised.value)


def test_compare_models_refuses_a_model_named_twice_and_an_unknown_task_type() -> None:
    with pytest.raises(InvalidTaskError, match="'coder' is named more than once"):
        compare_models("hi", ["coder", "reasoner", "coder"])
    with pytest.raises(InvalidTaskError, match="unknown task type 'cooking'"):
        compare_models("hi", ["coder"], task_type="cooking")
    with pytest.raises(InvalidTaskError, match="no models to compare"):
        compare_models("hi", [])


THREE_MODELS = """\
models:
{entries}
retry: {{max_attempts: 1, initial_interval: 0.01, max_interval: 0.01, jitter: false}}
"""
ENTRY = """\
  - name: {name}
    model: {ref}
    base_url: {url}
    roles: [general, explanation]
    timeout: 5
"""
DELAYS = {"quick": 0.4, "steady": 0.6, "slow": 0.8}


@pytest.mark.protocol
async def test_three_models_on_a_server_answer_in_about_the_slowest_ones_time(
    tmp_path: Path, protocol: str
) -> None:
    with LocalModelServer([f"{name}-model" for name in DELAYS]) as server:
        url = server.url if protocol == "ollama" else server.openai_url
        prefix = "ollama" if protocol == "ollama" else "openai_compatible"
        entries = "".join(
            ENTRY.format(name=name, ref=f"{prefix}:{name}-model", url=url) for name in DELAYS
        )
        config = load_config(write_config(tmp_path, THREE_MODELS.format(entries=entries)))
        context = Context(config=config)
        store = InMemoryStore()
        await acompare("warm up", list(DELAYS), context=context, store=store)  # clients, imports
        for name, seconds in DELAYS.items():
            server.script(f"{name}-model", [f"answer from {name}"])
            server.inject_fault(Fault.delay(seconds), model=f"{name}-model", times=None)
        server.reset_log()

        started = time.perf_counter()
        results = await acompare("Explain DNS", list(DELAYS), context=context, store=store)
        wall = time.perf_counter() - started

    assert [(r.label, r.answer) for r in results] == [
        (name, f"answer from {name}") for name in DELAYS
    ]
    for result in results:
        assert result.latency_ms >= DELAYS[result.label] * 1000
    assert wall < 0.8 + 0.5 < sum(DELAYS.values())  # one after another: 1.8 s
    arrivals = [r.received_at for r in server.requests if r.fault == "delay"]
    assert len(arrivals) == 3
    assert max(arrivals) - min(arrivals) < 0.3  # all three requests were in flight together
