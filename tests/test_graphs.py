"""Unit tests of the route and plan-and-implement graphs on scripted models (no sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiosqlite
import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.store.memory import InMemoryStore
from support import record_thread_handoffs, scripted_context

from modelyard.configs import load_config
from modelyard.configs.schema import RetrySettings
from modelyard.graphs import (
    arun_task,
    build_plan_and_implement_graph,
    build_route_graph,
)
from modelyard.nodes import StatsBook
from modelyard.state import (
    ModelCallError,
    ModelErrorKind,
    Requirements,
    Task,
    TaskStatus,
    TaskType,
)
from modelyard.state.serde import checkpoint_serializer
from modelyard.testing.scripted import ScriptedChatModel

FAST = load_config("default").model_copy(
    update={"retry": RetrySettings(initial_interval=0.0, max_interval=0.0, jitter=False)}
)


SORT = {"prompt": "Write a sort function"}


def call_error(kind: ModelErrorKind, model: str = "coder") -> ModelCallError:
    return ModelCallError(kind, model=model, url="http://test", detail=f"scripted {kind.value}")


@pytest.fixture(params=["memory", "sqlite"])
async def checkpointer(
    request: pytest.FixtureRequest, tmp_path: Any
) -> AsyncIterator[BaseCheckpointSaver[Any] | None]:
    if request.param == "memory":
        yield InMemorySaver(serde=checkpoint_serializer())
        return
    async with aiosqlite.connect(tmp_path / "checkpoints.sqlite") as conn:
        yield AsyncSqliteSaver(conn, serde=checkpoint_serializer())


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
@pytest.mark.parametrize(
    ("prompt", "task_type", "model"),
    [
        ("Write a Python function that validates email addresses", "code_generation", "coder"),
        ("Review this code for bugs: def f(x): return x / 0", "code_review", "coder"),
        ("Explain how a hash table works", "explanation", "reasoner"),
        ("Plan the architecture for a chat service", "planning", "reasoner"),
    ],
)
async def test_route_sends_each_task_type_to_the_model_with_its_role(
    checkpointer: BaseCheckpointSaver[Any], durability: Any, prompt: str, task_type: str, model: str
) -> None:
    coder = ScriptedChatModel(replies=["code answer"])
    reasoner = ScriptedChatModel(replies=["reasoned answer"])
    graph = build_route_graph(FAST).compile(checkpointer=checkpointer)
    config = {"configurable": {"thread_id": f"{task_type}-{durability}"}}

    state = await graph.ainvoke(
        {"prompt": prompt},
        config,
        context=scripted_context(reasoner, coder),
        durability=durability,
    )

    assert state["status"] is TaskStatus.COMPLETED
    assert state["task_type"] == task_type
    assert state["assigned_model"] == model
    assert state["result"] == ("code answer" if model == "coder" else "reasoned answer")
    assert f"{model} has the {task_type} role" in state["selections"]["answer"].reason
    assert len((coder if model == "coder" else reasoner).calls) == 1
    saved = await graph.aget_state(config)
    assert saved.values["assigned_model"] == model
    assert [e.kind for e in saved.values["history"]] == [
        "classified", "selected", "model_call", "completed",
    ]  # fmt: skip


async def test_the_model_gets_its_system_prompt_and_the_user_prompt() -> None:
    coder = ScriptedChatModel(replies=["ok"])
    graph = build_route_graph(FAST).compile()
    await graph.ainvoke(
        {"prompt": "Implement a stack class in Python"}, context=scripted_context(coder=coder)
    )
    (messages,) = coder.calls
    assert messages[0].type == "system" and "software engineer" in str(messages[0].content)
    assert messages[-1].type == "human"
    # The default config gives the coder the terse style: configs/prompts/terse/answer.md.
    assert str(messages[-1].content).startswith("Implement a stack class in Python\n\n")
    assert "code first" in str(messages[-1].content)


async def test_an_explicit_task_type_skips_classification() -> None:
    graph = build_route_graph(FAST).compile()
    state = await graph.ainvoke(
        {"prompt": "Explain how a hash table works", "task_type": "code_review"},
        context=scripted_context(),
    )
    assert state["classification"].method == "caller"
    assert state["task_type"] is TaskType.CODE_REVIEW
    assert state["assigned_model"] == "coder"


async def test_an_unknown_task_type_fails_the_task_with_the_choices() -> None:
    graph = build_route_graph(FAST).compile()
    state = await graph.ainvoke(
        {"prompt": "hi", "task_type": "cooking"}, context=scripted_context()
    )
    assert state["status"] is TaskStatus.FAILED
    assert "unknown task type 'cooking'" in state["error"]["message"]
    assert "code_generation" in state["error"]["message"]


async def test_model_override_wins_over_routing() -> None:
    coder = ScriptedChatModel(replies=["from coder"])
    graph = build_route_graph(FAST).compile()
    state = await graph.ainvoke(
        {"prompt": "Explain how a hash table works", "model": "coder"},
        context=scripted_context(coder=coder),
    )
    assert state["assigned_model"] == "coder"
    assert state["result"] == "from coder"
    assert state["selections"]["answer"].reason == "coder was requested by the caller"


async def test_an_unknown_model_override_fails_listing_the_configured_models() -> None:
    graph = build_route_graph(FAST).compile()
    state = await graph.ainvoke({"prompt": "hello", "model": "gpt-9"}, context=scripted_context())
    assert state["status"] is TaskStatus.FAILED
    assert state["error"]["kind"] == "UnknownModelError"
    assert "'gpt-9'" in state["error"]["message"]
    assert "reasoner, coder" in state["error"]["message"]
    assert "result" not in state


@pytest.mark.parametrize("prompt", ["", "   \n\t "])
async def test_an_empty_prompt_fails_with_a_clear_error(prompt: str) -> None:
    graph = build_route_graph(FAST).compile()
    state = await graph.ainvoke({"prompt": prompt}, context=scripted_context())
    assert state["status"] is TaskStatus.FAILED
    assert state["error"]["message"] == "the prompt is empty; give the task's text"


async def test_a_prompt_too_long_for_every_model_fails_saying_why() -> None:
    graph = build_route_graph(FAST).compile()
    huge = "word " * 20_000  # ~25k tokens: over both windows (4k and 16k)
    state = await graph.ainvoke({"prompt": huge}, context=scripted_context())
    assert state["status"] is TaskStatus.FAILED
    assert state["error"]["kind"] == "NoModelAvailableError"
    assert "4096-token context window" in state["error"]["message"]
    assert "16384-token context window" in state["error"]["message"]


async def test_a_prompt_too_long_for_the_reasoner_goes_to_the_coder() -> None:
    graph = build_route_graph(FAST).compile()
    long_question = "Explain this log: " + "line of log output " * 1000  # ~5k tokens
    task = {"prompt": long_question, "task_type": "explanation"}
    state = await graph.ainvoke(task, context=scripted_context())
    assert state["assigned_model"] == "coder"
    assert "does not fit" in state["selections"]["answer"].excluded["reasoner"]


async def test_requirements_filter_models() -> None:
    graph = build_route_graph(FAST).compile()
    state = await graph.ainvoke(
        {"prompt": "Explain recursion", "requirements": Requirements(min_context_length=8000)},
        context=scripted_context(),
    )
    assert state["assigned_model"] == "coder"


@pytest.mark.parametrize(
    "kind",
    [ModelErrorKind.RATE_LIMITED, ModelErrorKind.SERVER_ERROR, ModelErrorKind.TIMEOUT,
     ModelErrorKind.CONNECTION, ModelErrorKind.MALFORMED_RESPONSE],
)  # fmt: skip
async def test_retryable_failures_are_retried_on_the_same_model(kind: ModelErrorKind) -> None:
    coder = ScriptedChatModel(replies=[call_error(kind), "second time lucky"])
    graph = build_route_graph(FAST).compile()
    state = await graph.ainvoke(SORT, context=scripted_context(coder=coder))
    assert state["status"] is TaskStatus.COMPLETED
    assert state["result"] == "second time lucky"
    assert state["attempts"] == 2
    assert state["calls"][0].attempts == 2
    assert len(coder.calls) == 2


@pytest.mark.parametrize(
    "kind", [ModelErrorKind.BAD_REQUEST, ModelErrorKind.AUTH, ModelErrorKind.NOT_FOUND]
)
async def test_non_retryable_failures_fall_back_after_one_call(kind: ModelErrorKind) -> None:
    coder = ScriptedChatModel(replies=[call_error(kind), "never reached"])
    reasoner = ScriptedChatModel(replies=["from the reasoner"])
    graph = build_route_graph(FAST).compile()
    state = await graph.ainvoke(SORT, context=scripted_context(reasoner, coder))
    assert state["status"] is TaskStatus.COMPLETED
    assert (state["assigned_model"], state["result"]) == ("reasoner", "from the reasoner")
    assert len(coder.calls) == 1
    (failed,) = state["failures"]
    assert (failed.model, failed.kind, failed.calls) == ("coder", kind.value, 1)
    assert state["attempts"] == 2
    kinds = [e.kind for e in state["history"]]
    assert kinds[kinds.index("model_failed") :] == ["model_failed", "fallback", "selected",
                                                    "model_call", "completed"]  # fmt: skip
    assert state["selections"]["answer"].excluded["coder"] == "already failed for this task"


async def test_a_context_overflow_goes_to_a_larger_window_or_fails_clearly() -> None:
    coder = ScriptedChatModel(replies=[call_error(ModelErrorKind.CONTEXT_OVERFLOW)])
    graph = build_route_graph(FAST).compile()
    state = await graph.ainvoke(SORT, context=scripted_context(coder=coder))
    assert state["status"] is TaskStatus.FAILED
    error = state["error"]
    assert error["kind"] == "all_models_failed"
    assert [(a["model"], a["kind"]) for a in error["attempts"]] == [("coder", "context_overflow")]
    assert error["remaining"] == {
        "reasoner": "context window 4096 is not larger than the 16384 tokens that overflowed"
    }
    assert len(coder.calls) == 1


async def test_when_every_model_fails_the_error_lists_each_attempt() -> None:
    coder = ScriptedChatModel(replies=[call_error(ModelErrorKind.SERVER_ERROR)])
    reasoner = ScriptedChatModel(replies=[call_error(ModelErrorKind.TIMEOUT, "reasoner")])
    graph = build_route_graph(FAST).compile()
    state = await graph.ainvoke(SORT, context=scripted_context(reasoner, coder))
    assert state["status"] is TaskStatus.FAILED
    error = state["error"]
    assert error["kind"] == "all_models_failed" and error["step"] == "answer"
    assert [(a["model"], a["kind"], a["calls"]) for a in error["attempts"]] == [
        ("coder", "server_error", 3),
        ("reasoner", "timeout", 3),
    ]
    assert "the answer step failed on 2 models:" in error["message"]
    assert (
        "1. coder: server_error after 3 calls: server_error from model 'coder'"
        in (error["message"])
    )
    assert "2. reasoner: timeout after 3 calls" in error["message"]
    assert len(coder.calls) == len(reasoner.calls) == FAST.retry.max_attempts
    assert state["attempts"] == 6


async def test_max_attempts_bounds_the_models_a_step_tries() -> None:
    coder = ScriptedChatModel(replies=[call_error(ModelErrorKind.AUTH)])
    reasoner = ScriptedChatModel(replies=["never"])
    graph = build_route_graph(FAST).compile()
    state = await graph.ainvoke(
        {**SORT, "max_attempts": 1}, context=scripted_context(reasoner, coder)
    )
    assert state["status"] is TaskStatus.FAILED
    assert state["error"]["remaining"] == {
        "reasoner": "not tried: the task's max_attempts (1) was reached"
    }
    assert reasoner.calls == []


async def test_a_model_override_is_not_replaced_when_it_fails() -> None:
    coder = ScriptedChatModel(replies=[call_error(ModelErrorKind.AUTH)])
    reasoner = ScriptedChatModel(replies=["never"])
    graph = build_route_graph(FAST).compile()
    state = await graph.ainvoke(
        {**SORT, "model": "coder"}, context=scripted_context(reasoner, coder)
    )
    assert state["status"] is TaskStatus.FAILED
    assert state["error"]["remaining"] == {"reasoner": "the caller asked for coder only"}
    assert reasoner.calls == []


async def test_a_bug_in_a_model_client_is_raised_not_hidden() -> None:
    coder = ScriptedChatModel(replies=[ZeroDivisionError("bug")])
    graph = build_route_graph(FAST).compile()
    with pytest.raises(ZeroDivisionError):
        await graph.ainvoke(SORT, context=scripted_context(coder=coder))
    assert len(coder.calls) == 1


async def test_plan_and_implement_returns_both_parts_from_the_two_models() -> None:
    reasoner = ScriptedChatModel(replies=["1. parse args\n2. store items"])
    coder = ScriptedChatModel(replies=["def main(): ..."])
    graph = build_plan_and_implement_graph(FAST).compile()
    state = await graph.ainvoke(
        {"prompt": "Build a todo CLI"}, context=scripted_context(reasoner, coder)
    )
    assert state["plan"] == "1. parse args\n2. store items"
    assert state["implementation"] == "def main(): ..."
    assert state["result"] == state["implementation"]
    assert state["selections"]["plan"].model == "reasoner"
    assert state["selections"]["implement"].model == "coder"
    assert [c.model for c in state["calls"]] == ["reasoner", "coder"]
    # The coder sees the plan in its prompt.
    assert "1. parse args" in str(coder.calls[0][-1].content)
    assert "Build a todo CLI" in str(coder.calls[0][-1].content)


async def test_plan_and_implement_step_models_override_each_step() -> None:
    reasoner = ScriptedChatModel(replies=["reasoner text"])
    coder = ScriptedChatModel(replies=["coder text"])
    graph = build_plan_and_implement_graph(FAST).compile()
    state = await graph.ainvoke(
        {"prompt": "Build a todo CLI", "step_models": {"plan": "coder", "implement": "reasoner"}},
        context=scripted_context(reasoner, coder),
    )
    assert state["plan"] == "coder text"
    assert state["implementation"] == "reasoner text"


async def test_a_failed_planner_falls_back_and_the_coder_still_implements() -> None:
    reasoner = ScriptedChatModel(replies=[call_error(ModelErrorKind.AUTH, "reasoner")])
    coder = ScriptedChatModel(replies=["the plan, by the coder", "the code"])
    graph = build_plan_and_implement_graph(FAST).compile()
    state = await graph.ainvoke({"prompt": "Build it"}, context=scripted_context(reasoner, coder))
    assert state["status"] is TaskStatus.COMPLETED
    assert state["plan"] == "the plan, by the coder"
    assert state["implementation"] == "the code"
    assert [c.model for c in state["calls"]] == ["coder", "coder"]


async def test_plan_failure_on_every_model_stops_before_implementing() -> None:
    reasoner = ScriptedChatModel(replies=[call_error(ModelErrorKind.AUTH, "reasoner")])
    coder = ScriptedChatModel(replies=[call_error(ModelErrorKind.AUTH), "never"])
    graph = build_plan_and_implement_graph(FAST).compile()
    state = await graph.ainvoke({"prompt": "Build it"}, context=scripted_context(reasoner, coder))
    assert state["status"] is TaskStatus.FAILED
    assert (state["error"]["node"], state["error"]["step"]) == ("select_planner", "plan")
    assert len(coder.calls) == 1
    assert "implementation" not in state


async def test_tokens_stream_with_the_step_and_model_that_produced_them() -> None:
    graph = build_route_graph(FAST).compile()
    reasoner = ScriptedChatModel(replies=["Buckets hold keys by their hash."])
    tokens: list[tuple[str, Any, Any]] = []
    async for message, metadata in graph.astream(
        {"prompt": "Explain how a hash table works"},
        context=scripted_context(reasoner=reasoner),
        stream_mode="messages",
    ):
        tokens.append((str(message.content), metadata.get("modelyard_step"),
                       metadata.get("modelyard_model")))  # fmt: skip
    assert "".join(t[0] for t in tokens) == "Buckets hold keys by their hash."
    assert len([t for t in tokens if t[0]]) > 3
    assert {(t[1], t[2]) for t in tokens} == {("answer", "reasoner")}


async def test_calls_record_latency_tokens_and_the_prompt() -> None:
    graph = build_route_graph(FAST).compile()
    state = await graph.ainvoke({"prompt": "Explain DNS"}, context=scripted_context())
    (call,) = state["calls"]
    assert call.model == "reasoner" and call.provider == "ollama"
    assert call.latency_ms >= 0
    assert call.first_token_ms is None  # nothing streamed
    assert call.input_tokens > 0 and call.output_tokens > 0
    assert call.prompt[-1]["role"] == "human"
    assert call.prompt[-1]["content"].startswith("Explain DNS\n\nWork through it step by step")
    (event,) = [e for e in state["history"] if e.kind == "model_call"]
    assert event.data["prompt"]["template"] == "prompts/stepwise/answer.md"
    assert event.data["prompt"]["messages"] == call.prompt


async def test_a_streamed_call_records_the_time_to_the_first_token() -> None:
    graph = build_route_graph(FAST).compile()
    final: dict[str, Any] = {}
    async for mode, chunk in graph.astream(
        {"prompt": "Explain DNS"}, context=scripted_context(), stream_mode=["messages", "values"]
    ):
        if mode == "values":
            final = chunk
    (call,) = final["calls"]
    assert call.first_token_ms is not None
    assert 0 <= call.first_token_ms <= call.latency_ms


async def test_arun_task_returns_a_finished_task() -> None:
    task = Task(prompt="Write a function that reverses a string", priority=10)
    done = await arun_task(task, context=scripted_context(), store=InMemoryStore())
    assert done.id == task.id
    assert done.status is TaskStatus.COMPLETED
    assert done.task_type is TaskType.CODE_GENERATION
    assert done.assigned_model == "coder"
    assert done.started_at is not None and done.finished_at is not None
    assert done.finished_at >= done.started_at >= done.created_at
    assert done.attempts == 1
    assert [e.kind for e in done.history][-1] == "completed"


async def test_failed_calls_count_as_attempts() -> None:
    coder = ScriptedChatModel(replies=[call_error(ModelErrorKind.TIMEOUT), "at last"])
    graph = build_route_graph(FAST).compile()
    state = await graph.ainvoke(SORT, context=scripted_context(coder=coder))
    assert state["status"] is TaskStatus.COMPLETED
    assert state["attempts"] == 2 == len(coder.calls)


async def test_invalid_per_task_options_fail_the_task_clearly() -> None:
    coder = ScriptedChatModel(replies=["never"])
    graph = build_route_graph(FAST).compile()
    task = {**SORT, "context": {"options": {"temperature": 9, "temprature": 1}}}
    state = await graph.ainvoke(task, context=scripted_context(coder=coder))
    assert state["status"] is TaskStatus.FAILED
    assert state["error"]["kind"] == "InvalidTaskError"
    assert "temperature" in state["error"]["message"] and "temprature" in state["error"]["message"]
    assert coder.calls == []


async def test_a_model_cooled_down_mid_task_is_handed_off_not_counted_as_failed() -> None:
    store = InMemoryStore()
    book = StatsBook(store, FAST)
    for _ in range(FAST.cooldown.allowed_fails - 1):  # other tasks' failures
        await book.record_failure(call_error(ModelErrorKind.SERVER_ERROR))
    coder = ScriptedChatModel(replies=[call_error(ModelErrorKind.SERVER_ERROR), "never"])
    reasoner = ScriptedChatModel(replies=["from the reasoner"])
    graph = build_route_graph(FAST).compile(store=store)
    state = await graph.ainvoke(SORT, context=scripted_context(reasoner, coder))
    assert state["assigned_model"] == "reasoner"
    assert len(coder.calls) == 1  # cooled down by this failure: not retried
    (handed,) = state["failures"]
    assert (handed.model, handed.calls, handed.handed_off) == ("coder", 1, True)
    excluded = state["selections"]["answer"].excluded["coder"]
    assert excluded.startswith("cooled down for")  # not "already failed for this task"


async def test_a_task_through_the_route_graph_hands_nothing_to_a_worker_thread() -> None:
    # A plain function as a node or edge runs on a worker thread: two hand-offs through a
    # busy event loop, for a lookup. The route's edge after `answer` is async for that.
    handed = record_thread_handoffs()
    graph = build_route_graph(FAST).compile(checkpointer=InMemorySaver(), store=InMemoryStore())

    state = await graph.ainvoke(
        {"prompt": "Explain how a hash table works"},
        {"configurable": {"thread_id": "no-threads"}},
        context=scripted_context(),
    )

    assert state["status"] is TaskStatus.COMPLETED
    assert handed == []
