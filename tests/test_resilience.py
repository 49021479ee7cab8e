"""Resilience over HTTP: error kinds, retries, fallback, cooldowns and stats that outlive a process.

Every test drives the real ChatOllama or ChatOpenAI client against the local protocol server.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from langgraph.store.memory import InMemoryStore
from support import CODING_MODEL, REASONING_MODEL, config_text, write_config

from modelyard.configs import ModelRegistry, ModelyardConfig, load_config
from modelyard.configs.persistence import open_store
from modelyard.configs.schema import PersistenceSettings
from modelyard.graphs import arun_task, build_route_graph
from modelyard.nodes import NAMESPACE, Context, StatsBook
from modelyard.state import Health, ModelCall, ModelStats, TaskEvent, TaskStatus
from modelyard.testing import server as server_module
from modelyard.testing.server import Fault, LocalModelServer

pytestmark = pytest.mark.protocol

CODE_PROMPT = "Write a Python function that validates email addresses"
EXPLAIN_PROMPT = "Explain how a hash table works"
HELPER_MODEL = "qwen2.5-coder:1.5b"
WRITER = Path(__file__).with_name("stats_writer.py")
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
OVERFLOW_MESSAGE = (
    "This model's maximum context length is 4096 tokens. However, your messages resulted "
    "in 5210 tokens. Please reduce the length of the messages."
)


# --- helpers -------------------------------------------------------------------------------


def build_config(
    tmp_path: Path,
    url: str,
    protocol: str,
    *,
    timeout: float = 5.0,
    retry: str = "",
    models: str = "",
    sections: str = "",
) -> ModelyardConfig:
    """Return the two-model test config, with extra retry lines, models and sections."""
    text = config_text(url, protocol=protocol, timeout=timeout)
    text = text.replace("  jitter: false\n", "  jitter: false\n" + retry)
    text = text.replace("models:\n", "models:\n" + models, 1)
    return load_config(write_config(tmp_path, text + sections))


def cooldown(allowed_fails: int, seconds: float, max_wait: float = 0.0) -> str:
    """Return a `cooldown:` section."""
    return (
        f"cooldown:\n  allowed_fails: {allowed_fails}\n  cooldown_seconds: {seconds}\n"
        f"  max_wait_seconds: {max_wait}\n"
    )


def helper_model(url: str, protocol: str, capability: float = 0.7) -> str:
    """Return a third model entry, `helper`, a code model with a mid-range capability."""
    provider = "ollama" if protocol == "ollama" else "openai_compatible"
    base_url = url if protocol == "ollama" else f"{url}/v1"
    return (
        f"  - name: helper\n    model: {provider}:{HELPER_MODEL}\n    base_url: {base_url}\n"
        f"    roles: [code_generation]\n    capabilities: {{code_generation: {capability}}}\n"
        "    context_window: 8192\n    timeout: 5.0\n"
    )


class Runner:
    """Runs tasks on one compiled route graph, one store and one set of clients."""

    def __init__(self, config: ModelyardConfig) -> None:
        store = InMemoryStore()
        self.graph = build_route_graph(config).compile(store=store)
        self.context = Context(registry=ModelRegistry(config))
        self.book = StatsBook(store, config)

    async def run(self, prompt: str, **task: Any) -> dict[str, Any]:
        """Run one task and return its final state."""
        return await self.graph.ainvoke({"prompt": prompt, **task}, context=self.context)

    async def stream(self, prompt: str) -> list[tuple[str, Any]]:
        """Run one task streaming messages, custom events and values; return every part."""
        parts: list[tuple[str, Any]] = []
        async for mode, chunk in self.graph.astream(
            {"prompt": prompt},
            context=self.context,
            stream_mode=["messages", "custom", "values"],
        ):
            parts.append((mode, chunk))
        return parts

    async def stats(self, name: str) -> ModelStats:
        """Return a model's stats from the store."""
        return await self.book.get(name)


def events(state: dict[str, Any], kind: str) -> list[TaskEvent]:
    """Return the task's history events of one kind, in order."""
    return [event for event in state["history"] if event.kind == kind]


def free_port() -> int:
    """Return a loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def overflow_on_400(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make injected 400s carry OpenAI's context-length message instead of 'Bad Request'.

    The server's injected faults have a fixed message; real servers say why a prompt was
    refused, and modelyard reads the words to tell a context overflow from a bad request.
    """
    original = server_module._Handler._send_error

    def send_error(
        self: server_module._Handler, protocol: Any, status: int, message: str, **extra: Any
    ) -> None:
        if status == 400 and message.endswith("(injected fault)"):
            message = OVERFLOW_MESSAGE
        original(self, protocol, status, message, **extra)

    monkeypatch.setattr(server_module._Handler, "_send_error", send_error)


