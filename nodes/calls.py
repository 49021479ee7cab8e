"""Call a configured model: measure it, and turn any provider's failure into a ModelCallError."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import ollama
import openai
from langchain_core.callbacks import BaseCallbackHandler, Callbacks
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig
from langchain_core.tools import BaseTool

from modelyard.configs import ModelConfig, ModelRegistry
from modelyard.state import ModelCall, ModelCallError, ModelErrorKind

_OVERFLOW_WORDS = (
    "context length",
    "context window",
    "maximum context",
    "too many tokens",
    "context_length_exceeded",
    "prompt is too long",
)


async def call_model(
    registry: ModelRegistry,
    name: str,
    messages: Sequence[BaseMessage],
    *,
    step: str,
    overrides: Mapping[str, Any] | None = None,
    config: RunnableConfig | None = None,
    attempt: int = 1,
    tools: Sequence[BaseTool] = (),
) -> tuple[AIMessage, ModelCall]:
    """Call model `name` with `messages`; return its answer and a record of the call.

    When the run streams tokens (`stream_mode="messages"`) the model streams, and the record
    has the time to the first token. With `tools`, they are bound to the model
    (`bind_tools`) and the answer may hold `tool_calls` instead of text.

    Raises:
        ModelCallError: whatever failed, with its kind, the model and the URL.
    """
    model = registry.get(name)
    client = registry.chat_model(name, overrides)
    if tools:
        client = with_tools(client, tools)
    started = time.perf_counter()
    first_token = _FirstToken()
    config = {**(config or {})}
    config["callbacks"] = _with_handler(config.get("callbacks"), first_token)
    try:
        # ainvoke streams by itself when the run streams tokens (stream_mode="messages").
        reply = await client.ainvoke(list(messages), config)
    except ModelCallError as exc:
        exc.attempts = attempt
        exc.streamed_tokens = first_token.count
        raise
    except Exception as exc:
        error = translate_error(exc, model, registry.base_url(name))
        if error is None:
            raise
        error.attempts = attempt
        error.streamed_tokens = first_token.count
        raise error from exc
    message = reply if isinstance(reply, AIMessage) else AIMessage(content=reply.content)
    if not isinstance(message.content, str):
        error = ModelCallError(
            ModelErrorKind.MALFORMED_RESPONSE,
            model=name,
            url=registry.base_url(name),
            detail=f"expected text, got {type(message.content).__name__} content",
        )
        error.attempts, error.streamed_tokens = attempt, first_token.count
        raise error
    latency_ms = (time.perf_counter() - started) * 1000
    usage: dict[str, Any] = dict(message.usage_metadata or {})
    input_tokens = int(usage.get("input_tokens", 0))
    output_tokens = int(usage.get("output_tokens", 0))
    record = ModelCall(
        step=step,
        model=name,
        provider=model.provider,
        latency_ms=round(latency_ms, 2),
        first_token_ms=round((first_token.at - started) * 1000, 2) if first_token.at else None,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost=model.cost.of(input_tokens, output_tokens),
        attempts=attempt,
        prompt=[{"role": m.type, "content": str(m.content)} for m in messages],
    )
    return message, record


def with_tools(client: Runnable[Any, Any], tools: Sequence[BaseTool]) -> Runnable[Any, Any]:
    """Return `client` with `tools` bound, keeping what was bound to it (e.g. `stop`).

    Raises:
        TypeError: the client cannot call tools (it has no `bind_tools`).
    """
    if isinstance(client, RunnableBinding):
        return with_tools(client.bound, tools).bind(**client.kwargs)
    bind_tools = getattr(client, "bind_tools", None)
    if bind_tools is None:
        raise TypeError(f"{type(client).__name__} cannot bind tools")
    bound: Runnable[Any, Any] = bind_tools(list(tools))
    return bound


class _FirstToken(BaseCallbackHandler):
    """Notes when the first token of a streamed answer arrives, and counts the tokens.

    A plain handler run inline: an async one would cost an asyncio task per token.
    """

    run_inline = True

    def __init__(self) -> None:
        self.at: float | None = None
        self.count = 0

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], **kwargs: Any
    ) -> None:
        """Nothing to note. (Without this, LangChain falls back to `on_llm_start` and
        first turns every message of the prompt into text for it, to no use.)"""

    def on_llm_new_token(self, token: Any, **kwargs: Any) -> None:
        if token:
            self.count += 1
            if self.at is None:
                self.at = time.perf_counter()


def _with_handler(callbacks: Callbacks, handler: BaseCallbackHandler) -> Callbacks:
    """Return `callbacks` with `handler` added, whatever form they came in."""
    if callbacks is None:
        return [handler]
    if isinstance(callbacks, list):
        return [*callbacks, handler]
    manager = callbacks.copy()
    manager.add_handler(handler, inherit=False)
    return manager


def translate_error(exc: BaseException, model: ModelConfig, url: str) -> ModelCallError | None:
    """Return the ModelCallError a provider's exception means, or None for a bug of ours."""

    def error(kind: ModelErrorKind, detail: str, **extra: Any) -> ModelCallError:
        return ModelCallError(
            kind, model=model.name, url=url, detail=detail, hint=_hint(kind, model, url), **extra
        )

    if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException | asyncio.TimeoutError):
        return error(ModelErrorKind.TIMEOUT, f"no answer within {model.timeout:g} s")
    if isinstance(exc, openai.APIStatusError):
        return _from_status(error, exc.status_code, _openai_message(exc), exc.response.headers)
    if isinstance(exc, ollama.ResponseError):
        # ollama raises ResponseError "from None"; the HTTP error is still its __context__.
        response = getattr(exc.__cause__ or exc.__context__, "response", None)
        headers = response.headers if isinstance(response, httpx.Response) else None
        return _from_status(error, exc.status_code, exc.error, headers)
    if isinstance(exc, httpx.HTTPStatusError):
        return _from_status(
            error, exc.response.status_code, exc.response.text[:300], exc.response.headers
        )
    dropped = _dropped_connection(exc)
    if dropped is not None:
        return error(ModelErrorKind.CONNECTION, f"the connection dropped mid-answer ({dropped})")
    if isinstance(exc, openai.APIConnectionError | httpx.ConnectError | ConnectionError):
        return error(ModelErrorKind.CONNECTION, "could not connect")
    if isinstance(exc, openai.APIResponseValidationError | json.JSONDecodeError):
        return error(ModelErrorKind.MALFORMED_RESPONSE, f"unreadable answer ({exc})")
    if isinstance(exc, ValueError | KeyError | TypeError) and _from_client_library(exc):
        return error(ModelErrorKind.MALFORMED_RESPONSE, f"unreadable answer ({exc!r})")
    return None


