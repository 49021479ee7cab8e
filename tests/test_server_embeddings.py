"""Embedding tests for the local protocol server, over real HTTP and real LangChain clients."""

from __future__ import annotations

import base64
import json
import math
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest
from langchain_ollama import OllamaEmbeddings
from langchain_openai import OpenAIEmbeddings

from modelyard.testing.server import (
    DEFAULT_EMBEDDING_DIMENSIONS,
    Fault,
    LocalModelServer,
    embed_text,
)

pytestmark = pytest.mark.protocol

CAT = "The cat sat on the mat."
CAT_AGAIN = "A cat sat on a mat"
FINANCE = "Quarterly revenue report for finance"


@pytest.fixture
def server() -> Iterator[LocalModelServer]:
    srv = LocalModelServer(["embedder", "phi3:mini"])
    srv.add_model("small-embed", embedding_dimensions=64)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def http(server: LocalModelServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def ollama_embeddings(
    server: LocalModelServer, model: str = "embedder", **kwargs: Any
) -> OllamaEmbeddings:
    return OllamaEmbeddings(model=model, base_url=server.url, **kwargs)


def openai_embeddings(
    server: LocalModelServer, model: str = "embedder", **kwargs: Any
) -> OpenAIEmbeddings:
    kwargs.setdefault("max_retries", 0)
    return OpenAIEmbeddings(
        model=model,
        base_url=server.openai_url,
        api_key="test",  # type: ignore[arg-type]
        check_embedding_ctx_length=False,  # no tiktoken download: send the texts as they are
        **kwargs,
    )


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def close(a: list[float], b: list[float]) -> bool:
    """Equal up to float32 rounding (the OpenAI client asks for base64 float32 vectors)."""
    pairs = zip(a, b, strict=False)
    return len(a) == len(b) and all(math.isclose(x, y, abs_tol=1e-6) for x, y in pairs)


# -- the vectors -----------------------------------------------------------------------------


def test_embed_text_is_deterministic_normalised_and_meaningful() -> None:
    cat = embed_text(CAT)
    assert len(cat) == DEFAULT_EMBEDDING_DIMENSIONS == 256
    assert cat == embed_text(CAT) == embed_text(CAT.upper())
    assert math.isclose(norm(cat), 1.0)
    assert cosine(cat, embed_text(CAT_AGAIN)) > cosine(cat, embed_text(FINANCE)) + 0.3
    assert cosine(embed_text("red apple"), embed_text("apple red")) < 1.0  # bigrams: word order
    assert len(embed_text(CAT, 32)) == 32
    assert math.isclose(norm(embed_text("")), 1.0)  # no words: still a unit vector
    with pytest.raises(ValueError):
        embed_text(CAT, 0)


def test_add_model_rejects_bad_dimensions(server: LocalModelServer) -> None:
    with pytest.raises(ValueError, match="embedding_dimensions"):
        server.add_model("bad", embedding_dimensions=0)
    assert "bad" not in server.models
    with pytest.raises(KeyError):
        server.embed("ghost", CAT)


# -- plain HTTP ------------------------------------------------------------------------------


def test_ollama_embed_shape(server: LocalModelServer, http: httpx.Client) -> None:
    data = http.post("/api/embed", json={"model": "embedder", "input": [CAT, FINANCE]}).json()
    stats = {"total_duration", "load_duration", "prompt_eval_count"}
    assert set(data) == {"model", "embeddings", *stats}
    assert data["model"] == "embedder"
    assert data["embeddings"] == [embed_text(CAT), embed_text(FINANCE)]
    assert data["prompt_eval_count"] >= 2
    assert isinstance(data["total_duration"], int) and isinstance(data["load_duration"], int)
    single = http.post("/api/embed", json={"model": "embedder:latest", "input": CAT}).json()
    assert single["embeddings"] == [embed_text(CAT)]


def test_ollama_legacy_embeddings(server: LocalModelServer, http: httpx.Client) -> None:
    data = http.post("/api/embeddings", json={"model": "small-embed", "prompt": CAT}).json()
    assert data == {"embedding": embed_text(CAT, 64)}
    with ollama.Client(host=server.url) as client:
        assert client.embeddings(model="embedder", prompt=CAT).embedding == embed_text(CAT)
        assert client.embed(model="small-embed", input=CAT).embeddings == [embed_text(CAT, 64)]
    bad = http.post("/api/embeddings", json={"model": "embedder", "prompt": ["a"]})
    assert bad.status_code == 400 and "prompt must be a string" in bad.json()["error"]


def test_openai_embeddings_float_base64_and_token_ids(http: httpx.Client) -> None:
    body = {"model": "embedder", "input": [CAT, FINANCE], "encoding_format": "float"}
    data = http.post("/v1/embeddings", json=body).json()
    assert data["object"] == "list" and data["model"] == "embedder"
    assert [(d["object"], d["index"]) for d in data["data"]] == [("embedding", 0), ("embedding", 1)]
    assert data["data"][1]["embedding"] == embed_text(FINANCE)
    assert data["usage"]["prompt_tokens"] == data["usage"]["total_tokens"] >= 2

    raw = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert close(list(struct.unpack(f"<{len(packed) // 4}f", packed)), embed_text(CAT))

    tokens = {"model": "embedder", "input": [[791, 8415, 7731], [791]]}
    by_ids = http.post("/v1/embeddings", json=tokens).json()
    assert by_ids["data"][0]["embedding"] == embed_text("791 8415 7731")
    assert by_ids["usage"]["prompt_tokens"] == 4
    one = http.post("/v1/embeddings", json={"model": "embedder", "input": [791, 8415]}).json()
    assert len(one["data"]) == 1 and one["data"][0]["embedding"] == embed_text("791 8415")


def test_dimensions_field_cuts_and_renormalises(
    server: LocalModelServer, http: httpx.Client
) -> None:
    body = {"model": "embedder", "input": CAT, "dimensions": 16}
    vector = http.post("/v1/embeddings", json=body).json()["data"][0]["embedding"]
    assert len(vector) == 16 and math.isclose(norm(vector), 1.0)
    assert vector == server.embed("embedder", CAT, dimensions=16)
    ollama_data = http.post("/api/embed", json=body).json()
    assert ollama_data["embeddings"] == [vector]
    too_big = http.post("/v1/embeddings", json={**body, "model": "small-embed", "dimensions": 65})
    assert too_big.status_code == 400
    assert too_big.json()["error"]["param"] == "dimensions"
    assert http.post("/api/embed", json={**body, "dimensions": 0}).status_code == 400


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/api/embed", {"model": "embedder", "input": []}, "empty list"),
        ("/v1/embeddings", {"model": "embedder", "input": []}, "empty list"),
        ("/api/embed", {"model": "embedder"}, "input is required"),
        ("/v1/embeddings", {"model": "embedder", "input": [{"text": "x"}]}, "input must be"),
        ("/api/embed", {"model": "embedder", "input": [[1, 2]]}, "input must be"),
        ("/v1/embeddings", {"model": "embedder", "input": "x", "encoding_format": "hex"}, "hex"),
        ("/api/embed", {"input": "x"}, "model is required"),
    ],
)
def test_bad_embedding_requests_are_400(
    http: httpx.Client, path: str, body: dict[str, Any], message: str
) -> None:
    response = http.post(path, json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in (error["message"] if path.startswith("/v1/") else error)


# -- LangChain clients -----------------------------------------------------------------------


def test_ollama_embeddings_client(server: LocalModelServer) -> None:
    client = ollama_embeddings(server)
    query = client.embed_query(CAT)
    assert query == embed_text(CAT) == client.embed_query(CAT)
    documents = client.embed_documents([CAT, CAT_AGAIN, FINANCE])
    assert documents[0] == query
    assert cosine(query, documents[1]) > cosine(query, documents[2])
    assert len(ollama_embeddings(server, "small-embed").embed_query(CAT)) == 64
    assert len(ollama_embeddings(server, dimensions=32).embed_query(CAT)) == 32


def test_openai_embeddings_client(server: LocalModelServer) -> None:
    client = openai_embeddings(server)  # the openai client asks for base64 by default
    query = client.embed_query(CAT)
    assert close(query, embed_text(CAT))
    assert client.embed_query(CAT) == query
    documents = client.embed_documents([CAT, CAT_AGAIN, FINANCE])
    assert close(documents[0], query)
    assert cosine(query, documents[1]) > cosine(query, documents[2])
    assert len(openai_embeddings(server, "small-embed").embed_query(CAT)) == 64
    assert len(openai_embeddings(server, dimensions=32).embed_query(CAT)) == 32
    (request, *_) = server.requests_for("embedder", kind="embeddings")
    assert request.body is not None and request.body["encoding_format"] == "base64"
    assert request.body["input"] == [CAT]


def test_both_protocols_give_the_same_vectors(server: LocalModelServer) -> None:
    texts = [CAT, FINANCE]
    from_ollama = ollama_embeddings(server).embed_documents(texts)
    from_openai = openai_embeddings(server).embed_documents(texts)
    assert all(close(a, b) for a, b in zip(from_ollama, from_openai, strict=True))


async def test_async_embedding_clients(server: LocalModelServer) -> None:
    assert await ollama_embeddings(server).aembed_query(CAT) == embed_text(CAT)
    documents = await ollama_embeddings(server).aembed_documents([CAT, FINANCE])
    assert documents == [embed_text(CAT), embed_text(FINANCE)]
    query = await openai_embeddings(server).aembed_query(CAT)
    assert close(query, embed_text(CAT))
    vectors = await openai_embeddings(server, "small-embed").aembed_documents([CAT, FINANCE])
    assert [len(v) for v in vectors] == [64, 64]


def test_unknown_model_is_404_for_both_clients(server: LocalModelServer) -> None:
    with pytest.raises(ollama.ResponseError) as ollama_info:
        ollama_embeddings(server, "ghost").embed_query(CAT)
    assert ollama_info.value.status_code == 404
    assert "ghost" in ollama_info.value.error
    with pytest.raises(openai.NotFoundError) as openai_info:
        openai_embeddings(server, "ghost").embed_query(CAT)
    body = openai_info.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found"


def test_empty_document_list(server: LocalModelServer) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        ollama_embeddings(server).embed_documents([])  # sends input [] to the server
    assert info.value.status_code == 400 and "empty list" in info.value.error
    assert openai_embeddings(server).embed_documents([]) == []  # sends nothing


# -- faults ----------------------------------------------------------------------------------


def test_status_faults_reach_both_clients(server: LocalModelServer) -> None:
    server.inject_fault(Fault.status_code(503), model="embedder", times=2)
    with pytest.raises(ollama.ResponseError) as ollama_info:
        ollama_embeddings(server).embed_query(CAT)
    assert ollama_info.value.status_code == 503
    with pytest.raises(openai.InternalServerError) as openai_info:
        openai_embeddings(server).embed_query(CAT)
    assert openai_info.value.status_code == 503
    assert ollama_embeddings(server).embed_query(CAT) == embed_text(CAT)  # both consumed
    faults = [r.fault for r in server.requests_for("embedder", kind="embeddings")]
    assert faults == ["status", "status", None]


def test_429_is_retried_by_the_openai_client(server: LocalModelServer) -> None:
    server.inject_fault(Fault.status_code(429, retry_after=0.1), model="embedder")
    query = openai_embeddings(server, max_retries=1).embed_query(CAT)
    assert close(query, embed_text(CAT))
    log = server.requests_for("embedder", kind="embeddings")
    assert [(r.path, r.fault) for r in log] == [
        ("/v1/embeddings", "status"),
        ("/v1/embeddings", None),
    ]


def test_429_with_retry_after_for_ollama(server: LocalModelServer, http: httpx.Client) -> None:
    server.inject_fault(Fault.status_code(429, retry_after=2), times=2)
    with pytest.raises(ollama.ResponseError) as info:
        ollama_embeddings(server).embed_query(CAT)
    assert info.value.status_code == 429 and "rate limit" in info.value.error.lower()
    response = http.post("/api/embed", json={"model": "embedder", "input": CAT})
    assert response.status_code == 429 and response.headers["retry-after"] == "2"


def test_delay_hang_malformed_and_cut_faults(server: LocalModelServer) -> None:
    server.inject_fault(Fault.delay(0.3))
    started = time.monotonic()
    assert ollama_embeddings(server).embed_query(CAT) == embed_text(CAT)
    assert time.monotonic() - started >= 0.3

    server.inject_fault(Fault.hang(), times=None)
    with pytest.raises(openai.APITimeoutError):
        openai_embeddings(server, timeout=0.5).embed_query(CAT)
    server.clear_faults()

    server.inject_fault(Fault.malformed(), times=2)
    with pytest.raises(json.JSONDecodeError):
        ollama_embeddings(server).embed_query(CAT)
    with pytest.raises(json.JSONDecodeError):
        openai_embeddings(server).embed_query(CAT)

    server.inject_fault(Fault.cut_stream(), times=2)
    with pytest.raises(httpx.RemoteProtocolError):
        ollama_embeddings(server).embed_query(CAT)
    with pytest.raises(openai.APIConnectionError):
        openai_embeddings(server).embed_query(CAT)
    assert ollama_embeddings(server).embed_query(CAT) == embed_text(CAT)


def test_random_faults_apply_to_embeddings(server: LocalModelServer) -> None:
    server.inject_random_faults([(1.0, Fault.status_code(500))], model="small-embed", seed=1)
    with pytest.raises(ollama.ResponseError) as info:
        ollama_embeddings(server, "small-embed").embed_query(CAT)
    assert info.value.status_code == 500
    assert ollama_embeddings(server).embed_query(CAT)  # another model: no mix


def test_faults_skip_unknown_models(server: LocalModelServer, http: httpx.Client) -> None:
    server.inject_fault(Fault.status_code(500))
    assert http.post("/api/embed", json={"model": "ghost", "input": "x"}).status_code == 404
    assert http.post("/api/embed", json={"model": "embedder", "input": "x"}).status_code == 500


# -- request log -----------------------------------------------------------------------------


def test_request_log_records_embedding_calls(server: LocalModelServer) -> None:
    ollama_embeddings(server).embed_documents([CAT, FINANCE])
    openai_embeddings(server).embed_query(CAT)
    with ollama.Client(host=server.url) as client:
        client.embeddings(model="embedder", prompt=CAT)
        client.chat(model="phi3:mini", messages=[{"role": "user", "content": "hi"}])
    log = server.requests_for("embedder", kind="embeddings")
    assert [(r.method, r.path, r.protocol, r.model, r.stream) for r in log] == [
        ("POST", "/api/embed", "ollama", "embedder", False),
        ("POST", "/v1/embeddings", "openai", "embedder", False),
        ("POST", "/api/embeddings", "ollama", "embedder", False),
    ]
    assert log[0].body is not None and log[0].body["input"] == [CAT, FINANCE]
    assert server.requests_for("embedder") == []  # chat requests only by default
    assert [r.path for r in server.requests_for("phi3:mini")] == ["/api/chat"]
    assert server.requests_for("phi3:mini", kind="embeddings") == []
    assert len(server.requests) == 4