# --- 1. every error kind: retried where it may help, recorded in the model's stats ----------


def inject(fault: Fault) -> Callable[[LocalModelServer], None]:
    """Return a setup that makes every request to the coder meet `fault`."""

    def breaks(server: LocalModelServer) -> None:
        server.inject_fault(fault, model=CODING_MODEL, times=None)

    return breaks


@pytest.mark.parametrize(
    ("break_coder", "kind", "calls"),
    [
        pytest.param(inject(Fault.status_code(429, retry_after=0.01)), "rate_limited", 3, id="429"),
        pytest.param(inject(Fault.status_code(500)), "server_error", 3, id="500"),
        pytest.param(inject(Fault.status_code(503)), "server_error", 3, id="503"),
        pytest.param(inject(Fault.malformed()), "malformed_response", 3, id="malformed"),
        pytest.param(inject(Fault.cut_stream(after_chunks=1)), "connection", 3, id="cut-stream"),
        pytest.param(inject(Fault.status_code(400)), "bad_request", 1, id="400"),
        pytest.param(inject(Fault.status_code(401)), "auth", 1, id="401"),
        pytest.param(inject(Fault.status_code(404)), "not_found", 1, id="404"),
    ],
)
async def test_each_error_kind_is_retried_only_when_it_may_help_and_counted_in_stats(
    server: LocalModelServer,
    server_config: ModelyardConfig,
    break_coder: Callable[[LocalModelServer], None],
    kind: str,
    calls: int,
) -> None:
    runner = Runner(server_config)
    break_coder(server)

    state = await runner.run(CODE_PROMPT)

    assert state["status"] is TaskStatus.COMPLETED, state.get("error")
    assert state["assigned_model"] == "reasoner"
    assert len(server.requests_for(CODING_MODEL)) == calls
    assert len(server.requests_for(REASONING_MODEL)) == 1
    (failed,) = state["failures"]
    assert (failed.model, failed.kind, failed.calls) == ("coder", kind, calls)
    assert state["attempts"] == calls + 1
    coder = await runner.stats("coder")
    assert (coder.calls, coder.failures, coder.successes) == (calls, calls, 0)
    assert coder.failures_by_kind == {kind: calls}
    assert coder.last_error is not None and coder.last_error["kind"] == kind
    reasoner = await runner.stats("reasoner")
    assert (reasoner.calls, reasoner.successes, reasoner.failures_by_kind) == (1, 1, {})


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        pytest.param(Fault.status_code(429, retry_after=0.01), "rate_limited", id="429"),
        pytest.param(Fault.malformed(), "malformed_response", id="malformed"),
        pytest.param(Fault.cut_stream(after_chunks=1), "connection", id="cut-stream"),
        pytest.param(Fault.hang(), "timeout", id="hang"),
    ],
)
async def test_a_transient_error_is_retried_on_the_same_model_and_both_calls_are_counted(
    tmp_path: Path, server: LocalModelServer, protocol: str, fault: Fault, kind: str
) -> None:
    runner = Runner(build_config(tmp_path, server.url, protocol, timeout=0.5))
    server.script(CODING_MODEL, ["the real answer"])
    server.inject_fault(fault, model=CODING_MODEL, times=1)
    try:
        state = await runner.run(CODE_PROMPT)
    finally:
        server.clear_faults()

    assert state["status"] is TaskStatus.COMPLETED, state.get("error")
    assert (state["assigned_model"], state["result"]) == ("coder", "the real answer")
    assert len(server.requests_for(CODING_MODEL)) == 2
    assert server.requests_for(REASONING_MODEL) == []
    assert state["calls"][0].attempts == 2
    coder = await runner.stats("coder")
    assert (coder.calls, coder.successes, coder.failures) == (2, 1, 1)
    assert coder.failures_by_kind == {kind: 1}
    assert coder.consecutive_failures == 0 and coder.cooldown_until is None


