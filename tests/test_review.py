"""The implement-and-review loop: verdict parsing, the graphs on scripted models, and over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from langchain_core.messages import BaseMessage
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.store.memory import InMemoryStore
from support import CODING_MODEL, record_thread_handoffs, scripted_context, write_config

from modelyard.configs import ModelRegistry, ModelyardConfig, load_config
from modelyard.configs.schema import RetrySettings
from modelyard.graphs import arun_task, build_review_graph
from modelyard.nodes import Context, work_node
from modelyard.routers.review import UnreadableVerdictError, after_review, parse_verdict
from modelyard.state import (
    ModelCallError,
    ModelErrorKind,
    ReviewRound,
    Selection,
    Step,
    Task,
    TaskStatus,
    TaskType,
    Verdict,
)
from modelyard.state.serde import checkpoint_serializer
from modelyard.testing.scripted import ScriptedChatModel
from modelyard.testing.server import LocalModelServer

FAST_RETRY = RetrySettings(initial_interval=0.0, max_interval=0.0, jitter=False)
FAST = load_config("default").model_copy(update={"retry": FAST_RETRY})
SORT = "Write a Python function that sorts a list of names"

APPROVE = '{"verdict": "approve", "comments": []}'


def changes(*comments: str) -> str:
    return json.dumps({"verdict": "request_changes", "comments": list(comments)})


def call_error(kind: ModelErrorKind, model: str) -> ModelCallError:
    return ModelCallError(kind, model=model, url="http://test", detail=f"scripted {kind.value}")


#: Three models: the coder writes code, the critic reviews it first (the coder second).
THREE_MODELS = """\
models:
  - name: reasoner
    model: ollama:phi3:mini
    roles: [planning, problem_solving, explanation, general]
    capabilities: {planning: 0.8, code_generation: 0.45, code_review: 0.55}
    context_window: 4096
  - name: coder
    model: ollama:deepseek-coder:6.7b-instruct
    roles: [code_generation, code_review]
    capabilities: {code_generation: 0.9, code_review: 0.7}
    context_window: 16384
  - name: critic
    model: ollama:qwen2.5-coder:7b
    roles: [code_review]
    capabilities: {code_review: 0.95, code_generation: 0.5}
    context_window: 16384
"""


def three_models(
    tmp_path: Path, coder: ScriptedChatModel, critic: ScriptedChatModel,
    reasoner: ScriptedChatModel | None = None,
) -> Context:  # fmt: skip
    config = load_config(write_config(tmp_path, THREE_MODELS)).model_copy(
        update={"retry": FAST_RETRY}
    )
    clients = {
        "reasoner": reasoner or ScriptedChatModel(replies=["1. plan it"]),
        "coder": coder,
        "critic": critic,
    }
    return Context(registry=ModelRegistry(config, clients=clients))


def by_step(reviews: list[str], code: Callable[[int], str]) -> Callable[[list[BaseMessage]], str]:
    """Return a respond function: the next review for a review prompt, else version n's code."""
    counts = {"review": 0, "code": 0}

    def respond(messages: list[BaseMessage]) -> str:
        if "Code (round" in str(messages[-1].content):
            counts["review"] += 1
            return reviews[min(counts["review"], len(reviews)) - 1]
        counts["code"] += 1
        return code(counts["code"])

    return respond


def version(n: int) -> str:
    return f"def sort_names(names):  # v{n}\n    return sorted(names)"


def kinds(state: dict[str, Any]) -> list[str]:
    return [e.kind for e in state["history"]]


