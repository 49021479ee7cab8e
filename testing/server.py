"""Local HTTP server speaking the Ollama and OpenAI-compatible chat and embedding protocols.

Replies are scripted, embeddings are hashed bags of words and faults can be injected, so real
clients can be tested without a model.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import hashlib
import itertools
import json
import math
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Literal, NamedTuple, cast
from urllib.parse import urlsplit


@dataclass(frozen=True)
class ToolCallReply:
    """A scripted reply that calls tools, in each protocol's own format.

    Ollama gets `message.tool_calls` with each function's name and an arguments object;
    OpenAI gets `choices[0].message.tool_calls` with an id, type `function`, the name and
    the arguments as a JSON string (streamed as `delta.tool_calls` fragments), and
    `finish_reason: "tool_calls"`. The client's answers come back as messages with role
    `tool`, which a `ReplyFn` sees.

    Attributes:
        calls: One mapping per call: `{"name": "write_file", "arguments": {...}}`.
        content: Text sent before the calls, if any.
    """

    calls: Sequence[Mapping[str, Any]]
    content: str = ""


Reply = str | ToolCallReply
ReplyFn = Callable[[str, list[dict[str, Any]]], Reply]
"""Compute a reply from the model name and the chat messages (dicts with role and content;
tool results have role `tool`): text, or a `ToolCallReply`."""

Protocol = Literal["ollama", "openai", "other"]
RequestKind = Literal["chat", "embeddings"]
"""Which endpoints ``LocalModelServer.requests_for`` counts: chat or embedding ones."""

DEFAULT_MODELS = ("phi3:mini", "deepseek-coder:6.7b-instruct")
_OLLAMA_CHAT = "/api/chat"
_OPENAI_CHAT = "/v1/chat/completions"
_CHAT_PATHS = frozenset({_OLLAMA_CHAT, _OPENAI_CHAT})
_OLLAMA_EMBED = "/api/embed"
_OLLAMA_EMBEDDINGS = "/api/embeddings"  # the legacy endpoint: one prompt, one vector
_OPENAI_EMBEDDINGS = "/v1/embeddings"
_EMBED_PATHS = frozenset({_OLLAMA_EMBED, _OLLAMA_EMBEDDINGS, _OPENAI_EMBEDDINGS})
_KIND_PATHS: dict[RequestKind, frozenset[str]] = {"chat": _CHAT_PATHS, "embeddings": _EMBED_PATHS}
_FAULT_PATHS = _CHAT_PATHS | _EMBED_PATHS  # the requests injected faults apply to
DEFAULT_EMBEDDING_DIMENSIONS = 256
_EMBED_WORD_RE = re.compile(r"\w+")
_BIGRAM_WEIGHT = 0.5
_MALFORMED = b"this is not json {"
_WORDS_PER_CHUNK = 3
_WORD_RE = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True)
class Fault:
    """A misbehaviour applied to a chat or embedding request instead of (or before) an answer.

    Embedding answers are never streamed: ``malformed`` gives them a body that is not JSON and
    ``cut_stream`` sends half of the body, then drops the connection.

    Attributes:
        kind: What goes wrong: an error status, a delay, a hang, a malformed body or a cut stream.
        status: HTTP status for ``kind="status"``.
        retry_after: Seconds sent as the ``Retry-After`` header with ``kind="status"``.
        seconds: For ``kind="delay"``, how long to wait before answering normally.
        after_chunks: For ``kind="cut_stream"``, content chunks sent before the connection drops.
    """

    kind: Literal["status", "delay", "hang", "malformed", "cut_stream"]
    status: int = 500
    retry_after: float | None = None
    seconds: float = 0.0
    after_chunks: int = 2

    @classmethod
    def status_code(cls, status: int, retry_after: float | None = None) -> Fault:
        """Answer with an error status and a protocol-shaped error body."""
        return cls("status", status=status, retry_after=retry_after)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Wait ``seconds``, then answer normally."""
        return cls("delay", seconds=seconds)

    @classmethod
    def hang(cls) -> Fault:
        """Never answer; close the connection once faults are cleared or the server stops."""
        return cls("hang")

    @classmethod
    def malformed(cls) -> Fault:
        """Answer 200 with a body that is not valid protocol JSON."""
        return cls("malformed")

    @classmethod
    def cut_stream(cls, after_chunks: int = 2) -> Fault:
        """Send ``after_chunks`` content chunks, then drop the connection mid-response."""
        return cls("cut_stream", after_chunks=after_chunks)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it.

    Attributes:
        method: HTTP method.
        path: Request path without query string or trailing slash.
        protocol: ``"ollama"`` for ``/`` and ``/api/*``, ``"openai"`` for ``/v1/*``.
        model: The ``model`` (or ``name``) field of the body, if any.
        body: The parsed JSON body, or None when absent or not a JSON object.
        stream: Whether the request asked for a streamed answer (protocol defaults applied).
        received_at: ``time.time()`` when the request was read.
        fault: Kind of the injected fault applied to it, if any.
    """

    method: str
    path: str
    protocol: Protocol
    model: str | None
    body: dict[str, Any] | None
    stream: bool
    received_at: float
    fault: str | None


@dataclass
class _ModelEntry:
    context_length: int
    replies: list[Reply] | ReplyFn | None = None
    served: int = 0
    embedding_dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS


@dataclass
class _FaultSlot:
    fault: Fault
    model: str | None
    remaining: int | None


@dataclass
class _FaultMix:
    """Faults drawn at random; ``bounds`` pairs each fault with its cumulative probability."""

    bounds: list[tuple[float, Fault]]
    rng: random.Random

    def draw(self) -> Fault | None:
        """Return the fault one request gets, or None for a normal answer."""
        roll = self.rng.random()
        return next((fault for bound, fault in self.bounds if roll < bound), None)


def default_reply(model: str, messages: list[dict[str, Any]]) -> str:
    """Build the deterministic reply used when a model has no script."""
    last = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    snippet = " ".join(str(last).split())[:80] or "(no user message)"
    return (
        f"[{model}] Answer to: {snippet}\n"
        "This is a scripted reply from the modelyard local server. "
        "It is deterministic for a given model and prompt."
    )


def embed_text(text: str, dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS) -> list[float]:
    """Embed ``text`` the way the local server does, deterministically in every process.

    The vector is a signed hashed bag of words: each lower-cased word (``\\w+``) and, with half
    the weight, each pair of adjacent words is hashed with BLAKE2b to one of ``dimensions``
    slots and a sign; the sum is L2-normalised. Texts sharing words (and word order) are
    similar, unrelated texts nearly orthogonal. A text without words gets a fixed unit vector.

    Raises:
        ValueError: If ``dimensions`` is less than 1.
    """
    if dimensions < 1:
        raise ValueError(f"dimensions must be at least 1, not {dimensions}")
    words = _EMBED_WORD_RE.findall(text.lower())
    features = [(f"w:{word}", 1.0) for word in words]
    features += [(f"b:{a} {b}", _BIGRAM_WEIGHT) for a, b in itertools.pairwise(words)]
    vector = [0.0] * dimensions
    for feature, weight in features or [("empty:", 1.0)]:
        slot, sign = _feature_slot(feature, dimensions)
        vector[slot] += sign * weight
    return _normalized(vector)


class LocalModelServer:
    """Serve the Ollama and OpenAI-compatible protocols with scripted replies and faults.

    Chat requests get scripted replies; embedding requests (``/api/embed``, the legacy
    ``/api/embeddings`` and ``/v1/embeddings``) get ``embed_text`` vectors of the model's
    ``embedding_dimensions``.

    Args:
        models: Model names available from the start.
        host: Interface to listen on.
        port: Port to listen on; 0 picks a free one.
        reply: Reply function for models without a script; defaults to ``default_reply``.
        chunk_delay: Seconds to sleep between stream chunks.
        pullable: Whether ``/api/pull`` succeeds (and adds the model) or answers 404.
        verbose: Log one line per request to stderr.
    """

    def __init__(
        self,
        models: Iterable[str] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        reply: ReplyFn | None = None,
        chunk_delay: float = 0.0,
        pullable: bool = True,
        verbose: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.reply = reply
        self.chunk_delay = chunk_delay
        self.pullable = pullable
        self.verbose = verbose
        self.created = datetime.now(UTC)
        self._lock = threading.Lock()
        self._models: dict[str, _ModelEntry] = {}
        self._faults: list[_FaultSlot] = []
        self._fault_mixes: dict[str | None, _FaultMix] = {}
        self._log: list[RecordedRequest] = []
        self._stopping = threading.Event()
        self._release = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        for name in models:
            self.add_model(name)

    def start(self) -> LocalModelServer:
        """Bind the socket and serve in a daemon thread; do nothing if already running."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        with self._lock:
            self._release = threading.Event()
        httpd = _HTTPServer((self.host, self.port), self)
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"modelyard-server-{httpd.server_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release hung requests and close open connections."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        with self._lock:
            self._release.set()
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Return the base URL (the Ollama ``base_url``)."""
        if self._httpd is None:
            raise RuntimeError("LocalModelServer is not running; call start() first")
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self._httpd.server_port}"

    @property
    def openai_url(self) -> str:
        """Return the OpenAI-compatible base URL (``url + "/v1"``)."""
        return self.url + "/v1"

    def add_model(
        self,
        name: str,
        *,
        replies: Sequence[Reply] | ReplyFn | None = None,
        context_length: int = 4096,
        embedding_dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS,
    ) -> None:
        """Add (or replace) a model, optionally with scripted replies.

        Args:
            name: The model's name.
            replies: Scripted chat replies (see ``script``); None uses the reply function.
            context_length: Context length reported by ``/api/show``.
            embedding_dimensions: Length of the vectors its embedding requests get.
        """
        if embedding_dimensions < 1:
            raise ValueError(f"embedding_dimensions must be at least 1, not {embedding_dimensions}")
        script = _as_script(replies)
        entry = _ModelEntry(context_length, script, embedding_dimensions=embedding_dimensions)
        with self._lock:
            self._models[name] = entry

    def script(self, model: str, replies: Sequence[Reply] | ReplyFn) -> None:
        """Script a model's replies: a sequence is served in order, then its last item repeats."""
        with self._lock:
            entry = self._models.setdefault(model, _ModelEntry(4096))
            entry.replies = _as_script(replies)
            entry.served = 0

    def embed(self, model: str, text: str, *, dimensions: int | None = None) -> list[float]:
        """Return the vector the server answers for ``text`` from ``model``.

        Args:
            model: A known model (``x`` and ``x:latest`` are the same).
            text: The text to embed.
            dimensions: A shorter length asked for, as the ``dimensions`` request field does:
                the model's vector is cut to it and normalised again.

        Raises:
            KeyError: If the model is unknown.
            ValueError: If ``dimensions`` is not between 1 and the model's dimensions.
        """
        resolved = self._resolve(model)
        if resolved is None:
            raise KeyError(f"model {model!r} is not served")
        native = self._embedding_dimensions(resolved)
        return _embedding(text, native, _output_dimensions(dimensions, native))

    def remove_model(self, name: str) -> None:
        """Remove a model; do nothing if it is unknown."""
        with self._lock:
            self._models.pop(name, None)

    @property
    def models(self) -> list[str]:
        """Return the model names, in the order they were added."""
        with self._lock:
            return list(self._models)

    def inject_fault(
        self, fault: Fault, *, model: str | None = None, times: int | None = 1
    ) -> None:
        """Queue a fault for chat and embedding requests to ``model`` (any model if None).

        Args:
            fault: The fault to apply.
            model: Only requests for this model match; None matches every model.
            times: How many matching requests it applies to; None means until cleared.
        """
        if times is not None and times < 1:
            raise ValueError("times must be at least 1, or None")
        with self._lock:
            self._faults.append(_FaultSlot(fault, model, times))

    def inject_random_faults(
        self,
        mix: Sequence[tuple[float, Fault]],
        *,
        model: str | None = None,
        seed: int | None = None,
    ) -> None:
        """Make a share of chat and embedding requests to ``model`` (any model if None) fail.

        Each matching request draws once: it gets fault ``i`` with probability ``p_i`` and a
        normal answer with the rest. Queued ``inject_fault`` faults are applied first; a mix
        for the request's own model is used instead of the one for any model. A new mix for
        the same ``model`` replaces the old one; ``clear_faults`` drops them all.

        Args:
            mix: ``(probability, fault)`` pairs; the probabilities must add up to 1 at most.
            model: Only requests for this model draw from the mix; None matches every model.
            seed: Seed of the mix's random generator, for a repeatable sequence of draws.
        """
        total = 0.0
        bounds: list[tuple[float, Fault]] = []
        for probability, fault in mix:
            if not 0.0 <= probability <= 1.0:
                raise ValueError(f"probability {probability!r} of {fault} is not in [0, 1]")
            total += probability
            bounds.append((total, fault))
        if total > 1.0 + 1e-9:
            raise ValueError(f"the fault probabilities add up to {total:g}, more than 1")
        with self._lock:
            self._fault_mixes[model] = _FaultMix(bounds, random.Random(seed))

    def clear_faults(self) -> None:
        """Drop all queued and random faults and release hung requests (closing them)."""
        with self._lock:
            self._faults.clear()
            self._fault_mixes.clear()
            self._release.set()
            self._release = threading.Event()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Return a copy of the request log."""
        with self._lock:
            return list(self._log)

    def requests_for(self, model: str, *, kind: RequestKind = "chat") -> list[RecordedRequest]:
        """Return the logged requests for ``model`` to the chat (or embedding) endpoints."""
        paths = _KIND_PATHS[kind]
        with self._lock:
            return [r for r in self._log if r.path in paths and r.model == model]

    def reset_log(self) -> None:
        """Forget all logged requests."""
        with self._lock:
            self._log.clear()

    def _resolve(self, name: str | None) -> str | None:
        """Return the known model called ``name`` (``x`` and ``x:latest`` are the same)."""
        if not name:
            return None
        with self._lock:
            for candidate in (name, name.removesuffix(":latest"), f"{name}:latest"):
                if candidate in self._models:
                    return candidate
        return None

    def _context_length(self, name: str) -> int:
        with self._lock:
            entry = self._models.get(name)
            return entry.context_length if entry else 4096

    def _embedding_dimensions(self, name: str) -> int:
        with self._lock:
            entry = self._models.get(name)
            return entry.embedding_dimensions if entry else DEFAULT_EMBEDDING_DIMENSIONS

    def _take_fault(self, requested: str, model: str) -> tuple[Fault | None, threading.Event]:
        """Consume the first queued fault matching the model, else draw from its random mix.

        Also return the release event that ends a hang.
        """
        with self._lock:
            for slot in self._faults:
                if slot.model in (None, requested, model):
                    if slot.remaining is not None:
                        slot.remaining -= 1
                        if slot.remaining <= 0:
                            self._faults.remove(slot)
                    return slot.fault, self._release
            mixes = self._fault_mixes
            mix = mixes.get(model) or mixes.get(requested) or mixes.get(None)
            return (mix.draw() if mix else None), self._release

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._log.append(request)

    def _next_reply(self, model: str, messages: list[dict[str, Any]]) -> Reply:
        with self._lock:
            entry = self._models.get(model)
            script = entry.replies if entry else None
            if entry is not None and isinstance(entry.replies, list):
                text = entry.replies[min(entry.served, len(entry.replies) - 1)]
                entry.served += 1
                return text
        fn = script if callable(script) else self.reply or default_reply
        return fn(model, messages)


class _HTTPServer(ThreadingHTTPServer):
    """Threading HTTP server that knows its owner and tracks open connections."""

    daemon_threads = True
    request_queue_size = 128  # many clients at once (benchmarks) must not be refused

    def __init__(self, address: tuple[str, int], owner: LocalModelServer) -> None:
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open connection so blocked handler threads wake up."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a vanished client is not an error
            super().handle_error(request, client_address)


@dataclass
class _Call:
    body: dict[str, Any]
    model: str | None
    stream: bool
    fault: Fault | None
    release: threading.Event | None


class _Reply(NamedTuple):
    model: str
    text: str
    pieces: list[str]
    prompt_tokens: int
    completion_tokens: int
    cut: int | None  # content chunks to send before dropping the connection, for cut_stream
    tool_calls: list[_ToolCall] = []


class _ToolCall(NamedTuple):
    id: str
    name: str
    arguments: dict[str, Any]


class _Embeddings(NamedTuple):
    model: str
    vectors: list[list[float]]
    prompt_tokens: int
    cut: int | None  # for cut_stream: send half of the body, then drop the connection


class _EmbedInput(NamedTuple):
    text: str  # token ids are embedded as words of digits
    tokens: int


class _FieldError(ValueError):
    """A request field answered with 400; ``param`` names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class _Handler(BaseHTTPRequestHandler):
    """Answer one connection's requests for a ``LocalModelServer``."""

    protocol_version = "HTTP/1.1"
    server_version = "modelyard-local/0.1"
    disable_nagle_algorithm = True

    @property
    def owner(self) -> LocalModelServer:
        return cast(_HTTPServer, self.server).owner

    def log_message(self, format: str, *args: Any) -> None:
        if self.owner.verbose:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def do_GET(self) -> None:
        try:
            self._dispatch()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    do_POST = do_GET

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        protocol: Protocol = "openai" if path.startswith("/v1/") else "ollama"
        if path != "/" and not path.startswith(("/api/", "/v1/")):
            protocol = "other"
        body, bad_json = _parse_body(self._read_body())
        model = _model_field(body)
        stream = _stream_flag(path, body)
        fault: Fault | None = None
        release: threading.Event | None = None
        resolved = self.owner._resolve(model) if path in _FAULT_PATHS else None
        if model and resolved:
            fault, release = self.owner._take_fault(model, resolved)
        self.owner._record(
            RecordedRequest(
                method=self.command,
                path=path,
                protocol=protocol,
                model=model,
                body=body,
                stream=stream,
                received_at=time.time(),
                fault=fault.kind if fault else None,
            )
        )
        route = _ROUTES.get(path)
        if route is None:
            self._send_error(protocol, 404, f"404 page not found: {path}")
        elif self.command != route[0]:
            self._send_error(protocol, 405, f"405 method not allowed: {self.command} {path}")
        elif bad_json:
            self._send_error(protocol, 400, "invalid JSON in request body")
        else:
            route[1](self, _Call(body or {}, model, stream, fault, release))

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_bytes(
        self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_error(
        self,
        protocol: Protocol,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
        payload: dict[str, Any] = {"error": message}
        if protocol == "openai":
            kind = _openai_error_type(status)
            code = code or ("rate_limit_exceeded" if status == 429 else None)
            payload = {"error": {"message": message, "type": kind, "param": param, "code": code}}
        self._send_json(status, payload, headers)

    def _drop(self) -> None:
        """Close the connection abruptly, without finishing the current response."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)

    def _stream(
        self,
        content_type: str,
        head: Sequence[bytes],
        content: Sequence[bytes],
        tail: Sequence[bytes],
        cut_after: int | None = None,
    ) -> None:
        """Send frames with chunked encoding; with ``cut_after``, drop after that many contents."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if cut_after is None:
            frames = [*head, *content, *tail]
        else:
            frames = [*head, *content[: max(cut_after, 0)]]
        for index, frame in enumerate(frames):
            if index and self.owner._stopping.wait(self.owner.chunk_delay):
                self._drop()
                return
            self.wfile.write(f"{len(frame):X}\r\n".encode() + frame + b"\r\n")
        if cut_after is not None:
            self._drop()
            return
        self.wfile.write(b"0\r\n\r\n")

    def _request_model(self, call: _Call, protocol: Protocol) -> str | None:
        """Return the resolved model, or answer the 400/404 error and return None."""
        if not call.model:
            self._send_error(protocol, 400, "model is required", param="model")
            return None
        resolved = self.owner._resolve(call.model)
        if resolved is None:
            if protocol == "openai":
                message = (
                    f"The model `{call.model}` does not exist or you do not have access to it."
                )
                self._send_error(protocol, 404, message, code="model_not_found", param="model")
            else:
                self._send_error(
                    protocol, 404, f'model "{call.model}" not found, try pulling it first'
                )
        return resolved

    def _apply_fault(self, call: _Call, protocol: Protocol) -> bool:
        """Apply the request's fault; return True when the request is fully dealt with."""
        fault = call.fault
        if fault is None or fault.kind == "cut_stream":
            return False
        if fault.kind == "status":
            if fault.status == 429:
                message = "Rate limit reached for requests (injected fault). Please retry later."
            else:
                phrase = HTTPStatus(fault.status).phrase if fault.status in _STATUSES else "Error"
                message = f"{phrase} (injected fault)"
            self._send_error(protocol, fault.status, message, retry_after=fault.retry_after)
        elif fault.kind == "delay":
            if not self.owner._stopping.wait(fault.seconds):
                return False
            self._drop()
        elif fault.kind == "hang":
            if call.release is not None:
                call.release.wait()
            self._drop()
        elif call.stream:  # malformed stream
            bad = b"data: " + _MALFORMED + b"\n\n" if protocol == "openai" else _MALFORMED + b"\n"
            ctype = "text/event-stream" if protocol == "openai" else "application/x-ndjson"
            self._stream(ctype, [bad, bad], [], [])
        else:  # malformed body
            self._send_bytes(200, _MALFORMED, "application/json")
        return True

    def _prepare(self, call: _Call, protocol: Protocol) -> _Reply | None:
        """Validate the model, apply faults and compute the reply (None if already answered)."""
        model = self._request_model(call, protocol)
        if model is None or self._apply_fault(call, protocol):
            return None
        messages = _normalize_messages(call.body.get("messages"))
        try:
            answer = self.owner._next_reply(model, messages)
            calls = _tool_calls(answer) if isinstance(answer, ToolCallReply) else []
        except Exception as exc:
            self._send_error(protocol, 500, f"reply function failed: {exc!r}")
            return None
        text = answer.content if isinstance(answer, ToolCallReply) else str(answer)
        prompt_tokens = max(1, sum(_estimate_tokens(m["content"]) for m in messages))
        generated = _estimate_tokens(text + "".join(json.dumps(c.arguments) for c in calls))
        return _Reply(
            model, text, _split_reply(text), prompt_tokens, generated, _cut(call.fault), calls
        )

    def _prepare_embeddings(
        self, call: _Call, protocol: Protocol, field: Literal["input", "prompt"]
    ) -> _Embeddings | None:
        """Validate the model, apply faults, read ``field`` and embed it (None if answered)."""
        model = self._request_model(call, protocol)
        if model is None or self._apply_fault(call, protocol):
            return None
        native = self.owner._embedding_dimensions(model)
        try:
            if field == "prompt":
                inputs = [_embed_input(call.body.get(field, ""), field, token_ids=False)]
            else:
                inputs = _embed_inputs(call.body.get(field), token_ids=protocol == "openai")
            size = _output_dimensions(call.body.get("dimensions"), native)
        except _FieldError as exc:
            self._send_error(protocol, 400, str(exc), param=exc.param)
            return None
        vectors = [_embedding(item.text, native, size) for item in inputs]
        tokens = sum(item.tokens for item in inputs)
        return _Embeddings(model, vectors, tokens, _cut(call.fault))

    def _send_whole(self, payload: dict[str, Any], cut: int | None) -> None:
        """Send a non-streamed answer; with a cut, send half of it and drop the connection."""
        if cut is None:
            self._send_json(200, payload)
            return
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self._drop()

    def _ollama_chat(self, call: _Call) -> None:
        reply = self._prepare(call, "ollama")
        if reply is None:
            return
        prompt, generated = reply.prompt_tokens, reply.completion_tokens
        stats = {
            "done_reason": "stop",
            "total_duration": 1_000_000 + prompt * 1_000_000 + generated * 20_000_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": prompt,
            "prompt_eval_duration": prompt * 1_000_000,
            "eval_count": generated,
            "eval_duration": generated * 20_000_000,
        }

        def line(content: str, done: bool, calls: list[_ToolCall] | None = None) -> dict[str, Any]:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = [
                    {"function": {"name": c.name, "arguments": c.arguments}} for c in calls
                ]
            return {
                "model": reply.model,
                "created_at": _now_iso(),
                "message": message,
                "done": done,
            }

        if not call.stream:
            self._send_whole({**line(reply.text, True, reply.tool_calls), **stats}, reply.cut)
            return
        content = [_ndjson(line(piece, False)) for piece in reply.pieces]
        if reply.tool_calls:  # Ollama sends the calls whole, in one line before the last
            content.append(_ndjson(line("", False, reply.tool_calls)))
        final = _ndjson({**line("", True), **stats})
        self._stream("application/x-ndjson", [], content, [final], reply.cut)

    def _ollama_embed(self, call: _Call) -> None:
        result = self._prepare_embeddings(call, "ollama", "input")
        if result is None:
            return
        payload = {
            "model": result.model,
            "embeddings": result.vectors,
            "total_duration": 1_000_000 + result.prompt_tokens * 100_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": result.prompt_tokens,
        }
        self._send_whole(payload, result.cut)

    def _ollama_embeddings(self, call: _Call) -> None:
        result = self._prepare_embeddings(call, "ollama", "prompt")
        if result is not None:
            self._send_whole({"embedding": result.vectors[0]}, result.cut)

    def _ollama_tags(self, call: _Call) -> None:
        created = self.owner.created.isoformat().replace("+00:00", "Z")
        models = [
            {
                "name": name,
                "model": name,
                "modified_at": created,
                "size": _fake_size(name),
                "digest": _digest(name),
                "details": _details(name),
            }
            for name in self.owner.models
        ]
        self._send_json(200, {"models": models})

    def _ollama_show(self, call: _Call) -> None:
        name = self.owner._resolve(call.model)
        if name is None:
            self._send_error("ollama", 404, f"model '{call.model}' not found")
            return
        payload = {
            "modelfile": f"# Modelfile generated by modelyard\nFROM {name}\n",
            "parameters": 'stop "<|end|>"',
            "template": "{{ .Prompt }}",
            "details": _details(name),
            "model_info": {
                "general.architecture": "llama",
                "llama.context_length": self.owner._context_length(name),
            },
            "capabilities": ["completion"],
            "modified_at": self.owner.created.isoformat().replace("+00:00", "Z"),
        }
        self._send_json(200, payload)

    def _ollama_pull(self, call: _Call) -> None:
        name = call.model
        if not name:
            self._send_error("ollama", 400, "model is required")
            return
        if not self.owner.pullable:
            self._send_error("ollama", 404, "pull model manifest: file does not exist")
            return
        if self.owner._resolve(name) is None:
            self.owner.add_model(name)
        if not call.stream:
            self._send_json(200, {"status": "success"})
            return
        digest, total = _digest(name), _fake_size(name)
        layer = {"status": f"pulling {digest[7:19]}", "digest": digest, "total": total}
        progress = [_ndjson({**layer, "completed": done}) for done in (0, total // 2, total)]
        tail = [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}]
        frames = [*progress, *(_ndjson(item) for item in [*tail, {"status": "success"}])]
        self._stream("application/x-ndjson", [_ndjson({"status": "pulling manifest"})], frames, [])

    def _ollama_version(self, call: _Call) -> None:
        self._send_json(200, {"version": "0.0.0-modelyard"})

    def _ollama_root(self, call: _Call) -> None:
        self._send_bytes(200, b"Ollama is running", "text/plain; charset=utf-8")

    def _openai_chat(self, call: _Call) -> None:
        reply = self._prepare(call, "openai")
        if reply is None:
            return
        usage = {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        }
        created, cid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:24]}"
        base = {"id": cid, "created": created, "model": reply.model}
        finish = "tool_calls" if reply.tool_calls else "stop"
        if not call.stream:
            message: dict[str, Any] = {"role": "assistant", "content": reply.text}
            if reply.tool_calls:
                message["content"] = reply.text or None
                message["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                    }
                    for c in reply.tool_calls
                ]
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            payload = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            self._send_whole(payload, reply.cut)
            return

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _sse({**base, "object": "chat.completion.chunk", "choices": [choice]})

        options = call.body.get("stream_options")
        tail = [chunk({}, finish)]
        if isinstance(options, dict) and options.get("include_usage"):
            tail.append(
                _sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
            )
        tail.append(b"data: [DONE]\n\n")
        head = [chunk({"role": "assistant", "content": ""})]
        content = [chunk({"content": piece}) for piece in reply.pieces]
        for index, tool in enumerate(reply.tool_calls):
            # The id, type and name come first; the JSON arguments follow in fragments.
            function = {"name": tool.name, "arguments": ""}
            start = {"index": index, "id": tool.id, "type": "function", "function": function}
            content.append(chunk({"tool_calls": [start]}))
            arguments = json.dumps(tool.arguments)
            for at in range(0, len(arguments), 16):
                piece = {"index": index, "function": {"arguments": arguments[at : at + 16]}}
                content.append(chunk({"tool_calls": [piece]}))
        self._stream("text/event-stream", head, content, tail, reply.cut)

    def _openai_embeddings(self, call: _Call) -> None:
        result = self._prepare_embeddings(call, "openai", "input")
        if result is None:
            return
        encoding = call.body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            message = f"encoding_format must be 'float' or 'base64', not {encoding!r}"
            self._send_error("openai", 400, message, param="encoding_format")
            return
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": _base64_floats(vector) if encoding == "base64" else vector,
            }
            for index, vector in enumerate(result.vectors)
        ]
        usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
        payload = {"object": "list", "data": data, "model": result.model, "usage": usage}
        self._send_whole(payload, result.cut)

    def _openai_models(self, call: _Call) -> None:
        created = int(self.owner.created.timestamp())
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "modelyard-local"}
            for name in self.owner.models
        ]
        self._send_json(200, {"object": "list", "data": data})


_Route = tuple[str, Callable[[_Handler, _Call], None]]
_ROUTES: dict[str, _Route] = {
    "/": ("GET", _Handler._ollama_root),
    "/api/version": ("GET", _Handler._ollama_version),
    "/api/tags": ("GET", _Handler._ollama_tags),
    "/api/show": ("POST", _Handler._ollama_show),
    "/api/pull": ("POST", _Handler._ollama_pull),
    _OLLAMA_CHAT: ("POST", _Handler._ollama_chat),
    _OLLAMA_EMBED: ("POST", _Handler._ollama_embed),
    _OLLAMA_EMBEDDINGS: ("POST", _Handler._ollama_embeddings),
    "/v1/models": ("GET", _Handler._openai_models),
    _OPENAI_CHAT: ("POST", _Handler._openai_chat),
    _OPENAI_EMBEDDINGS: ("POST", _Handler._openai_embeddings),
}
_STATUSES = frozenset(s.value for s in HTTPStatus)


def _as_script(replies: Sequence[Reply] | ReplyFn | None) -> list[Reply] | ReplyFn | None:
    if replies is None or callable(replies):
        return replies
    script = [r if isinstance(r, ToolCallReply) else str(r) for r in replies]
    if not script:
        raise ValueError("a reply script needs at least one reply")
    return script


def _tool_calls(reply: ToolCallReply) -> list[_ToolCall]:
    """Return the reply's calls with ids, checking each has a name and an arguments object."""
    calls = []
    for number, item in enumerate(reply.calls):
        name, arguments = item.get("name"), item.get("arguments", {})
        if not isinstance(name, str) or not isinstance(arguments, Mapping):
            raise ValueError(
                f"tool call {number} needs a name and an arguments mapping: {dict(item)!r}"
            )
        calls.append(_ToolCall(f"call_{uuid.uuid4().hex[:24]}", name, dict(arguments)))
    return calls


def _cut(fault: Fault | None) -> int | None:
    """Return the content chunks sent before a ``cut_stream`` fault drops the connection."""
    return fault.after_chunks if fault and fault.kind == "cut_stream" else None


@functools.lru_cache(maxsize=65536)
def _feature_slot(feature: str, dimensions: int) -> tuple[int, float]:
    """Hash a feature to its slot and sign; stable across processes (unlike ``hash``)."""
    value = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
    return value % dimensions, (1.0 if value >> 63 else -1.0)


def _normalized(vector: list[float]) -> list[float]:
    """Scale to unit length; a zero vector stays as it is."""
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


def _embedding(text: str, native: int, size: int) -> list[float]:
    """Embed at the model's ``native`` dimensions, cut to the first ``size`` and renormalise."""
    vector = embed_text(text, native)
    return vector if size >= native else _normalized(vector[:size])


def _output_dimensions(requested: Any, native: int) -> int:
    """Return the vector length asked for by a ``dimensions`` field (None: the model's own)."""
    if requested is None:
        return native
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise _FieldError("dimensions", f"dimensions must be a positive integer, not {requested!r}")
    if requested > native:
        message = f"dimensions {requested} is more than the model's {native} dimensions"
        raise _FieldError("dimensions", message)
    return requested


def _is_token_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def _embed_input(item: Any, field: str, *, token_ids: bool) -> _EmbedInput:
    """Read one text (or, with ``token_ids``, one non-empty list of token ids) to embed."""
    if isinstance(item, str):
        return _EmbedInput(item, _estimate_tokens(item))
    if token_ids and _is_token_ids(item):
        return _EmbedInput(" ".join(str(t) for t in item), len(item))
    if field == "prompt":
        shapes = "a string"
    elif token_ids:
        shapes = "a string, a list of strings, or token ids (a list of ints or of int lists)"
    else:
        shapes = "a string or a list of strings"
    raise _FieldError(field, f"{field} must be {shapes}, not {type(item).__name__}")


def _embed_inputs(raw: Any, *, token_ids: bool) -> list[_EmbedInput]:
    """Read an ``input`` field: one text or token id list, or a non-empty list of them."""
    if raw is None:
        raise _FieldError("input", "input is required: a string or a list of strings")
    if isinstance(raw, str) or (token_ids and _is_token_ids(raw)):
        return [_embed_input(raw, "input", token_ids=token_ids)]
    if not isinstance(raw, list):
        return [_embed_input(raw, "input", token_ids=token_ids)]  # raises: the wrong type
    if not raw:
        raise _FieldError("input", "input is an empty list: give at least one text to embed")
    return [_embed_input(item, "input", token_ids=token_ids) for item in raw]


def _base64_floats(vector: list[float]) -> str:
    """Encode as OpenAI does for ``encoding_format="base64"``: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _parse_body(raw: bytes) -> tuple[dict[str, Any] | None, bool]:
    """Parse a JSON object body; return (body or None, whether the body was invalid)."""
    if not raw.strip():
        return None, False
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None, True
    return (parsed, False) if isinstance(parsed, dict) else (None, True)


def _stream_flag(path: str, body: dict[str, Any] | None) -> bool:
    """Return whether a request streams: Ollama defaults to yes, OpenAI to no."""
    if path not in (_OLLAMA_CHAT, _OPENAI_CHAT, "/api/pull"):
        return False
    return bool((body or {}).get("stream", path != _OPENAI_CHAT))


def _model_field(body: dict[str, Any] | None) -> str | None:
    value = (body or {}).get("model") or (body or {}).get("name")
    return value if isinstance(value, str) else None


def _text_of(content: Any) -> str:
    """Flatten message content given as a string or as a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = (p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
        return "\n".join(t for t in texts if isinstance(t, str) and t)
    return "" if content is None else str(content)


def _normalize_messages(raw: Any) -> list[dict[str, Any]]:
    """Return the messages as dicts whose ``content`` is plain text."""
    if not isinstance(raw, list):
        return []
    return [
        {**m, "role": str(m.get("role", "user")), "content": _text_of(m.get("content"))}
        for m in raw
        if isinstance(m, dict)
    ]


def _estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _split_reply(reply: str) -> list[str]:
    """Split into pieces of a few words that concatenate back to the exact reply."""
    words = _WORD_RE.findall(reply)
    return [
        "".join(words[i : i + _WORDS_PER_CHUNK]) for i in range(0, len(words), _WORDS_PER_CHUNK)
    ]


def _ndjson(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode() + b"\n"


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _digest(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def _fake_size(name: str) -> int:
    return 1_000_000_000 + int(hashlib.sha256(name.encode()).hexdigest()[:6], 16)


def _details(name: str) -> dict[str, Any]:
    size = re.search(r"(\d+(?:\.\d+)?)b\b", name.lower())
    return {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": f"{size.group(1)}B" if size else "7B",
        "quantization_level": "Q4_0",
    }


def _openai_error_type(status: int) -> str:
    named = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_exceeded"}
    return named.get(status, "server_error" if status >= 500 else "invalid_request_error")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server from the command line until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m modelyard.testing.server",
        description="Serve scripted replies over the Ollama and OpenAI-compatible protocols.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=11434, help="port to listen on")
    parser.add_argument(
        "--model", action="append", dest="models", metavar="NAME", help="model to serve (repeat)"
    )
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument(
        "--delay",
        type=float,
        default=0.0,
        help="seconds every chat and embedding request waits before answering",
    )
    parser.add_argument("--verbose", action="store_true", help="log each request to stderr")
    args = parser.parse_args(argv)
    server = LocalModelServer(
        args.models or DEFAULT_MODELS,
        host=args.host,
        port=args.port,
        chunk_delay=args.chunk_delay,
        verbose=args.verbose,
    )
    if args.delay > 0:
        server.inject_fault(Fault.delay(args.delay), times=None)
    try:
        server.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: shells may start us ignoring it
        signal.signal(signum, _interrupt)
    models = ", ".join(server.models)
    print(
        f"modelyard local protocol server (Ollama + OpenAI-compatible) on {server.url}"
        f" \N{EM DASH} models: {models}",
        flush=True,
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