async def test_a_hanging_model_times_out_on_every_retry_then_falls_back(
    tmp_path: Path, server: LocalModelServer, protocol: str
) -> None:
    runner = Runner(build_config(tmp_path, server.url, protocol, timeout=0.3))
    server.inject_fault(Fault.hang(), model=CODING_MODEL, times=None)
    try:
        state = await runner.run(CODE_PROMPT)
    finally:
        server.clear_faults()

    assert state["assigned_model"] == "reasoner", state.get("error")
    assert len(server.requests_for(CODING_MODEL)) == 3
    (failed,) = state["failures"]
    assert (failed.kind, failed.calls) == ("timeout", 3)
    assert "no answer within 0.3 s" in failed.message
    coder = await runner.stats("coder")
    assert coder.failures_by_kind == {"timeout": 3}


async def test_a_refused_connection_is_retried_then_every_model_fails(
    tmp_path: Path, protocol: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    runner = Runner(build_config(tmp_path, url, protocol))

    state = await runner.run(CODE_PROMPT)

    assert state["status"] is TaskStatus.FAILED
    attempts = state["error"]["attempts"]
    assert [(a["model"], a["kind"], a["calls"]) for a in attempts] == [
        ("coder", "connection", 3),
        ("reasoner", "connection", 3),
    ]
    for name in ("coder", "reasoner"):
        stats = await runner.stats(name)
        assert stats.failures_by_kind == {"connection": 3}
        assert stats.successes == 0


async def test_a_context_overflow_is_not_retried_and_moves_to_a_larger_window(
    server: LocalModelServer, server_config: ModelyardConfig, overflow_on_400: None
) -> None:
    runner = Runner(server_config)
    server.inject_fault(Fault.status_code(400), model=REASONING_MODEL, times=None)

    state = await runner.run(EXPLAIN_PROMPT)

    assert state["assigned_model"] == "coder", state.get("error")
    assert len(server.requests_for(REASONING_MODEL)) == 1
    (failed,) = state["failures"]
    assert (failed.model, failed.kind, failed.calls) == ("reasoner", "context_overflow", 1)
    assert "maximum context length" in failed.message
    reasoner = await runner.stats("reasoner")
    assert reasoner.failures_by_kind == {"context_overflow": 1}


async def test_a_context_overflow_on_the_largest_window_fails_saying_none_is_larger(
    server: LocalModelServer, server_config: ModelyardConfig, overflow_on_400: None
) -> None:
    runner = Runner(server_config)
    server.inject_fault(Fault.status_code(400), model=CODING_MODEL, times=None)

    state = await runner.run(CODE_PROMPT)

    assert state["status"] is TaskStatus.FAILED
    error = state["error"]
    assert [(a["model"], a["kind"], a["calls"]) for a in error["attempts"]] == [
        ("coder", "context_overflow", 1)
    ]
    assert error["remaining"] == {
        "reasoner": "context window 4096 is not larger than the 16384 tokens that overflowed"
    }
    assert server.requests_for(REASONING_MODEL) == []


# --- 2. Retry-After ------------------------------------------------------------------------


async def test_a_retry_waits_for_the_servers_retry_after(
    server: LocalModelServer, server_config: ModelyardConfig
) -> None:
    runner = Runner(server_config)
    server.inject_fault(Fault.status_code(429, retry_after=0.3), model=CODING_MODEL, times=1)

    state = await runner.run(CODE_PROMPT)

    assert state["assigned_model"] == "coder", state.get("error")
    first, retry = server.requests_for(CODING_MODEL)
    assert retry.received_at - first.received_at >= 0.3
    assert server.requests_for(REASONING_MODEL) == []
    coder = await runner.stats("coder")
    assert coder.failures_by_kind == {"rate_limited": 1}
    assert coder.cooldown_until is None  # the success ended the rate-limit cooldown


async def test_a_retry_after_beyond_max_retry_after_falls_back_at_once(
    tmp_path: Path, server: LocalModelServer, protocol: str
) -> None:
    config = build_config(tmp_path, server.url, protocol, retry="  max_retry_after: 2.0\n")
    runner = Runner(config)
    server.inject_fault(Fault.status_code(429, retry_after=30), model=CODING_MODEL, times=None)

    state = await runner.run(CODE_PROMPT)

    assert state["assigned_model"] == "reasoner", state.get("error")
    (asked,) = server.requests_for(CODING_MODEL)
    (answered,) = server.requests_for(REASONING_MODEL)
    assert answered.received_at - asked.received_at < 1.0  # neither 30 s nor the 2 s cap
    (failed,) = state["failures"]
    assert (failed.kind, failed.calls) == ("rate_limited", 1)
    coder = await runner.stats("coder")
    assert coder.cooldown_reason == "rate_limited"
    assert 0.0 < coder.cooldown_left(time.time()) <= 2.0  # capped at max_retry_after


# --- 3. fallback order ---------------------------------------------------------------------


async def test_a_code_task_falls_back_to_the_reasoner_and_says_why_the_coder_was_left_out(
    server: LocalModelServer, server_config: ModelyardConfig
) -> None:
    runner = Runner(server_config)
    server.inject_fault(Fault.status_code(500), model=CODING_MODEL, times=None)

    state = await runner.run(CODE_PROMPT)

    assert state["assigned_model"] == "reasoner", state.get("error")
    first, second = events(state, "selected")
    assert first.model == "coder" and second.model == "reasoner"
    assert second.data["excluded"] == {"coder": "already failed for this task"}
    assert state["selections"]["answer"].excluded == {"coder": "already failed for this task"}
    (fallback,) = events(state, "fallback")
    assert fallback.detail == "coder failed: server_error; continuing on reasoner"
    (failed_event,) = events(state, "model_failed")
    assert failed_event.model == "coder"


async def test_three_models_are_tried_in_score_order_not_config_order(
    tmp_path: Path, server: LocalModelServer, protocol: str
) -> None:
    server.add_model(HELPER_MODEL)
    config = build_config(tmp_path, server.url, protocol, models=helper_model(server.url, protocol))
    assert config.model_names == ["helper", "reasoner", "coder"]
    runner = Runner(config)
    for model_id in (CODING_MODEL, HELPER_MODEL):
        server.inject_fault(Fault.status_code(400), model=model_id, times=None)

    state = await runner.run(CODE_PROMPT)

    assert state["assigned_model"] == "reasoner", state.get("error")
    chat = sorted(
        (r for r in server.requests if r.path in ("/api/chat", "/v1/chat/completions")),
        key=lambda r: r.received_at,
    )
    assert [r.model for r in chat] == [CODING_MODEL, HELPER_MODEL, REASONING_MODEL]
    selected = events(state, "selected")
    assert [e.model for e in selected] == ["coder", "helper", "reasoner"]
    ranking = [(c["model"], c["score"]) for c in selected[0].data["ranking"]]
    assert [model for model, _ in ranking] == ["coder", "helper"]
    assert ranking[0][1] > ranking[1][1]
    assert selected[2].data["excluded"] == {
        "helper": "already failed for this task",
        "coder": "already failed for this task",
    }
    assert "no model left has the code_generation role" in selected[2].detail


# --- 4. cooldown and recovery --------------------------------------------------------------


async def cool_down_coder(runner: Runner, server: LocalModelServer) -> dict[str, Any]:
    """Fail the coder until it is cooled down (allowed_fails 2); return that task's state."""
    server.inject_fault(Fault.status_code(500), model=CODING_MODEL, times=None)
    state = await runner.run(CODE_PROMPT)
    server.clear_faults()
    assert state["assigned_model"] == "reasoner", state.get("error")
    return state


async def test_a_model_is_cooled_down_after_allowed_fails_and_left_out_meanwhile(
    tmp_path: Path, server: LocalModelServer, protocol: str
) -> None:
    config = build_config(tmp_path, server.url, protocol, sections=cooldown(2, 5.0))
    runner = Runner(config)

    state = await cool_down_coder(runner, server)

    assert len(server.requests_for(CODING_MODEL)) == 2  # two of three attempts: then resting
    assert state["failures"][0].calls == 2
    coder = await runner.stats("coder")
    assert coder.consecutive_failures == 2
    assert coder.cooldown_reason == "failures"
    now = time.time()
    assert coder.cooldown_until is not None and 2.0 < coder.cooldown_until - now <= 5.0
    assert coder.health(now, 2, 5.0) is Health.COOLING

    again = await runner.run(CODE_PROMPT)

    assert again["assigned_model"] == "reasoner", again.get("error")
    assert len(server.requests_for(CODING_MODEL)) == 2  # not called at all
    (selected,) = events(again, "selected")
    why = selected.data["excluded"]["coder"]
    assert why.startswith("cooled down for ")
    assert "2 consecutive failures, last server_error" in why


async def test_after_the_cooldown_a_trial_call_that_succeeds_restores_the_model(
    tmp_path: Path, server: LocalModelServer, protocol: str
) -> None:
    config = build_config(tmp_path, server.url, protocol, sections=cooldown(2, 0.3))
    runner = Runner(config)
    await cool_down_coder(runner, server)
    await asyncio.sleep(0.35)

    state = await runner.run(CODE_PROMPT)

    assert state["assigned_model"] == "coder", state.get("error")
    assert state["selections"]["answer"].trial is True
    (selected,) = events(state, "selected")
    assert selected.data["trial"] is True
    assert "back from a cooldown; this call is its trial" in selected.detail
    coder = await runner.stats("coder")
    assert coder.consecutive_failures == 0
    assert coder.cooldown_until is None and coder.cooldown_reason is None
    assert coder.health(time.time(), 2, 5.0) is Health.OK
    assert coder.success_rate == 1.0  # back: it starts over from its initial figure

    after = await runner.run(CODE_PROMPT)
    assert after["selections"]["answer"].trial is False


async def test_while_a_trial_call_is_under_way_other_tasks_go_elsewhere(
    tmp_path: Path, server: LocalModelServer, protocol: str
) -> None:
    config = build_config(tmp_path, server.url, protocol, sections=cooldown(2, 0.3))
    runner = Runner(config)
    await cool_down_coder(runner, server)
    await asyncio.sleep(0.35)
    server.inject_fault(Fault.delay(0.4), model=CODING_MODEL, times=1)  # a slow trial call

    trial_task = asyncio.create_task(runner.run(CODE_PROMPT))
    while len(server.requests_for(CODING_MODEL)) < 3:  # two that cooled it, then the trial
        await asyncio.sleep(0.01)
    other = await runner.run(CODE_PROMPT)
    trial = await trial_task

    assert (trial["assigned_model"], trial["selections"]["answer"].trial) == ("coder", True)
    assert other["assigned_model"] == "reasoner", other.get("error")
    assert other["selections"]["answer"].excluded["coder"] == (
        "back from a cooldown; another task's trial call is under way"
    )
    assert len(server.requests_for(CODING_MODEL)) == 3


async def test_a_failed_trial_cools_the_model_down_again_after_one_call(
    tmp_path: Path, server: LocalModelServer, protocol: str
) -> None:
    config = build_config(tmp_path, server.url, protocol, sections=cooldown(2, 0.3))
    runner = Runner(config)
    await cool_down_coder(runner, server)
    await asyncio.sleep(0.35)
    server.inject_fault(Fault.status_code(503), model=CODING_MODEL, times=None)

    state = await runner.run(CODE_PROMPT)

    assert state["assigned_model"] == "reasoner", state.get("error")
    assert len(server.requests_for(CODING_MODEL)) == 3  # two to cool it, one trial
    first_selection = events(state, "selected")[0]
    assert (first_selection.model, first_selection.data["trial"]) == ("coder", True)
    (failed,) = state["failures"]
    assert (failed.kind, failed.calls) == ("server_error", 1)
    coder = await runner.stats("coder")
    assert coder.consecutive_failures == 3
    assert coder.cooldown_reason == "failures"
    assert coder.health(time.time(), 2, 5.0) is Health.COOLING


# --- 5. every candidate cooled down --------------------------------------------------------


async def cool_down_both(runner: Runner, server: LocalModelServer) -> None:
    """Fail every model once (allowed_fails 1) so both are cooled down."""
    server.inject_fault(Fault.status_code(500), times=None)
    state = await runner.run(CODE_PROMPT)
    server.clear_faults()
    assert state["error"]["kind"] == "all_models_failed"
    for name in ("coder", "reasoner"):
        assert (await runner.stats(name)).cooldown_until is not None


async def test_when_every_model_is_cooled_down_the_task_waits_for_the_first_back(
    tmp_path: Path, server: LocalModelServer, protocol: str
) -> None:
    config = build_config(tmp_path, server.url, protocol, sections=cooldown(1, 0.7, 3.0))
    runner = Runner(config)
    await cool_down_both(runner, server)
    coder_back = (await runner.stats("coder")).cooldown_until
    assert coder_back is not None
    calls_before = len(server.requests_for(CODING_MODEL))

    started = time.time()
    state = await runner.run(CODE_PROMPT)
    elapsed = time.time() - started

    assert coder_back > started  # both were still cooling when the task started
    assert state["status"] is TaskStatus.COMPLETED, state.get("error")
    assert state["assigned_model"] == "coder"
    assert state["selections"]["answer"].trial is True
    assert coder_back - started <= elapsed < 3.0
    trial = server.requests_for(CODING_MODEL)[calls_before]
    assert trial.received_at >= coder_back


async def test_when_the_wait_bound_is_shorter_than_the_cooldowns_the_task_fails_at_once(
    tmp_path: Path, server: LocalModelServer, protocol: str
) -> None:
    config = build_config(tmp_path, server.url, protocol, sections=cooldown(1, 5.0, 0.2))
    runner = Runner(config)
    await cool_down_both(runner, server)
    requests_before = len(server.requests)

    started = time.monotonic()
    state = await runner.run(CODE_PROMPT)
    elapsed = time.monotonic() - started

    assert elapsed < 1.0  # far from the 5 s cooldown: it did not wait
    assert len(server.requests) == requests_before
    assert state["status"] is TaskStatus.FAILED
    error = state["error"]
    assert error["kind"] == "NoModelAvailableError"
    message = error["message"]
    assert "no model can take the answer step of a code_generation task" in message
    assert "coder: cooled down for " in message and "reasoner: cooled down for " in message
    assert "1 consecutive failures, last server_error" in message
    assert "Wait for a cooled-down model to come back" in message


# --- 6. the terminal error -----------------------------------------------------------------


async def test_the_terminal_error_lists_every_attempt_and_why_no_other_model_was_tried(
    tmp_path: Path, server: LocalModelServer, protocol: str
) -> None:
    server.add_model(HELPER_MODEL)
    config = build_config(
        tmp_path, server.url, protocol, models=helper_model(server.url, protocol, 0.5)
    )
    runner = Runner(config)
    server.inject_fault(Fault.status_code(503), model=CODING_MODEL, times=None)
    server.inject_fault(Fault.status_code(401), model=HELPER_MODEL, times=None)

    state = await runner.run(CODE_PROMPT, max_attempts=2)

    assert state["status"] is TaskStatus.FAILED
    error = state["error"]
    url = server.url if protocol == "ollama" else f"{server.url}/v1"
    assert (error["kind"], error["step"], error["node"]) == (
        "all_models_failed",
        "answer",
        "answer",
    )
    coder, helper = error["attempts"]
    assert {k: coder[k] for k in ("step", "model", "url", "kind", "calls", "streamed_tokens")} == {
        "step": "answer", "model": "coder", "url": url, "kind": "server_error", "calls": 3,
        "streamed_tokens": 0,
    }  # fmt: skip
    assert "server_error (HTTP 503) from model 'coder' at " + url in coder["message"]
    assert {k: helper[k] for k in ("model", "url", "kind", "calls")} == {
        "model": "helper", "url": url, "kind": "auth", "calls": 1,
    }  # fmt: skip
    assert "auth (HTTP 401) from model 'helper'" in helper["message"]
    assert "Check the API key" in helper["message"]
    assert error["remaining"] == {"reasoner": "not tried: the task's max_attempts (2) was reached"}
    assert "the answer step failed on 2 models:" in error["message"]
    assert "1. coder: server_error after 3 calls" in error["message"]
    assert "2. helper: auth after 1 call:" in error["message"]
    assert server.requests_for(REASONING_MODEL) == []
    assert state["attempts"] == 4
    (failed_event,) = events(state, "failed")
    assert failed_event.data["kind"] == "all_models_failed"


# --- 7. stats that outlive the process -----------------------------------------------------


def persistent_config(
    tmp_path: Path, server: LocalModelServer, protocol: str, url: str, suffix: str = ""
) -> tuple[ModelyardConfig, Path]:
    """Return a config whose stats live at `url` (model names get `suffix`), and its file."""
    text = config_text(server.url, protocol=protocol) + f"persistence:\n  url: {url}\n"
    text = text.replace("name: reasoner", f"name: reasoner{suffix}")
    text = text.replace("name: coder", f"name: coder{suffix}")
    path = write_config(tmp_path, text)
    return load_config(path), path


def write_stats_in_a_process(
    config_path: Path, prompt: str, count: int = 1, *extra: str
) -> subprocess.Popen[str]:
    """Start tests/stats_writer.py: a process of its own running `count` tasks."""
    command = [sys.executable, str(WRITER), str(config_path), prompt, "--count", str(count)]
    return subprocess.Popen(
        [*command, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finished(process: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """Wait for a writer; return its tasks' outcomes, failing the test if it failed."""
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


async def stats_in(config: ModelyardConfig) -> dict[str, ModelStats]:
    """Open the config's store afresh and return every model's stats from it."""
    async with open_store(config.persistence) as store:
        return await StatsBook(store, config).snapshot()


@pytest.mark.parametrize("protocol", ["ollama"])  # the store does not depend on the protocol
async def test_stats_written_by_another_process_are_read_back_and_added_to(
    tmp_path: Path, server: LocalModelServer, protocol: str
) -> None:
    config, path = persistent_config(tmp_path, server, protocol, str(tmp_path / "stats.db"))

    outcomes = finished(write_stats_in_a_process(path, CODE_PROMPT, 2))

    assert outcomes == [{"status": "completed", "model": "coder"}] * 2
    stats = await stats_in(config)
    assert (stats["coder"].calls, stats["coder"].successes) == (2, 2)
    assert stats["coder"].input_tokens > 0 and stats["coder"].last_call_at is not None
    assert stats["reasoner"].calls == 0

    # This process adds calls of its own to the same file: a failure and a fallback.
    server.inject_fault(Fault.status_code(401), model=CODING_MODEL, times=1)
    task = await arun_task(CODE_PROMPT, config=config)

    assert task.assigned_model == "reasoner", task.error
    stats = await stats_in(config)
    assert (stats["coder"].calls, stats["coder"].successes) == (3, 2)
    assert stats["coder"].failures_by_kind == {"auth": 1}
    assert (stats["reasoner"].calls, stats["reasoner"].successes) == (1, 1)
    assert len(server.requests_for(CODING_MODEL)) == 3


@pytest.mark.parametrize("protocol", ["ollama"])
async def test_two_processes_writing_at_once_both_count(
    tmp_path: Path, server: LocalModelServer, protocol: str
) -> None:
    config, path = persistent_config(tmp_path, server, protocol, str(tmp_path / "stats.db"))
    await stats_in(config)  # create the file first: opening a new file at once has its own bug
    ready, start = tmp_path / "ready", tmp_path / "start"
    other = write_stats_in_a_process(
        path, CODE_PROMPT, 8, "--at-once", "--ready-file", str(ready), "--start-file", str(start)
    )
    while not ready.exists() and other.poll() is None:
        await asyncio.sleep(0.01)
    start.touch()

    mine = await asyncio.gather(*(arun_task(CODE_PROMPT, config=config) for _ in range(8)))

    assert [t.assigned_model for t in mine] == ["coder"] * 8
    assert finished(other) == [{"status": "completed", "model": "coder"}] * 8
    assert len(server.requests_for(CODING_MODEL)) == 16
    stats = await stats_in(config)
    assert (stats["coder"].calls, stats["coder"].successes) == (16, 16)


async def test_connections_opening_a_new_sqlite_file_at_once_all_get_a_working_store(
    tmp_path: Path,
) -> None:
    """What processes starting together on a new stats file do, without their start-up time."""

    async def open_and_write(path: Path, writer: int) -> None:
        async with open_store(PersistenceSettings(url=str(path))) as store:
            await store.aput(("writers",), str(writer), {"ok": True})

    for attempt in range(5):  # each round is a fresh file, opened by four connections at once
        path = tmp_path / f"new-{attempt}.db"
        results = await asyncio.gather(
            *(open_and_write(path, writer) for writer in range(4)), return_exceptions=True
        )
        assert [r for r in results if isinstance(r, BaseException)] == []
        await open_and_write(path, 4)  # and the file is still usable afterwards


async def test_two_connections_recording_at_once_both_count(tmp_path: Path) -> None:
    """The smallest form of the lost update above: two connections, one success each."""
    config = load_config(write_config(tmp_path, config_text("http://127.0.0.1:9"))).model_copy(
        update={"persistence": PersistenceSettings(url=str(tmp_path / "stats.db"))}
    )
    await stats_in(config)  # create the file before the two connections race
    call = ModelCall(step="answer", model="coder", provider="ollama", latency_ms=10.0)
    async with open_store(config.persistence) as one, open_store(config.persistence) as two:
        await asyncio.gather(
            StatsBook(one, config).record_success(call), StatsBook(two, config).record_success(call)
        )
    stats = await stats_in(config)
    assert stats["coder"].calls == 2


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """The test PostgreSQL database, or a skip saying why it cannot be used."""
    import psycopg

    try:
        conn = await psycopg.AsyncConnection.connect(POSTGRES_URL, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} is unreachable: {str(exc).strip()}")
    await conn.close()
    yield POSTGRES_URL


@pytest.mark.parametrize("protocol", ["openai"])
async def test_stats_written_by_another_process_are_read_back_from_postgres(
    tmp_path: Path, server: LocalModelServer, protocol: str, postgres_url: str
) -> None:
    suffix = f"-{uuid.uuid4().hex[:12]}"  # other runs share the database: names of our own
    config, path = persistent_config(tmp_path, server, protocol, postgres_url, suffix)
    try:
        outcomes = finished(write_stats_in_a_process(path, EXPLAIN_PROMPT, 2))

        assert outcomes == [{"status": "completed", "model": f"reasoner{suffix}"}] * 2
        stats = await stats_in(config)
        assert (stats[f"reasoner{suffix}"].calls, stats[f"reasoner{suffix}"].successes) == (2, 2)
        assert stats[f"coder{suffix}"].calls == 0
        async with open_store(config.persistence) as store:
            item = await store.aget(NAMESPACE, f"reasoner{suffix}")
        assert item is not None and item.value["calls"] == 2
    finally:
        async with open_store(config.persistence) as store:
            await StatsBook(store, config).reset()


# --- 8. failures while streaming -----------------------------------------------------------


def custom_events(parts: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Return the events written to the custom stream."""
    return [chunk for mode, chunk in parts if mode == "custom"]


def streamed_text(parts: list[tuple[str, Any]], model: str) -> str:
    """Return the text one model streamed as message chunks."""
    messages = [chunk for mode, chunk in parts if mode == "messages"]
    return "".join(
        str(message.content)
        for message, metadata in messages
        if metadata.get("modelyard_model") == model
    )


@pytest.mark.parametrize(
    "calls", [pytest.param(3, id="retries-spent"), pytest.param(1, id="retry-off")]
)
async def test_a_stream_cut_after_tokens_falls_back_and_says_so_on_the_custom_stream(
    server: LocalModelServer, server_config: ModelyardConfig, calls: int
) -> None:
    retry = server_config.retry.model_copy(update={"max_attempts": calls})
    runner = Runner(server_config.model_copy(update={"retry": retry}))
    server.script(REASONING_MODEL, ["The reasoner's whole answer, streamed in a few chunks."])
    server.inject_fault(Fault.cut_stream(after_chunks=2), model=CODING_MODEL, times=None)

    parts = await runner.stream(CODE_PROMPT)

    assert len(server.requests_for(CODING_MODEL)) == calls
    (event,) = custom_events(parts)
    assert event["modelyard_event"] == "fallback"
    assert event["detail"] == "coder failed after 2 tokens: connection; continuing on reasoner"
    assert (event["model"], event["next_model"], event["calls"]) == ("coder", "reasoner", calls)
    assert event["streamed_tokens"] == 2
    assert streamed_text(parts, "coder")  # the tokens that came before the cut were streamed
    assert streamed_text(parts, "reasoner") == (
        "The reasoner's whole answer, streamed in a few chunks."
    )
    final = [chunk for mode, chunk in parts if mode == "values"][-1]
    assert final["status"] is TaskStatus.COMPLETED
    assert final["assigned_model"] == "reasoner"


@pytest.mark.parametrize(
    "fault",
    [pytest.param(Fault.status_code(503), id="503"), pytest.param(Fault.cut_stream(0), id="cut-0")],
)
async def test_a_failure_before_the_first_token_falls_back_without_a_custom_event(
    server: LocalModelServer, server_config: ModelyardConfig, fault: Fault
) -> None:
    runner = Runner(server_config)
    server.inject_fault(fault, model=CODING_MODEL, times=None)

    parts = await runner.stream(CODE_PROMPT)

    assert custom_events(parts) == []
    assert streamed_text(parts, "coder") == ""
    assert streamed_text(parts, "reasoner")
    final = [chunk for mode, chunk in parts if mode == "values"][-1]
    assert final["assigned_model"] == "reasoner"
    (fallback,) = events(final, "fallback")
    assert fallback.detail.startswith("coder failed: ")
    assert fallback.data["streamed_tokens"] == 0


async def test_two_postgres_connections_recording_at_once_both_count(
    tmp_path: Path, postgres_url: str
) -> None:
    """Updates through two connections to one PostgreSQL store are serialised, not lost."""
    name = f"coder-{uuid.uuid4().hex[:12]}"
    text = config_text("http://127.0.0.1:9").replace("name: coder", f"name: {name}")
    config = load_config(write_config(tmp_path, text)).model_copy(
        update={"persistence": PersistenceSettings(url=postgres_url)}
    )
    call = ModelCall(step="answer", model=name, provider="ollama", latency_ms=10.0)
    async with open_store(config.persistence) as one, open_store(config.persistence) as two:
        books = [StatsBook(one, config), StatsBook(two, config)]
        try:
            await asyncio.gather(*(books[i % 2].record_success(call) for i in range(20)))
            assert (await books[0].get(name)).calls == 20
        finally:
            await books[0].reset([name])