# --- parse_verdict and after_review: pure -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "verdict", "comments"),
    [
        (APPROVE, Verdict.APPROVE, []),
        ('{"verdict": "APPROVE"}', Verdict.APPROVE, []),
        ('{"Verdict": " Approved ", "Comments": "tidy the names"}', Verdict.APPROVE,
         ["tidy the names"]),
        ('{"verdict": "request changes", "comments": ["a", " ", "b"]}',
         Verdict.REQUEST_CHANGES, ["a", "b"]),
        ('{"verdict": "changes_requested", "comments": "handle None"}',
         Verdict.REQUEST_CHANGES, ["handle None"]),
        ('{"verdict": "Request-Changes", "comments": [{"line": 3, "comment": "off by one"}]}',
         Verdict.REQUEST_CHANGES, ["off by one"]),
        ('Looking at it step by step: it sorts {names} fine.\n```json\n'
         '{"verdict": "request_changes", "comments": ["sort case-insensitively"]}\n```',
         Verdict.REQUEST_CHANGES, ["sort case-insensitively"]),
        ('First I thought {"verdict": "approve"}, but no:\n'
         '{"verdict": "request_changes", "comments": ["check for None"]}',
         Verdict.REQUEST_CHANGES, ["check for None"]),
        ('{"review": {"verdict": "approve", "comments": []}}', Verdict.APPROVE, []),
        ('Verdict: approve, nothing to fix', Verdict.APPROVE, []),
        ('Empty input crashes it.\n{"verdict": "request_changes", "comments": []}',
         Verdict.REQUEST_CHANGES, ["Empty input crashes it."]),
    ],
)  # fmt: skip
def test_parse_verdict_reads_the_spellings_reviewers_use(
    text: str, verdict: Verdict, comments: list[str]
) -> None:
    assert parse_verdict(text) == (verdict, comments)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("Looks good to me.", "no verdict in the review"),
        ('{"verdict": "maybe"}', "'maybe' is neither approve nor request_changes"),
        ('{"verdict": "request_changes", "comments": []}', "requests changes but names none"),
        ('{"comments": ["x"]}', "no verdict in the review"),
    ],
)
def test_parse_verdict_says_what_it_expected(text: str, says: str) -> None:
    with pytest.raises(UnreadableVerdictError) as caught:
        parse_verdict(text)
    assert says in str(caught.value)
    assert '{"verdict": "approve" or "request_changes"' in str(caught.value)


def review_round(number: int, verdict: Verdict) -> ReviewRound:
    return ReviewRound(
        round=number, code="x", coder="coder", reviewer="critic", verdict=verdict, comments=["c"]
    )


@pytest.mark.parametrize(
    ("rounds", "max_rounds", "route"),
    [
        ([Verdict.APPROVE], 3, "finish"),
        ([Verdict.REQUEST_CHANGES], 3, "revise"),
        ([Verdict.REQUEST_CHANGES, Verdict.REQUEST_CHANGES], 3, "revise"),
        ([Verdict.REQUEST_CHANGES] * 3, 3, "finish"),
        ([Verdict.REQUEST_CHANGES], 1, "finish"),
        ([Verdict.REQUEST_CHANGES, Verdict.APPROVE], 3, "finish"),
    ],
)
def test_after_review_finishes_when_approved_or_out_of_rounds(
    rounds: list[Verdict], max_rounds: int, route: str
) -> None:
    state: Any = {
        "rounds": [review_round(i, v) for i, v in enumerate(rounds, 1)],
        "max_rounds": max_rounds,
    }
    assert after_review(state) == route


# --- the review graph on scripted models --------------------------------------------------


async def test_approved_in_round_one_completes_with_the_implementation() -> None:
    coder = ScriptedChatModel(respond=by_step([APPROVE], version))
    graph = build_review_graph(FAST).compile()

    state = await graph.ainvoke({"prompt": SORT}, context=scripted_context(coder=coder))

    assert state["status"] is TaskStatus.COMPLETED
    assert state["result"] == state["implementation"] == version(1)
    assert state["assigned_model"] == "coder"
    (only,) = state["rounds"]
    assert (only.round, only.verdict, only.comments) == (1, Verdict.APPROVE, [])
    assert (only.coder, only.reviewer, only.code, only.review) == (
        "coder", "coder", version(1), APPROVE,
    )  # fmt: skip
    # The coder has code_review too, and no other model has it: it reviews its own code.
    assert "coder has the code_review role" in state["selections"]["review"].reason
    assert [(c.step, c.model) for c in state["calls"]] == [
        ("implement", "coder"), ("review", "coder"),
    ]  # fmt: skip
    assert kinds(state) == [
        "classified", "selected", "model_call", "selected", "model_call", "review", "completed",
    ]  # fmt: skip
    review_event = state["history"][-2]
    assert review_event.data["verdict"] == "approve" and review_event.data["round"] == 1
    # Without a plan step the implement prompt says there is no plan.
    assert "Plan:\n(none: choose the approach yourself)" in str(coder.calls[0][-1].content)
    # The review prompt holds the task and the code, round 1.
    review_prompt = str(coder.calls[1][-1].content)
    assert SORT in review_prompt and version(1) in review_prompt and "round 1" in review_prompt


