"""Model checks and auto-pull: each model against what its server has, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from langgraph.store.memory import InMemoryStore
from support import CODING_MODEL, REASONING_MODEL, config_text, write_config
from support import run_modelyard as modelyard

from modelyard.configs import (
    ModelRegistry,
    ModelyardConfig,
    PullProgress,
    check_configured_models,
    load_config,
)
from modelyard.graphs import build_route_graph
from modelyard.nodes import Context, StatsBook
from modelyard.state import ConfigError, MissingModel, ModelNotOnServerError, TaskStatus
from modelyard.testing.scripted import ScriptedChatModel
from modelyard.testing.server import LocalModelServer

pytestmark = pytest.mark.protocol

CODE_PROMPT = "Write a Python function that validates email addresses"


@pytest.fixture
def lacking_coder() -> Any:
    """A local server that has the reasoner's model but not the coder's."""
    with LocalModelServer([REASONING_MODEL]) as running:
        running.script(REASONING_MODEL, ["the reasoner's answer"])
        yield running


def build_config(
    tmp_path: Path, url: str, protocol: str = "ollama", *, coder: str = "", extra: str = ""
) -> ModelyardConfig:
    """Return the two-model config at `url`, with `coder` lines added to the coder's entry."""
    text = config_text(url, protocol=protocol)
    if coder:
        text = text.replace("  - name: coder\n", f"  - name: coder\n    {coder}\n")
    return load_config(write_config(tmp_path, text + extra))


class Runner:
    """Runs tasks on one route graph, one stats store and one registry."""

    def __init__(self, config: ModelyardConfig, **clients: Any) -> None:
        self.store = InMemoryStore()
        self.graph = build_route_graph(config).compile(store=self.store)
        self.registry = ModelRegistry(config, clients=clients or None)
        self.context = Context(registry=self.registry)
        self.config = config

    async def run(self, prompt: str = CODE_PROMPT, **task: Any) -> dict[str, Any]:
        return await self.graph.ainvoke({"prompt": prompt, **task}, context=self.context)

    async def custom_events(self, prompt: str = CODE_PROMPT, **task: Any) -> list[Any]:
        """Run a task; return the custom stream events it emitted."""
        found = []
        async for chunk in self.graph.astream(
            {"prompt": prompt, **task}, context=self.context, stream_mode="custom"
        ):
            found.append(chunk)
        return found


def paths(server: LocalModelServer, *wanted: str) -> list[str]:
    return [r.path for r in server.requests if r.path in wanted]


def chat_models(server: LocalModelServer) -> list[str | None]:
    chat = ("/api/chat", "/v1/chat/completions")
    return [r.model for r in server.requests if r.path in chat]


def free_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


# --- an override naming a model its server lacks ------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "listing", "server_words", "advice"),
    [
        ("ollama", "/api/tags", "the Ollama server", f"ollama pull {CODING_MODEL}"),
        ("openai", "/v1/models", "the OpenAI-compatible server", "LM Studio: load the model"),
    ],
)
async def test_an_override_the_server_lacks_fails_naming_the_server_and_what_it_has(
    tmp_path: Path, lacking_coder: LocalModelServer, protocol: str, listing: str,
    server_words: str, advice: str,
) -> None:  # fmt: skip
    coder = "auto_pull: false" if protocol == "ollama" else ""
    runner = Runner(build_config(tmp_path, lacking_coder.url, protocol, coder=coder))

    state = await runner.run(model="coder")

    assert state["status"] is TaskStatus.FAILED
    message = state["error"]["message"]
    url = lacking_coder.url if protocol == "ollama" else lacking_coder.openai_url
    assert f"not_found from model 'coder' at {url}: " in message
    assert f"{server_words} has no model '{CODING_MODEL}'; it has: {REASONING_MODEL}" in message
    assert advice in message
    assert "reasoner: the caller asked for coder only" in message
    (attempt,) = state["error"]["attempts"]
    assert (attempt["model"], attempt["kind"]) == ("coder", "not_found")
    assert chat_models(lacking_coder) == []  # the check failed it before any call
    assert paths(lacking_coder, "/api/tags", "/v1/models", "/api/pull") == [listing]


async def test_an_ollama_override_says_how_to_turn_auto_pull_on(
    tmp_path: Path, lacking_coder: LocalModelServer
) -> None:
    runner = Runner(build_config(tmp_path, lacking_coder.url, coder="auto_pull: false"))
    message = (await runner.run(model="coder"))["error"]["message"]
    assert "set `auto_pull: true` on model 'coder' in the config" in message