def _from_status(
    error: Any, status: int, message: str, headers: httpx.Headers | Mapping[str, str] | None
) -> ModelCallError:
    detail = message.strip() or "no detail"
    lowered = detail.lower()
    if status == 429:
        retry_after = _retry_after(headers)
        return error(ModelErrorKind.RATE_LIMITED, detail, status=status, retry_after=retry_after)
    if status in (401, 403):
        return error(ModelErrorKind.AUTH, detail, status=status)
    if status < 100:
        # An error line inside a 200 stream (Ollama reports status -1): the server failed.
        return error(ModelErrorKind.SERVER_ERROR, detail, status=None)
    if status == 404:
        return error(ModelErrorKind.NOT_FOUND, detail, status=status)
    if any(word in lowered for word in _OVERFLOW_WORDS):
        return error(ModelErrorKind.CONTEXT_OVERFLOW, detail, status=status)
    if status >= 500:
        return error(ModelErrorKind.SERVER_ERROR, detail, status=status)
    if status == 200:
        return error(ModelErrorKind.MALFORMED_RESPONSE, detail, status=status)
    return error(ModelErrorKind.BAD_REQUEST, detail, status=status)


def _dropped_connection(exc: BaseException) -> BaseException | None:
    """Return the error in `exc`'s causes that says a connection closed mid-answer."""
    seen: BaseException | None = exc
    while seen is not None:
        name = type(seen).__name__
        module = type(seen).__module__.split(".")[0]
        if module in ("httpx", "httpx2", "httpcore") and name in (
            "RemoteProtocolError",
            "ReadError",
            "IncompleteRead",
        ):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _retry_after(headers: httpx.Headers | Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _openai_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(getattr(exc, "message", exc))


def _from_client_library(exc: BaseException) -> bool:
    """Whether an exception was raised while a client library parsed a server's answer."""
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith(("ollama", "openai", "langchain_ollama", "langchain_openai")):
            return True
        tb = tb.tb_next
    return False


def _hint(kind: ModelErrorKind, model: ModelConfig, url: str) -> str:
    where = f"providers.{model.provider}.base_url or the model's base_url in the config"
    if kind is ModelErrorKind.CONNECTION and model.provider == "ollama":
        return (
            f"Is Ollama running at {url}? Start it with `ollama serve` (and "
            f"`ollama pull {model.model}`), or point {where} (or OLLAMA_HOST) elsewhere"
        )
    if kind is ModelErrorKind.CONNECTION:
        return f"Is the server at {url} running? Start it, or point {where} elsewhere"
    if kind is ModelErrorKind.NOT_FOUND and model.provider == "ollama":
        return f"The server does not have {model.model!r}; run `ollama pull {model.model}`"
    if kind is ModelErrorKind.NOT_FOUND:
        return f"The server does not serve {model.model!r}; check the model id in the config"
    if kind is ModelErrorKind.TIMEOUT:
        return f"Raise `timeout` for model {model.name!r} in the config if it needs longer"
    if kind is ModelErrorKind.AUTH:
        return "Check the API key (set it in the environment, e.g. OPENAI_API_KEY)"
    if kind is ModelErrorKind.CONTEXT_OVERFLOW:
        return "Shorten the prompt or use a model with a larger context window"
    if kind is ModelErrorKind.RATE_LIMITED:
        return "The server is rate-limiting; wait, or lower the request rate"
    return ""