async def test_approved_in_round_three_after_two_revisions(tmp_path: Path) -> None:
    coder = ScriptedChatModel(respond=lambda _: version(len(coder.calls)))
    critic = ScriptedChatModel(
        replies=[changes("handle None", "ignore case", "name it"), changes("ignore case"), APPROVE]
    )
    graph = build_review_graph(FAST).compile()
    handed = record_thread_handoffs()

    state = await graph.ainvoke({"prompt": SORT}, context=three_models(tmp_path, coder, critic))

    assert state["status"] is TaskStatus.COMPLETED
    assert handed == []  # the route after each review runs on the event loop
    assert state["result"] == state["implementation"] == version(3)
    assert state["assigned_model"] == "coder"
    rounds = state["rounds"]
    assert [(r.round, r.verdict, r.code) for r in rounds] == [
        (1, Verdict.REQUEST_CHANGES, version(1)),
        (2, Verdict.REQUEST_CHANGES, version(2)),
        (3, Verdict.APPROVE, version(3)),
    ]
    assert rounds[0].comments == ["handle None", "ignore case", "name it"]
    assert {(r.coder, r.reviewer) for r in rounds} == {("coder", "critic")}
    assert [(c.step, c.model) for c in state["calls"]] == [
        ("implement", "coder"), ("review", "critic"), ("revise", "coder"), ("review", "critic"),
        ("revise", "coder"), ("review", "critic"),
    ]  # fmt: skip
    # The revision gets the code and the comments as a list; the next review sees its code.
    revise_prompt = str(coder.calls[1][-1].content)
    assert version(1) in revise_prompt
    assert "- handle None\n- ignore case\n- name it" in revise_prompt
    assert version(2) in str(critic.calls[1][-1].content)
    assert "round 2" in str(critic.calls[1][-1].content)
    assert [e.data["verdict"] for e in state["history"] if e.kind == "review"] == [
        "request_changes", "request_changes", "approve",
    ]  # fmt: skip
    assert "review_stopped" not in kinds(state)


async def test_stops_at_max_rounds_unapproved_but_completes(tmp_path: Path) -> None:
    coder = ScriptedChatModel(respond=lambda _: version(len(coder.calls)))
    critic = ScriptedChatModel(replies=[changes("still wrong")])
    graph = build_review_graph(FAST).compile()

    state = await graph.ainvoke(
        {"prompt": SORT, "max_rounds": 2}, context=three_models(tmp_path, coder, critic)
    )

    assert state["status"] is TaskStatus.COMPLETED
    assert state["error"] is None
    assert state["result"] == version(2)  # the last revision, though not approved
    assert [r.verdict for r in state["rounds"]] == [Verdict.REQUEST_CHANGES] * 2
    assert len(critic.calls) == 2 and len(coder.calls) == 2
    stopped = next(e for e in state["history"] if e.kind == "review_stopped")
    assert "stopped after 2 rounds (max_rounds 2) without approval" in stopped.detail
    assert stopped.data["verdict"] == "request_changes"
    assert stopped.data["comments"] == ["still wrong"]
    assert kinds(state)[-2:] == ["review_stopped", "completed"]
    assert state["history"][-1].data == {"approved": False, "rounds": 2}


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param("I would not merge this yet.", id="unreadable-verdict"),
        pytest.param(call_error(ModelErrorKind.SERVER_ERROR, "critic"), id="server-error"),
    ],
)
async def test_a_failing_reviewer_falls_back_to_the_next_reviewer(
    tmp_path: Path, failure: str | ModelCallError
) -> None:
    coder = ScriptedChatModel(respond=by_step([APPROVE], version))
    critic = ScriptedChatModel(replies=[failure])
    graph = build_review_graph(FAST).compile()

    state = await graph.ainvoke({"prompt": SORT}, context=three_models(tmp_path, coder, critic))

    assert state["status"] is TaskStatus.COMPLETED
    assert len(critic.calls) == 3  # the retry policy's three attempts, then the fallback
    (failed,) = state["failures"]
    assert (failed.step, failed.model, failed.calls) == ("review", "critic", 3)
    (only,) = state["rounds"]
    assert (only.reviewer, only.verdict) == ("coder", Verdict.APPROVE)
    assert state["selections"]["review"].model == "coder"
    assert state["selections"]["review"].excluded["critic"] == "already failed for this task"
    fallback = next(e for e in state["history"] if e.kind == "fallback")
    assert fallback.step == "review" and fallback.data["next_model"] == "coder"
    if isinstance(failure, str):
        assert failed.kind == "malformed_response"
        assert "model 'critic'" in failed.message
        assert "no verdict in the review" in failed.message
        assert "I would not merge this yet." in failed.message
        assert "models.critic.prompts.review" in failed.message