# --- a routed model its server lacks ------------------------------------------------------


async def test_a_routed_model_the_server_lacks_falls_back_and_counts_as_not_found(
    tmp_path: Path, lacking_coder: LocalModelServer, protocol: str
) -> None:
    coder = "auto_pull: false" if protocol == "ollama" else ""
    runner = Runner(build_config(tmp_path, lacking_coder.url, protocol, coder=coder))

    state = await runner.run()  # a code task: the coder is selected first

    assert state["status"] is TaskStatus.COMPLETED, state.get("error")
    assert (state["assigned_model"], state["result"]) == ("reasoner", "the reasoner's answer")
    (failed,) = state["failures"]
    assert (failed.model, failed.kind) == ("coder", "not_found")
    assert f"it has: {REASONING_MODEL}" in failed.message
    assert chat_models(lacking_coder) == [REASONING_MODEL]
    coder_stats = await StatsBook(runner.store, runner.config).get("coder")
    assert coder_stats.failures_by_kind == {"not_found": 1}


# --- auto-pull ---------------------------------------------------------------------------


async def test_a_missing_ollama_model_is_pulled_once_for_concurrent_tasks(
    tmp_path: Path, lacking_coder: LocalModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    lacking_coder.chunk_delay = 0.05  # the pull takes a while: every task finds it under way
    lacking_coder.reply = lambda model, messages: f"{model}'s answer"  # once it is pulled
    runner = Runner(build_config(tmp_path, lacking_coder.url))  # auto_pull unset: on
    seen: list[PullProgress] = []
    runner.registry.server_models.add_listener(seen.append)
    caplog.set_level(logging.INFO, logger="modelyard.pull")

    states = await asyncio.gather(*(runner.run() for _ in range(4)))

    assert [s["status"] for s in states] == [TaskStatus.COMPLETED] * 4
    assert {(s["assigned_model"], s["result"]) for s in states} == {
        ("coder", f"{CODING_MODEL}'s answer")
    }
    assert all(not s.get("failures") for s in states)
    pulls = [r for r in lacking_coder.requests if r.path == "/api/pull"]
    assert len(pulls) == 1
    assert pulls[0].body == {"model": CODING_MODEL, "stream": True}
    assert paths(lacking_coder, "/api/tags") == ["/api/tags"]  # asked once
    assert CODING_MODEL in lacking_coder.models
    assert seen[0].status == "pulling manifest" and seen[-1].status == "success"
    assert {(p.model, p.model_id, p.url) for p in seen} == {
        ("coder", CODING_MODEL, lacking_coder.url)
    }
    sized = [p for p in seen if p.total]
    assert sized and sized[-1].completed == sized[-1].total
    assert "pull coder (deepseek-coder:6.7b-instruct)" in caplog.text
    assert "success" in caplog.text


async def test_each_task_waiting_for_a_pull_sees_its_progress_on_its_own_stream(
    tmp_path: Path, lacking_coder: LocalModelServer
) -> None:
    lacking_coder.chunk_delay = 0.05
    runner = Runner(build_config(tmp_path, lacking_coder.url))

    streams = await asyncio.gather(*(runner.custom_events(model="coder") for _ in range(3)))

    assert len(paths(lacking_coder, "/api/pull")) == 1
    for events in streams:
        pulls = [e for e in events if e.get("modelyard_event") == "pull"]
        assert pulls[-1]["status"] == "success"
        assert pulls[-1]["model"] == "coder" and pulls[-1]["url"] == lacking_coder.url
        assert "pull coder (deepseek-coder:6.7b-instruct)" in pulls[-1]["detail"]


async def test_a_failed_pull_fails_the_task_clearly(
    tmp_path: Path, lacking_coder: LocalModelServer
) -> None:
    lacking_coder.pullable = False
    runner = Runner(build_config(tmp_path, lacking_coder.url))

    state = await runner.run(model="coder")

    assert state["status"] is TaskStatus.FAILED
    message = state["error"]["message"]
    assert f"at {lacking_coder.url}: the Ollama server has no model '{CODING_MODEL}'" in message
    assert f"it has: {REASONING_MODEL}; pulling it failed: " in message
    assert "pull model manifest: file does not exist" in message
    assert "https://ollama.com/library" in message and f"ollama pull {CODING_MODEL}" in message
    assert len(paths(lacking_coder, "/api/pull")) == 1
    assert chat_models(lacking_coder) == []


async def test_a_model_pulled_by_hand_is_found_once_the_listing_is_old(
    tmp_path: Path, lacking_coder: LocalModelServer
) -> None:
    runner = Runner(build_config(tmp_path, lacking_coder.url, coder="auto_pull: false"))
    assert (await runner.run(model="coder"))["status"] is TaskStatus.FAILED

    lacking_coder.add_model(CODING_MODEL)  # `ollama pull` by hand
    assert (await runner.run(model="coder"))["status"] is TaskStatus.FAILED  # listing is fresh
    runner.registry.server_models.refresh_seconds = 0.0
    state = await runner.run(model="coder")

    assert state["status"] is TaskStatus.COMPLETED, state.get("error")
    assert paths(lacking_coder, "/api/tags") == ["/api/tags"] * 2


async def test_a_model_removed_after_its_check_is_pulled_again_after_a_not_found(
    tmp_path: Path, lacking_coder: LocalModelServer
) -> None:
    lacking_coder.add_model(CODING_MODEL)
    runner = Runner(build_config(tmp_path, lacking_coder.url))
    runner.registry.server_models.refresh_seconds = 0.0
    assert (await runner.run())["assigned_model"] == "coder"

    lacking_coder.remove_model(CODING_MODEL)
    fell_back = await runner.run()  # the chat call answers 404: fall back, check again later
    pulled = await runner.run()

    assert fell_back["assigned_model"] == "reasoner"
    assert fell_back["failures"][0].kind == "not_found"
    assert pulled["assigned_model"] == "coder" and not pulled.get("failures")
    assert len(paths(lacking_coder, "/api/pull")) == 1


async def test_a_model_found_is_not_asked_about_again(
    tmp_path: Path, lacking_coder: LocalModelServer, protocol: str
) -> None:
    lacking_coder.add_model(CODING_MODEL)
    runner = Runner(build_config(tmp_path, lacking_coder.url, protocol))
    runner.registry.server_models.refresh_seconds = 0.0

    for _ in range(3):
        assert (await runner.run())["status"] is TaskStatus.COMPLETED

    listing = "/api/tags" if protocol == "ollama" else "/v1/models"
    assert paths(lacking_coder, "/api/tags", "/v1/models") == [listing]


async def test_scripted_models_are_not_checked(tmp_path: Path) -> None:
    with LocalModelServer([]) as empty:
        runner = Runner(
            build_config(tmp_path, empty.url, coder="auto_pull: false"),
            coder=ScriptedChatModel(name_for_echo="coder"),
        )
        state = await runner.run(model="coder")
        assert state["status"] is TaskStatus.COMPLETED, state.get("error")
        assert empty.requests == []


async def test_a_server_that_cannot_be_asked_leaves_the_call_to_say_what_is_wrong(
    tmp_path: Path,
) -> None:
    url = free_url()
    runner = Runner(build_config(tmp_path, url))
    state = await runner.run(model="coder")
    (attempt,) = state["error"]["attempts"]
    assert attempt["kind"] == "connection"
    assert "ollama serve" in attempt["message"]


# --- the start-up check ------------------------------------------------------------------

HELPER_AT = """\
  - name: helper
    model: ollama:llama3
    base_url: {url}
    roles: [general]
"""


async def test_the_start_up_check_raises_listing_every_model_that_cannot_be_pulled(
    tmp_path: Path, lacking_coder: LocalModelServer
) -> None:
    lacking_coder.remove_model(REASONING_MODEL)
    lacking_coder.add_model("qwen2.5:7b")
    config = build_config(tmp_path, lacking_coder.url, coder="auto_pull: false")
    config.models[0].auto_pull = False
    registry = ModelRegistry(config)

    with pytest.raises(ModelNotOnServerError) as raised:
        await check_configured_models(registry)

    message = str(raised.value)
    assert message.startswith("2 configured models are not on their servers:\n1. ")
    assert f"1. model 'reasoner' at {lacking_coder.url}: " in message
    assert f"2. model 'coder' at {lacking_coder.url}: " in message
    assert "it has: qwen2.5:7b" in message
    assert [m.name for m in raised.value.missing] == ["reasoner", "coder"]
    assert paths(lacking_coder, "/api/tags", "/api/pull") == ["/api/tags"]  # one per server


async def test_the_start_up_check_reports_unreachable_servers_and_pulls_nothing(
    tmp_path: Path, lacking_coder: LocalModelServer
) -> None:
    down = free_url()
    text = config_text(lacking_coder.url)
    text = text.replace("retry:\n", HELPER_AT.format(url=down) + "retry:\n")
    config = load_config(write_config(tmp_path, text))
    registry = ModelRegistry(config)

    found = {a.model: a for a in await check_configured_models(registry)}

    assert (found["reasoner"].reachable, found["reasoner"].available) == (True, True)
    assert (found["coder"].reachable, found["coder"].available) == (True, False)
    assert "pulled before the first task that needs it" in found["coder"].detail
    assert (found["helper"].reachable, found["helper"].available) == (False, None)
    assert "cannot reach" in found["helper"].detail
    assert paths(lacking_coder, "/api/tags", "/api/pull") == ["/api/tags"]

    await registry.server_models.ensure("reasoner")  # kept from the start-up check
    assert paths(lacking_coder, "/api/tags", "/api/pull") == ["/api/tags"]


def test_the_not_on_server_error_survives_pickling_lists_twenty_and_spots_typos() -> None:
    available = tuple(f"model-{i:02}" for i in range(25))
    missing = MissingModel("coder", "phi3:mini", "http://h:1", "ollama", available)
    error = pickle.loads(pickle.dumps(ModelNotOnServerError([missing])))
    assert str(error) == str(ModelNotOnServerError([missing]))
    assert "model-19 and 5 more" in str(error) and "model-20" not in str(error)
    typo = MissingModel("coder", "phi3:mni", "http://h:1", "ollama", ("llama3:8b", "phi3:mini"))
    assert "it has: llama3:8b, phi3:mini (did you mean 'phi3:mini'?)" in str(typo)


# --- the config ---------------------------------------------------------------------------


def test_auto_pull_is_on_for_ollama_models_unless_turned_off(tmp_path: Path) -> None:
    ollama = build_config(tmp_path, "http://h:1", coder="auto_pull: false")
    compatible = build_config(tmp_path, "http://h:1", "openai")
    assert [m.pulls_missing for m in ollama.models] == [True, False]
    assert [m.pulls_missing for m in compatible.models] == [False, False]


def test_auto_pull_on_an_openai_compatible_model_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        build_config(tmp_path, "http://h:1", "openai", coder="auto_pull: true")
    (problem,) = raised.value.problems
    assert problem.path == "models[1].auto_pull"
    assert problem.message.startswith("auto_pull works with Ollama models only")
    assert "'openai_compatible'" in problem.message and "(got" not in problem.message


# --- the CLI ------------------------------------------------------------------------------


@pytest.mark.cli
@pytest.mark.parametrize("json_output", [False, True], ids=["stream", "json"])
def test_modelyard_run_shows_the_pull_on_stderr(
    tmp_path: Path, lacking_coder: LocalModelServer, json_output: bool
) -> None:
    lacking_coder.reply = lambda model, messages: "def validate(address): ..."
    flags = ["--json"] if json_output else []

    result = modelyard("run", *flags, "-m", "coder", CODE_PROMPT, ollama=lacking_coder.url,
                       db=tmp_path / "stats.db")  # fmt: skip

    assert result.returncode == 0, result.stderr
    heading = f"pulling coder ({CODING_MODEL}) into {lacking_coder.url}"
    assert f"↓ {heading}: pulling manifest" in result.stderr
    assert re.search(rf"↓ {re.escape(heading)}: pulling [0-9a-f]{{12}} \(1\.0 GB\)", result.stderr)
    assert f"✓ pulled coder ({CODING_MODEL})" in result.stderr
    answer = json.loads(result.stdout)["content"] if json_output else result.stdout.strip()
    assert answer == "def validate(address): ..."
    assert len(paths(lacking_coder, "/api/pull")) == 1


@pytest.mark.cli
def test_modelyard_run_exits_1_when_the_pull_fails(
    tmp_path: Path, lacking_coder: LocalModelServer
) -> None:
    lacking_coder.pullable = False
    result = modelyard("run", "-m", "coder", CODE_PROMPT, ollama=lacking_coder.url,
                       db=tmp_path / "stats.db")  # fmt: skip
    assert result.returncode == 1
    assert f"has no model '{CODING_MODEL}'; it has: {REASONING_MODEL}" in result.stderr
    assert "Traceback" not in result.stderr
