"""Protocol tests: the real ChatOllama and ChatOpenAI clients over HTTP to the local server."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from support import CODING_MODEL, REASONING_MODEL, config_text, write_config

from modelyard.configs import ModelRegistry, ModelyardConfig, load_config
from modelyard.graphs import build_plan_and_implement_graph, build_route_graph
from modelyard.nodes import Context
from modelyard.state import ConfigError, TaskContext, TaskStatus
from modelyard.testing.server import Fault, LocalModelServer

pytestmark = pytest.mark.protocol

EMAIL_PROMPT = "Write a Python function that validates email addresses"
HASH_PROMPT = "Explain how a hash table works"


async def run(
    config: ModelyardConfig, task: dict[str, Any], *, plan: bool = False
) -> dict[str, Any]:
    builder = build_plan_and_implement_graph if plan else build_route_graph
    graph = builder(config).compile()
    return await graph.ainvoke(task, context=Context(config=config))


def chat_requests(server: LocalModelServer) -> list[Any]:
    return [r for r in server.requests if r.path in ("/api/chat", "/v1/chat/completions")]


@pytest.mark.parametrize(
    ("prompt", "model", "model_id"),
    [(EMAIL_PROMPT, "coder", CODING_MODEL), (HASH_PROMPT, "reasoner", REASONING_MODEL)],
)
async def test_route_picks_the_model_for_the_task_over_http(
    server: LocalModelServer, server_config: ModelyardConfig, protocol: str, prompt: str,
    model: str, model_id: str,
) -> None:  # fmt: skip
    server.script(model_id, ["scripted answer from " + model_id])

    state = await run(server_config, {"prompt": prompt})

    assert state["status"] is TaskStatus.COMPLETED
    assert state["assigned_model"] == model
    assert state["result"] == "scripted answer from " + model_id
    (request,) = chat_requests(server)
    assert request.model == model_id
    assert request.protocol == protocol
    assert request.path == ("/api/chat" if protocol == "ollama" else "/v1/chat/completions")
    call = state["calls"][0]
    assert call.input_tokens > 0 and call.output_tokens > 0


async def test_generation_options_reach_the_server(
    server: LocalModelServer, server_config: ModelyardConfig, protocol: str
) -> None:
    await run(server_config, {"prompt": EMAIL_PROMPT})
    (request,) = chat_requests(server)
    body = request.body
    assert body is not None
    if protocol == "ollama":
        assert body["options"] == {
            "temperature": 0.35, "top_p": 0.95, "frequency_penalty": 0.1,
            "presence_penalty": 0.1, "num_predict": 4096,
            "num_ctx": 16384,  # the context window, so Ollama does not cut the prompt
        }  # fmt: skip
    else:
        assert body["temperature"] == 0.35 and body["top_p"] == 0.95
        assert body["frequency_penalty"] == 0.1 and body["presence_penalty"] == 0.1
        assert 4096 in (body.get("max_tokens"), body.get("max_completion_tokens"))
    # Nobody streams this run's tokens: neither client streams over the wire.
    assert request.stream is False
    assert body["messages"][0]["role"] == "system"


async def test_a_task_can_override_generation_options(
    server: LocalModelServer, server_config: ModelyardConfig, protocol: str
) -> None:
    task = {"prompt": EMAIL_PROMPT, "context": TaskContext(options={"temperature": 0.05})}
    await run(server_config, task)
    body = chat_requests(server)[0].body or {}
    temperature = body["options"]["temperature"] if protocol == "ollama" else body["temperature"]
    assert temperature == 0.05


async def test_ollama_only_options_go_to_ollama_and_as_extra_body_to_compatible_servers(
    tmp_path: Path, server: LocalModelServer, protocol: str
) -> None:
    extra = ", top_k: 40, min_p: 0.05, num_ctx: 2048, mirostat: 2"
    path = write_config(tmp_path, config_text(server.url, protocol=protocol, reasoner_extra=extra))
    await run(load_config(path), {"prompt": HASH_PROMPT})
    body = chat_requests(server)[0].body or {}
    carrier = body["options"] if protocol == "ollama" else body
    assert carrier["top_k"] == 40 and carrier["min_p"] == 0.05
    assert carrier["num_ctx"] == 2048 and carrier["mirostat"] == 2


async def test_tokens_stream_over_http_with_step_and_model(
    server: LocalModelServer, server_config: ModelyardConfig
) -> None:
    reply = "A hash table stores values in buckets chosen by hashing the key."
    server.script(REASONING_MODEL, [reply])
    graph = build_route_graph(server_config).compile()
    pieces: list[str] = []
    async for message, metadata in graph.astream(
        {"prompt": HASH_PROMPT}, context=Context(config=server_config), stream_mode="messages"
    ):
        assert metadata["modelyard_model"] == "reasoner"
        assert metadata["modelyard_step"] == "answer"
        pieces.append(str(message.content))
    assert "".join(pieces) == reply
    assert len([p for p in pieces if p]) >= 3
    assert [r.stream for r in chat_requests(server)] == [True]


async def test_plan_then_implement_over_http(
    server: LocalModelServer, server_config: ModelyardConfig
) -> None:
    server.script(REASONING_MODEL, ["1. Read the file\n2. Count the words"])
    server.script(CODING_MODEL, ["def count_words(path): ..."])

    state = await run(server_config, {"prompt": "Build a word counter"}, plan=True)

    assert state["plan"] == "1. Read the file\n2. Count the words"
    assert state["implementation"] == "def count_words(path): ..."
    first, second = chat_requests(server)
    assert (first.model, second.model) == (REASONING_MODEL, CODING_MODEL)
    implement_prompt = json.dumps((second.body or {})["messages"])
    assert "Count the words" in implement_prompt and "Build a word counter" in implement_prompt


async def test_model_override_over_http(
    server: LocalModelServer, server_config: ModelyardConfig
) -> None:
    state = await run(server_config, {"prompt": EMAIL_PROMPT, "model": "reasoner"})
    assert state["assigned_model"] == "reasoner"
    assert [r.model for r in chat_requests(server)] == [REASONING_MODEL]


@pytest.mark.parametrize(
    "fault",
    [Fault.status_code(429, retry_after=0.01), Fault.status_code(500), Fault.status_code(503),
     Fault.malformed(), Fault.cut_stream(after_chunks=2)],
    ids=["429", "500", "503", "malformed", "cut-stream"],
)  # fmt: skip
async def test_a_transient_fault_is_retried_then_answered(
    server: LocalModelServer, server_config: ModelyardConfig, fault: Fault
) -> None:
    server.script(CODING_MODEL, ["the real answer"])
    server.inject_fault(fault, model=CODING_MODEL, times=1)

    state = await run(server_config, {"prompt": EMAIL_PROMPT})

    assert state["status"] is TaskStatus.COMPLETED, state.get("error")
    assert state["result"] == "the real answer"
    assert state["attempts"] == 2
    assert len(chat_requests(server)) == 2


@pytest.mark.parametrize(
    ("fault", "kind", "calls"),
    [
        (Fault.status_code(503), "server_error", 3),
        (Fault.status_code(429, retry_after=0.01), "rate_limited", 3),
        (Fault.status_code(400), "bad_request", 1),
        (Fault.status_code(401), "auth", 1),
        (Fault.malformed(), "malformed_response", 3),
        (Fault.cut_stream(after_chunks=1), "connection", 3),
    ],
    ids=["503", "429", "400", "401", "malformed", "cut-stream"],
)
async def test_a_fault_on_every_model_fails_the_task_listing_each_attempt(
    server: LocalModelServer, server_config: ModelyardConfig, fault: Fault, kind: str, calls: int
) -> None:
    server.inject_fault(fault, times=None)

    state = await run(server_config, {"prompt": EMAIL_PROMPT})

    assert state["status"] is TaskStatus.FAILED
    error = state["error"]
    assert error["kind"] == "all_models_failed"
    attempts = error["attempts"]
    assert [(a["model"], a["kind"], a["calls"]) for a in attempts] == [
        ("coder", kind, calls),
        ("reasoner", kind, calls),
    ]
    for attempt in attempts:
        assert attempt["url"].startswith(server.url)
        assert server.url in attempt["message"]
    assert [r.model for r in chat_requests(server)] == [CODING_MODEL] * calls + [
        REASONING_MODEL
    ] * calls


async def test_a_hanging_server_times_out(
    tmp_path: Path, server: LocalModelServer, protocol: str
) -> None:
    config = load_config(
        write_config(tmp_path, config_text(server.url, protocol=protocol, timeout=0.3))
    )
    server.inject_fault(Fault.hang(), model=CODING_MODEL, times=None)
    try:
        state = await run(config, {"prompt": EMAIL_PROMPT, "model": "coder"})
    finally:
        server.clear_faults()
    (attempt,) = state["error"]["attempts"]
    assert attempt["kind"] == "timeout"
    assert "no answer within 0.3 s" in attempt["message"]
    assert "Raise `timeout`" in attempt["message"]


async def test_a_model_the_server_lacks_is_not_found_with_a_pull_hint(
    server: LocalModelServer, server_config: ModelyardConfig, protocol: str
) -> None:
    server.remove_model(CODING_MODEL)
    server.pullable = False  # auto_pull is on for Ollama models; the pull fails
    state = await run(server_config, {"prompt": EMAIL_PROMPT})
    assert state["assigned_model"] == "reasoner"  # fell back
    (failed,) = state["failures"]
    assert failed.kind == "not_found"
    assert [r.model for r in chat_requests(server)] == [REASONING_MODEL]  # checked, not called
    if protocol == "ollama":
        assert f"ollama pull {CODING_MODEL}" in failed.message


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_server_that_is_down_gives_the_url_and_how_to_start_it(
    tmp_path: Path, protocol: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    config = load_config(write_config(tmp_path, config_text(url, protocol=protocol)))
    state = await run(config, {"prompt": HASH_PROMPT})
    error = state["error"]
    assert [a["kind"] for a in error["attempts"]] == ["connection", "connection"]
    message = error["attempts"][0]["message"]
    assert url in message
    if protocol == "ollama":
        assert "ollama serve" in message
    else:
        assert "Is the server at" in message


def test_one_registry_serves_several_event_loops(
    server: LocalModelServer, server_config: ModelyardConfig
) -> None:
    context = Context(registry=ModelRegistry(server_config))
    graph = build_route_graph(server_config).compile()
    for _ in range(3):
        state = asyncio.run(graph.ainvoke({"prompt": EMAIL_PROMPT}, context=context))
        assert state["status"] is TaskStatus.COMPLETED, state.get("error")
    assert len(chat_requests(server)) == 3


async def test_concurrent_tasks_share_the_clients(
    server: LocalModelServer, server_config: ModelyardConfig
) -> None:
    context = Context(registry=ModelRegistry(server_config))
    graph = build_route_graph(server_config).compile()
    prompts = [EMAIL_PROMPT, HASH_PROMPT] * 5
    states = await asyncio.gather(*(graph.ainvoke({"prompt": p}, context=context) for p in prompts))
    assert [s["assigned_model"] for s in states] == ["coder", "reasoner"] * 5
    assert len(chat_requests(server)) == 10


async def test_api_keys_never_reach_the_state_or_errors(
    tmp_path: Path, server: LocalModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_TEST_KEY", "sk-very-secret-123")
    text = config_text(server.url, protocol="openai").replace(
        "    timeout:", "    api_key: ${MODELYARD_TEST_KEY}\n    timeout:", 1
    )
    config = load_config(write_config(tmp_path, text))
    assert config.models[0].api_key is not None
    assert config.models[0].api_key.get_secret_value() == "sk-very-secret-123"
    server.inject_fault(Fault.status_code(401), model=REASONING_MODEL, times=1)
    failed = await run(config, {"prompt": HASH_PROMPT})
    answered = await run(config, {"prompt": HASH_PROMPT})
    assert failed["failures"][0].kind == "auth"
    assert answered["status"] is TaskStatus.COMPLETED
    for text_seen in (repr(failed), repr(answered), repr(config), config.model_dump_json()):
        assert "sk-very-secret-123" not in text_seen


async def test_a_key_written_into_the_file_is_refused(
    tmp_path: Path, server: LocalModelServer
) -> None:
    text = config_text(server.url, protocol="openai").replace(
        "    timeout:", "    api_key: sk-literal-456\n    timeout:", 1
    )
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, text))
    assert "never from the file" in str(info.value)
    assert "sk-literal-456" not in str(info.value)