async def test_an_unreadable_verdict_is_retried_on_the_same_reviewer(tmp_path: Path) -> None:
    coder = ScriptedChatModel(respond=by_step([APPROVE], version))
    critic = ScriptedChatModel(replies=["Looks fine.", APPROVE])
    graph = build_review_graph(FAST).compile()

    state = await graph.ainvoke({"prompt": SORT}, context=three_models(tmp_path, coder, critic))

    assert len(critic.calls) == 2
    assert state.get("failures", []) == []
    assert state["rounds"][0].reviewer == "critic"
    assert state["calls"][1].attempts == 2


async def test_a_failed_revision_falls_back_to_another_coder(tmp_path: Path) -> None:
    coder = ScriptedChatModel(replies=[version(1), call_error(ModelErrorKind.AUTH, "coder")])
    critic = ScriptedChatModel(
        respond=by_step([changes("handle None"), APPROVE], lambda _: "critic's code")
    )
    graph = build_review_graph(FAST).compile()

    state = await graph.ainvoke({"prompt": SORT}, context=three_models(tmp_path, coder, critic))

    assert state["status"] is TaskStatus.COMPLETED
    (failed,) = state["failures"]
    assert (failed.step, failed.model, failed.kind) == ("revise", "coder", "auth")
    assert state["selections"]["revise"].model == "critic"  # the best left for code_generation
    assert [(r.round, r.coder, r.code) for r in state["rounds"]] == [
        (1, "coder", version(1)), (2, "critic", "critic's code"),
    ]  # fmt: skip
    assert state["result"] == "critic's code"
    assert state["assigned_model"] == "critic"


async def test_plan_then_implement_then_review() -> None:
    reasoner = ScriptedChatModel(replies=["1. compare names\n2. sort them"])
    coder = ScriptedChatModel(respond=by_step([changes("ignore case"), APPROVE], version))
    graph = build_review_graph(FAST, plan=True).compile()

    state = await graph.ainvoke({"prompt": SORT}, context=scripted_context(reasoner, coder))

    assert state["status"] is TaskStatus.COMPLETED
    assert state["plan"] == "1. compare names\n2. sort them"
    assert state["result"] == version(2)
    assert [(c.step, c.model) for c in state["calls"]] == [
        ("plan", "reasoner"), ("implement", "coder"), ("review", "coder"), ("revise", "coder"),
        ("review", "coder"),
    ]  # fmt: skip
    assert "1. compare names" in str(coder.calls[0][-1].content)  # the coder follows the plan


async def test_review_and_revise_stream_under_their_step_and_model(tmp_path: Path) -> None:
    coder = ScriptedChatModel(respond=lambda _: version(len(coder.calls)))
    critic = ScriptedChatModel(replies=[changes("ignore case"), APPROVE])
    graph = build_review_graph(FAST).compile()
    seen: list[tuple[Any, Any]] = []
    async for message, metadata in graph.astream(
        {"prompt": SORT}, context=three_models(tmp_path, coder, critic), stream_mode="messages"
    ):
        key = (metadata.get("modelyard_step"), metadata.get("modelyard_model"))
        if message.content and (not seen or seen[-1] != key):
            seen.append(key)
    assert seen == [
        ("implement", "coder"), ("review", "critic"), ("revise", "coder"), ("review", "critic"),
    ]  # fmt: skip


async def test_a_models_review_template_from_the_config_is_used(tmp_path: Path) -> None:
    text = THREE_MODELS.replace(
        "roles: [code_review]\n",
        'roles: [code_review]\n    prompts: {review: "Judge round {round}: {code}"}\n',
    )
    config = load_config(write_config(tmp_path, text))
    coder = ScriptedChatModel(respond=by_step([APPROVE], version))
    critic = ScriptedChatModel(replies=[APPROVE])
    context = Context(registry=ModelRegistry(config, clients={"coder": coder, "critic": critic}))

    await build_review_graph(config).compile().ainvoke({"prompt": SORT}, context=context)

    assert critic.calls[0][-1].content == f"Judge round 1: {version(1)}"


