"""Protocol tests for the local Ollama/OpenAI-compatible server, over real HTTP and real clients."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI

from modelyard.testing.server import Fault, LocalModelServer, RecordedRequest

pytestmark = pytest.mark.protocol

SCRIPTED = "The quick brown fox jumps over the lazy dog and then takes a long nap."


@pytest.fixture
def server() -> Iterator[LocalModelServer]:
    srv = LocalModelServer(["phi3:mini", "coder"]).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def http(server: LocalModelServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def ollama_chat(server: LocalModelServer, model: str = "phi3:mini", **kwargs: Any) -> ChatOllama:
    return ChatOllama(model=model, base_url=server.url, **kwargs)


def openai_chat(server: LocalModelServer, model: str = "coder", **kwargs: Any) -> ChatOpenAI:
    kwargs.setdefault("max_retries", 0)
    return ChatOpenAI(
        model=model,
        base_url=server.openai_url,
        api_key="x",  # type: ignore[arg-type]
        use_responses_api=False,
        stream_usage=True,
        **kwargs,
    )


def chat_body(model: str, text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def sse(response: httpx.Response) -> list[str]:
    return [
        line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data:")
    ]


def collect(stream: Iterator[AIMessageChunk]) -> tuple[list[str], BaseException | None]:
    """Drain a client stream, returning the texts seen and the exception that ended it, if any."""
    texts: list[str] = []
    try:
        for chunk in stream:
            texts.append(str(chunk.content))
    except Exception as exc:
        return texts, exc
    return texts, None


# -- plain HTTP: Ollama endpoints ------------------------------------------------------------


def test_root_and_version(http: httpx.Client) -> None:
    assert http.get("/").text == "Ollama is running"
    assert http.get("/api/version").json() == {"version": "0.0.0-modelyard"}


def test_tags_lists_models_with_details(http: httpx.Client) -> None:
    models = http.get("/api/tags").json()["models"]
    assert [m["name"] for m in models] == ["phi3:mini", "coder"]
    first = models[0]
    assert first["model"] == "phi3:mini"
    assert first["digest"].startswith("sha256:")
    assert isinstance(first["size"], int) and first["size"] > 0
    assert first["details"]["format"] == "gguf"
    with ollama.Client(host=str(http.base_url)) as client:
        assert client.list().models[1].model == "coder"


def test_show_known_model_reports_context_length(
    server: LocalModelServer, http: httpx.Client
) -> None:
    server.add_model("big:ctx", context_length=32768)
    info = http.post("/api/show", json={"model": "big:ctx"}).json()
    assert info["model_info"]["llama.context_length"] == 32768
    assert info["model_info"]["general.architecture"] == "llama"
    assert info["capabilities"] == ["completion"]
    assert set(info["details"]) >= {"format", "family", "parameter_size", "quantization_level"}
    assert http.post("/api/show", json={"name": "phi3:mini"}).status_code == 200


def test_show_unknown_model_is_404(http: httpx.Client) -> None:
    response = http.post("/api/show", json={"model": "missing"})
    assert response.status_code == 404
    assert "missing" in response.json()["error"]


def test_pull_streams_progress_then_model_is_listed(http: httpx.Client) -> None:
    response = http.post("/api/pull", json={"model": "llama3:8b"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = ndjson(response)
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = [line for line in lines if "digest" in line]
    assert len(layers) >= 2 and layers[-1]["completed"] == layers[-1]["total"]
    names = [m["name"] for m in http.get("/api/tags").json()["models"]]
    assert "llama3:8b" in names


def test_pull_without_stream_and_by_name(server: LocalModelServer, http: httpx.Client) -> None:
    response = http.post("/api/pull", json={"name": "tiny", "stream": False})
    assert response.json() == {"status": "success"}
    assert "tiny" in server.models


def test_pull_refused_when_not_pullable() -> None:
    with LocalModelServer(["a"], pullable=False) as srv:
        response = httpx.post(srv.url + "/api/pull", json={"model": "b"})
        assert response.status_code == 404
        assert response.json() == {"error": "pull model manifest: file does not exist"}
        assert srv.models == ["a"]
        with ollama.Client(host=srv.url) as client, pytest.raises(ollama.ResponseError) as info:
            client.pull("b")
        assert info.value.status_code == 404


def test_ollama_chat_stream_is_ndjson_with_final_counts(
    server: LocalModelServer, http: httpx.Client
) -> None:
    server.script("phi3:mini", [SCRIPTED])
    response = http.post("/api/chat", json=chat_body("phi3:mini"))  # stream defaults to true
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert response.headers["transfer-encoding"] == "chunked"
    lines = ndjson(response)
    assert len(lines) > 3
    assert all(not line["done"] for line in lines[:-1])
    assert "".join(line["message"]["content"] for line in lines) == SCRIPTED
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int)
    assert final["prompt_eval_count"] >= 1 and final["eval_count"] >= 1


def test_ollama_chat_without_stream(server: LocalModelServer, http: httpx.Client) -> None:
    server.script("phi3:mini", ["whole answer"])
    data = http.post("/api/chat", json=chat_body("phi3:mini", stream=False)).json()
    assert data["message"] == {"role": "assistant", "content": "whole answer"}
    assert data["done"] is True and data["model"] == "phi3:mini"
    assert data["eval_count"] >= 1


def test_model_tag_latest_is_optional(server: LocalModelServer, http: httpx.Client) -> None:
    server.add_model("llama3:latest", replies=["from latest"])
    data = http.post("/api/chat", json=chat_body("llama3", stream=False)).json()
    assert data["message"]["content"] == "from latest"


# -- plain HTTP: OpenAI endpoints ------------------------------------------------------------


def test_openai_models_list(server: LocalModelServer, http: httpx.Client) -> None:
    data = http.get("/v1/models").json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["phi3:mini", "coder"]
    assert all(m["object"] == "model" and m["owned_by"] == "modelyard-local" for m in data["data"])
    with openai.OpenAI(base_url=server.openai_url, api_key="x") as client:
        models = client.models.list()
    assert [m.id for m in models] == ["phi3:mini", "coder"]


def test_openai_completion_shape(server: LocalModelServer, http: httpx.Client) -> None:
    server.script("coder", ["def f(): pass"])
    data = http.post("/v1/chat/completions", json=chat_body("coder")).json()
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-")
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "def f(): pass"}
    assert data["choices"][0]["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_openai_sse_stream_with_usage(server: LocalModelServer, http: httpx.Client) -> None:
    server.script("coder", [SCRIPTED])
    body = chat_body("coder", stream=True, stream_options={"include_usage": True})
    response = http.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == SCRIPTED
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


def test_openai_sse_stream_without_usage(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json=chat_body("coder", stream=True))
    chunks = [json.loads(e) for e in sse(response)[:-1]]
    assert all(c["choices"] and "usage" not in c for c in chunks)


def test_content_parts_are_flattened(server: LocalModelServer, http: httpx.Client) -> None:
    seen: list[list[dict[str, Any]]] = []

    def record(model: str, messages: list[dict[str, Any]]) -> str:
        seen.append(messages)
        return "ok"

    server.script("coder", record)
    parts = [{"type": "text", "text": "first part"}, {"type": "text", "text": "second"}]
    body = {"model": "coder", "messages": [{"role": "user", "content": parts}]}
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    assert seen[0] == [{"role": "user", "content": "first part\nsecond"}]


# -- real LangChain clients ------------------------------------------------------------------


def test_chat_ollama_invoke_returns_script_and_usage(server: LocalModelServer) -> None:
    server.script("phi3:mini", [SCRIPTED])
    message = ollama_chat(server).invoke("Say something")
    assert message.content == SCRIPTED
    assert message.usage_metadata is not None
    assert message.usage_metadata["input_tokens"] >= 1
    assert message.usage_metadata["output_tokens"] >= 1


def test_chat_ollama_stream_concatenates_to_script(server: LocalModelServer) -> None:
    server.script("phi3:mini", [SCRIPTED])
    chunks = list(ollama_chat(server).stream("Say something"))
    assert len([c for c in chunks if c.content]) > 2
    assert "".join(str(c.content) for c in chunks) == SCRIPTED
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.usage_metadata is not None and merged.usage_metadata["output_tokens"] >= 1


def test_chat_openai_invoke_returns_script_and_usage(server: LocalModelServer) -> None:
    server.script("coder", [SCRIPTED])
    message = openai_chat(server).invoke("Write code")
    assert message.content == SCRIPTED
    assert message.usage_metadata is not None
    assert message.usage_metadata["input_tokens"] >= 1
    assert message.usage_metadata["output_tokens"] >= 1


def test_chat_openai_stream_concatenates_to_script(server: LocalModelServer) -> None:
    server.script("coder", [SCRIPTED])
    chunks = list(openai_chat(server).stream("Write code"))
    assert "".join(str(c.content) for c in chunks) == SCRIPTED
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert len(usage) == 1 and usage[0]["output_tokens"] >= 1
    stream_request = server.requests_for("coder")[-1]
    assert stream_request.stream is True
    assert stream_request.body is not None
    assert stream_request.body["stream_options"] == {"include_usage": True}


async def test_async_clients(server: LocalModelServer) -> None:
    server.script("phi3:mini", ["async ollama"])
    server.script("coder", ["async openai reply"])
    assert (await ollama_chat(server).ainvoke("hi")).content == "async ollama"
    texts = [str(c.content) async for c in openai_chat(server).astream("hi")]
    assert "".join(texts) == "async openai reply"


def test_default_reply_mentions_model_and_prompt(server: LocalModelServer) -> None:
    question = "What is the capital of France? " * 5
    reply = str(ollama_chat(server).invoke(question).content)
    assert reply.startswith("[phi3:mini] Answer to: What is the capital of France?")
    assert question.strip()[:80] in reply
    assert question.strip()[:81] not in reply
    assert len(reply.split()) > 15
    assert reply == ollama_chat(server).invoke(question).content  # deterministic


def test_server_wide_reply_function() -> None:
    def reply(model: str, messages: list[dict[str, Any]]) -> str:
        return f"{model}|{messages[-1]['role']}|{messages[-1]['content']}"

    with LocalModelServer(["m"], reply=reply) as srv:
        assert ollama_chat(srv, "m").invoke("ping").content == "m|user|ping"


def test_script_sequence_in_order_then_last_repeats(server: LocalModelServer) -> None:
    server.script("coder", ["first", "second", "third"])
    client = openai_chat(server)
    answers = [client.invoke([HumanMessage("q")]).content for _ in range(5)]
    assert answers == ["first", "second", "third", "third", "third"]


def test_script_adds_missing_model_and_remove_model(server: LocalModelServer) -> None:
    server.script("new-model", ["hello from new"])
    assert "new-model" in server.models
    assert ollama_chat(server, "new-model").invoke("x").content == "hello from new"
    server.remove_model("new-model")
    assert "new-model" not in server.models
    with pytest.raises(ollama.ResponseError) as info:
        ollama_chat(server, "new-model").invoke("x")
    assert info.value.status_code == 404


def test_empty_script_and_bad_times_are_rejected(server: LocalModelServer) -> None:
    with pytest.raises(ValueError):
        server.script("coder", [])
    with pytest.raises(ValueError):
        server.inject_fault(Fault.status_code(500), times=0)


# -- errors ----------------------------------------------------------------------------------


def test_unknown_model_is_404_for_both_clients(
    server: LocalModelServer, http: httpx.Client
) -> None:
    with pytest.raises(ollama.ResponseError) as ollama_info:
        ollama_chat(server, "ghost").invoke("hi")
    assert ollama_info.value.status_code == 404
    assert ollama_info.value.error == 'model "ghost" not found, try pulling it first'
    with pytest.raises(openai.NotFoundError) as openai_info:
        openai_chat(server, "ghost").invoke("hi")
    assert openai_info.value.status_code == 404
    error = http.post("/v1/chat/completions", json=chat_body("ghost")).json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert error["type"] == "invalid_request_error"
    assert error["message"] == "The model `ghost` does not exist or you do not have access to it."


def test_bad_json_is_400_in_each_protocol_shape(http: httpx.Client) -> None:
    headers = {"Content-Type": "application/json"}
    ollama_response = http.post("/api/chat", content=b"{nope", headers=headers)
    assert ollama_response.status_code == 400
    assert isinstance(ollama_response.json()["error"], str)
    openai_response = http.post("/v1/chat/completions", content=b"[1, 2", headers=headers)
    assert openai_response.status_code == 400
    assert openai_response.json()["error"]["type"] == "invalid_request_error"


def test_missing_model_is_400(http: httpx.Client) -> None:
    response = http.post("/api/chat", json={"messages": []})
    assert response.status_code == 400
    assert response.json() == {"error": "model is required"}


def test_unknown_path_is_404_and_connection_stays_usable(http: httpx.Client) -> None:
    assert http.get("/nowhere").status_code == 404
    assert http.get("/v1/nowhere").json()["error"]["message"].startswith("404")
    assert http.get("/api/chat").status_code == 405
    assert http.get("/api/version").status_code == 200


# -- faults ----------------------------------------------------------------------------------


def test_429_with_retry_after_for_openai(server: LocalModelServer) -> None:
    server.inject_fault(Fault.status_code(429, retry_after=7), model="coder")
    with pytest.raises(openai.RateLimitError) as info:
        openai_chat(server).invoke("hi")
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "7"
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "rate_limit_exceeded"
    assert "rate limit" in str(body["message"]).lower()


def test_429_with_retry_after_for_ollama(server: LocalModelServer, http: httpx.Client) -> None:
    server.inject_fault(Fault.status_code(429, retry_after=1.5), model="phi3:mini", times=2)
    with pytest.raises(ollama.ResponseError) as info:
        ollama_chat(server).invoke("hi")
    assert info.value.status_code == 429
    assert "rate limit" in info.value.error.lower()
    # ollama.ResponseError keeps no headers; check the header on the wire.
    response = http.post("/api/chat", json=chat_body("phi3:mini"))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1.5"


@pytest.mark.parametrize(
    ("status", "openai_error"),
    [
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
        (400, openai.BadRequestError),
    ],
)
def test_status_faults_reach_both_clients(
    server: LocalModelServer, status: int, openai_error: type[openai.APIStatusError]
) -> None:
    server.inject_fault(Fault.status_code(status), model="phi3:mini")
    server.inject_fault(Fault.status_code(status), model="coder")
    with pytest.raises(ollama.ResponseError) as ollama_info:
        ollama_chat(server).invoke("hi")
    assert ollama_info.value.status_code == status
    with pytest.raises(openai_error) as openai_info:
        openai_chat(server).invoke("hi")
    assert openai_info.value.status_code == status
    assert "retry-after" not in openai_info.value.response.headers


def test_delay_fault_slows_the_answer(server: LocalModelServer) -> None:
    server.inject_fault(Fault.delay(0.4), times=2)
    server.script("phi3:mini", ["late"])
    server.script("coder", ["later"])
    started = time.monotonic()
    assert ollama_chat(server).invoke("hi").content == "late"
    middle = time.monotonic()
    assert "".join(str(c.content) for c in openai_chat(server).stream("hi")) == "later"
    assert middle - started >= 0.4
    assert time.monotonic() - middle >= 0.4
    started = time.monotonic()
    ollama_chat(server).invoke("hi")
    assert time.monotonic() - started < 0.4  # both delays consumed


def test_hang_times_out_clients_until_cleared(server: LocalModelServer) -> None:
    server.inject_fault(Fault.hang(), times=None)
    with pytest.raises(httpx.TimeoutException):
        ollama_chat(server, client_kwargs={"timeout": 0.5}).invoke("hi")
    with pytest.raises(openai.APITimeoutError):
        openai_chat(server, timeout=0.5).invoke("hi")
    server.clear_faults()
    assert ollama_chat(server, client_kwargs={"timeout": 5}).invoke("hi").content
    assert openai_chat(server, timeout=5).invoke("hi").content


def test_clear_faults_closes_hung_connection(server: LocalModelServer) -> None:
    server.inject_fault(Fault.hang())
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            httpx.post(server.url + "/api/chat", json=chat_body("phi3:mini"), timeout=10)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()
    server.clear_faults()
    thread.join(5)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.RemoteProtocolError)


def test_malformed_fault_breaks_both_clients(server: LocalModelServer) -> None:
    server.inject_fault(Fault.malformed(), times=4)
    with pytest.raises(json.JSONDecodeError):
        ollama_chat(server).invoke("hi")
    with pytest.raises(json.JSONDecodeError):
        openai_chat(server).invoke("hi")
    texts, error = collect(openai_chat(server).stream("hi"))
    assert texts == [] and isinstance(error, json.JSONDecodeError)
    raw = httpx.post(server.url + "/api/chat", json=chat_body("coder", stream=False))
    assert raw.status_code == 200 and raw.text == "this is not json {"


def test_cut_stream_ollama_gives_partial_text_then_error(server: LocalModelServer) -> None:
    server.script("phi3:mini", [SCRIPTED])
    server.inject_fault(Fault.cut_stream(after_chunks=2))
    texts, error = collect(ollama_chat(server).stream("hi"))
    assert isinstance(error, httpx.RemoteProtocolError)
    assert texts == ["The quick brown ", "fox jumps over "]
    server.inject_fault(Fault.cut_stream())
    with pytest.raises(httpx.RemoteProtocolError):
        ollama_chat(server).invoke("hi")


def test_cut_stream_openai_raises_connection_error(server: LocalModelServer) -> None:
    server.script("coder", [SCRIPTED])
    server.inject_fault(Fault.cut_stream(after_chunks=3), times=2)
    texts, error = collect(openai_chat(server).stream("hi"))
    assert isinstance(error, openai.APIConnectionError)
    assert SCRIPTED not in "".join(texts)
    with pytest.raises(openai.APIConnectionError):
        openai_chat(server).invoke("hi")  # non-streaming: truncated body


def test_cut_stream_raw_bodies_are_truncated(server: LocalModelServer) -> None:
    server.inject_fault(Fault.cut_stream(after_chunks=1), times=None)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(server.url + "/api/chat", json=chat_body("coder", stream=False))
    lines: list[str] = []
    body = chat_body("coder", stream=True)
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", server.openai_url + "/chat/completions", json=body) as response,
    ):
        lines.extend(line for line in response.iter_lines() if line)
    assert len(lines) == 2  # the role chunk and one content chunk, no finish and no [DONE]
    assert "[DONE]" not in "".join(lines)
    assert httpx.get(server.url + "/api/version").status_code == 200


def test_fault_times_one_is_consumed_then_normal(server: LocalModelServer) -> None:
    server.inject_fault(Fault.status_code(500), model="coder")
    with pytest.raises(openai.InternalServerError):
        openai_chat(server).invoke("hi")
    assert openai_chat(server).invoke("hi").content
    assert [r.fault for r in server.requests_for("coder")] == ["status", None]


def test_faults_are_fifo_and_times_none_persists(server: LocalModelServer) -> None:
    server.inject_fault(Fault.status_code(503))
    server.inject_fault(Fault.status_code(400), times=None)
    statuses = []
    for _ in range(3):
        with pytest.raises(ollama.ResponseError) as info:
            ollama_chat(server).invoke("hi")
        statuses.append(info.value.status_code)
    assert statuses == [503, 400, 400]
    server.clear_faults()
    assert ollama_chat(server).invoke("hi").content


def test_model_none_applies_to_any_model_and_model_filter_does_not(
    server: LocalModelServer,
) -> None:
    server.inject_fault(Fault.status_code(500), model="coder")
    assert ollama_chat(server).invoke("hi").content  # phi3:mini is untouched
    server.inject_fault(Fault.status_code(502), model=None, times=2)
    with pytest.raises(ollama.ResponseError) as info:
        ollama_chat(server).invoke("hi")
    assert info.value.status_code == 502  # skips the coder-only fault queued before it
    codes = []
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as openai_info:
            openai_chat(server).invoke("hi")
        codes.append(openai_info.value.status_code)
    assert codes == [500, 502]
    assert openai_chat(server).invoke("hi").content
    assert ollama_chat(server).invoke("hi").content


def test_faults_do_not_apply_to_unknown_models_or_other_endpoints(
    server: LocalModelServer, http: httpx.Client
) -> None:
    server.inject_fault(Fault.status_code(500))
    assert http.get("/api/tags").status_code == 200
    assert http.post("/api/chat", json=chat_body("ghost")).status_code == 404
    assert http.post("/api/chat", json=chat_body("coder")).status_code == 500


# -- request log -----------------------------------------------------------------------------


def test_request_log_records_every_request(server: LocalModelServer, http: httpx.Client) -> None:
    http.get("/api/tags")
    ollama_chat(server).invoke("log me")
    openai_chat(server).invoke("log me too")
    http.post("/v1/chat/completions", json=chat_body("coder", stream=True))
    log = server.requests
    assert [(r.method, r.path, r.protocol) for r in log] == [
        ("GET", "/api/tags", "ollama"),
        ("POST", "/api/chat", "ollama"),
        ("POST", "/v1/chat/completions", "openai"),
        ("POST", "/v1/chat/completions", "openai"),
    ]
    assert log[0].model is None and log[0].body is None and log[0].stream is False
    assert log[1].model == "phi3:mini" and log[1].stream is True
    assert log[1].body is not None and log[1].body["messages"][-1]["content"] == "log me"
    assert log[2].stream is False and log[3].stream is True
    assert all(isinstance(r, RecordedRequest) and r.received_at > 0 for r in log)
    assert [r.path for r in server.requests_for("coder")] == ["/v1/chat/completions"] * 2
    log.clear()
    assert len(server.requests) == 4  # requests returns a copy
    server.reset_log()
    assert server.requests == []


def test_log_entry_exists_before_the_answer(server: LocalModelServer) -> None:
    server.inject_fault(Fault.hang())

    def call() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(server.openai_url + "/chat/completions", json=chat_body("coder"), timeout=10)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [r.fault for r in server.requests] == ["hang"]
    server.clear_faults()
    thread.join(5)
    assert not thread.is_alive()


# -- lifecycle -------------------------------------------------------------------------------


def test_stop_returns_promptly_while_a_request_hangs() -> None:
    srv = LocalModelServer(["m"]).start()
    srv.inject_fault(Fault.hang())
    errors: list[Exception] = []

    def call() -> None:
        try:
            httpx.post(srv.url + "/api/chat", json=chat_body("m"), timeout=10)
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 2
    thread.join(5)
    assert not thread.is_alive()
    assert len(errors) == 1  # the hung request was disconnected, not answered
    with pytest.raises(RuntimeError):
        _ = srv.url


def test_stop_interrupts_a_slow_stream() -> None:
    srv = LocalModelServer(["m"], chunk_delay=0.5).start()
    url = srv.url
    received: list[str] = []

    def consume() -> None:
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.stream("POST", url + "/api/chat", json=chat_body("m"), timeout=10) as response,
        ):
            received.extend(response.iter_lines())

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 2
    thread.join(5)
    assert not thread.is_alive()
    assert 1 <= len(received) < 4


def test_chunk_delay_paces_the_stream() -> None:
    with LocalModelServer(["m"], chunk_delay=0.05) as srv:
        srv.script("m", ["one two three four five six seven eight nine"])  # 3 chunks + final
        started = time.monotonic()
        assert (
            ollama_chat(srv, "m").invoke("hi").content
            == "one two three four five six seven eight nine"
        )
        assert time.monotonic() - started >= 0.15


def test_restart_after_stop_serves_again() -> None:
    srv = LocalModelServer(["m"])
    with srv:
        first = srv.url
        assert httpx.get(first + "/api/tags").status_code == 200
    with srv:
        assert httpx.get(srv.url + "/api/tags").json()["models"][0]["name"] == "m"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_command_line_server_starts_answers_and_stops(stop_signal: signal.Signals) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "modelyard.testing.server", "--port", str(port), "--model", "x:1b"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert f"on http://127.0.0.1:{port}" in banner and "models: x:1b" in banner
        models = httpx.get(f"http://127.0.0.1:{port}/api/tags", timeout=5).json()["models"]
        assert [m["name"] for m in models] == ["x:1b"]
    finally:
        process.send_signal(stop_signal)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "Traceback" not in stderr


def test_command_line_defaults() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "modelyard.testing.server", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert "phi3:mini, deepseek-coder:6.7b-instruct" in process.stdout.readline()
        reply = ChatOllama(model="phi3:mini", base_url=f"http://127.0.0.1:{port}").invoke("hi")
        assert str(reply.content).startswith("[phi3:mini]")
    finally:
        process.terminate()
        process.communicate(timeout=10)
    assert process.returncode == 0