async def test_post_completion_steps_run_on_the_final_code(tmp_path: Path) -> None:
    text = THREE_MODELS + "    post_completions: [{task: Write the changelog entry}]\n"
    config = load_config(write_config(tmp_path, text))
    coder = ScriptedChatModel(respond=lambda _: version(len(coder.calls)))
    critic = ScriptedChatModel(
        respond=by_step([changes("ignore case"), APPROVE], lambda _: "changelog: sort_names")
    )
    context = Context(registry=ModelRegistry(config, clients={"coder": coder, "critic": critic}))
    graph = build_review_graph(config).compile(store=InMemoryStore())

    state = await graph.ainvoke({"prompt": SORT}, context=context)

    assert state["status"] is TaskStatus.COMPLETED
    assert state["result"] == version(2)
    (step,) = state["post_completions"]
    assert (step.model, step.output, step.ok) == ("critic", "changelog: sort_names", True)
    assert version(2) in str(critic.calls[-1][-1].content)  # it saw the final code
    unhooked = build_review_graph(config, post_completions=False).compile()
    assert "post_complete" not in unhooked.get_graph().nodes


async def test_arun_task_runs_many_rounds_and_returns_them_on_the_task() -> None:
    coder = ScriptedChatModel(respond=by_step([changes("again")], version))
    task = Task(prompt=SORT, max_rounds=12)

    done = await arun_task(
        task, graph="review", context=scripted_context(coder=coder), store=InMemoryStore()
    )

    assert done.status is TaskStatus.COMPLETED
    assert len(done.rounds) == 12  # beyond LangGraph's default recursion limit of 25 steps
    assert done.rounds[-1].code == done.result == version(12)
    assert done.task_type is TaskType.CODE_GENERATION


async def test_the_review_loop_checkpoints_and_resumes_its_rounds(tmp_path: Path) -> None:
    coder = ScriptedChatModel(respond=by_step([changes("ignore case"), APPROVE], version))
    async with aiosqlite.connect(tmp_path / "checkpoints.sqlite") as conn:
        saver = AsyncSqliteSaver(conn, serde=checkpoint_serializer())
        graph = build_review_graph(FAST).compile(checkpointer=saver)
        config: Any = {"configurable": {"thread_id": "review-1"}}
        await graph.ainvoke({"prompt": SORT}, config, context=scripted_context(coder=coder))
        saved = (await graph.aget_state(config)).values
    rounds = saved["rounds"]
    assert all(isinstance(r, ReviewRound) for r in rounds)
    assert [r.verdict for r in rounds] == [Verdict.REQUEST_CHANGES, Verdict.APPROVE]
    assert isinstance(rounds[0].verdict, Verdict)
    assert isinstance(saved["selections"]["review"], Selection)


def test_task_to_input_and_with_state_carry_the_rounds() -> None:
    task = Task(prompt=SORT, max_rounds=5)
    assert task.to_input()["max_rounds"] == 5
    entry = review_round(1, Verdict.APPROVE)
    done = task.with_state({"rounds": [entry.model_dump(mode="json")], "status": "completed"})
    assert done.rounds == [entry]
    with pytest.raises(ValueError, match="max_rounds"):
        Task(prompt=SORT, max_rounds=0)


# --- over HTTP: the real clients against the local protocol server -------------------------


@pytest.mark.protocol
async def test_the_review_loop_over_http(
    server: LocalModelServer, server_config: ModelyardConfig, protocol: str
) -> None:
    reviews = iter([changes("reject empty names"), APPROVE])

    def reply(model: str, messages: list[dict[str, Any]]) -> str:
        prompt = messages[-1]["content"]
        if "Code (round" in prompt:
            return next(reviews)
        if prompt.startswith("Revise"):
            return "def sort_names(names):\n    return sorted(n for n in names if n)"
        return "def sort_names(names): ..."

    server.script(CODING_MODEL, reply)
    graph = build_review_graph(server_config).compile()

    state = await graph.ainvoke({"prompt": SORT}, context=Context(config=server_config))

    assert state["status"] is TaskStatus.COMPLETED, state.get("error")
    assert [r.verdict for r in state["rounds"]] == [Verdict.REQUEST_CHANGES, Verdict.APPROVE]
    assert state["rounds"][0].comments == ["reject empty names"]
    assert state["result"] == "def sort_names(names):\n    return sorted(n for n in names if n)"
    chats = [r for r in server.requests if r.path in ("/api/chat", "/v1/chat/completions")]
    assert [r.model for r in chats] == [CODING_MODEL] * 4
    assert {r.protocol for r in chats} == {protocol}
    assert all(c.input_tokens > 0 and c.output_tokens > 0 for c in state["calls"])


def test_a_review_step_without_a_finish_is_refused_when_the_graph_is_built() -> None:
    with pytest.raises(ValueError, match="pass finish= to work_node"):
        work_node(Step.REVIEW)
