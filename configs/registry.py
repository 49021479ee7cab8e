"""Turn a configured model into a LangChain chat model: ChatOllama, ChatOpenAI or init_chat_model.

Every client gets the model's timeout and no retries of its own (modelyard's retry policy
retries); OpenAI-compatible local servers never get the Responses API; and a client is
never reused across event loops.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

import httpx
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable

from modelyard.configs.schema import (
    DEFAULT_OLLAMA_URL,
    OPENAI_API_URL,
    OPENAI_NATIVE_OPTIONS,
    GenerationOptions,
    ModelConfig,
)
from modelyard.configs.schema import ModelyardConfig as Config
from modelyard.configs.server_models import ServerModels
from modelyard.configs.transport import PooledTransport
from modelyard.state import ConfigError, ConfigProblem, UnknownModelError

ChatRunnable = Runnable[LanguageModelInput, BaseMessage]
_PROVIDER_PACKAGES = {
    "anthropic": "langchain_anthropic",
    "azure_openai": "langchain_openai",
    "google_genai": "langchain_google_genai",
    "google_vertexai": "langchain_google_vertexai",
    "groq": "langchain_groq",
    "mistralai": "langchain_mistralai",
    "fireworks": "langchain_fireworks",
    "together": "langchain_together",
    "deepseek": "langchain_deepseek",
    "xai": "langchain_xai",
    "bedrock": "langchain_aws",
    "bedrock_converse": "langchain_aws",
    "cohere": "langchain_cohere",
    "openrouter": "langchain_openrouter",
}
_NO_KEY = "not-needed"

log = logging.getLogger("modelyard.config")


class ModelRegistry:
    """The configured models, and the chat-model clients that call them."""

    def __init__(
        self, config: Config, *, clients: Mapping[str, ChatRunnable] | None = None
    ) -> None:
        """Check that every model can get a client, then hold the config.

        Args:
            config: The checked config.
            clients: Ready-made chat models by model name, used instead of building one
                (scripted models in tests and notebooks, or a client you configured yourself).

        Raises:
            ConfigError: an option the provider lacks, or a provider package not installed.
        """
        self.config = config
        self._by_name = {model.name: model for model in config.models}
        self._lock = threading.Lock()
        # Clients per event loop; entries of loops that have closed are dropped.
        self._per_loop: dict[asyncio.AbstractEventLoop, dict[Any, Any]] = {}
        self._clients = dict(clients or {})
        for name in self._clients:
            self.get(name, where="(in clients=)")
        self.server_models = ServerModels(config, unchecked=self._clients)
        """What each model's server has; `ensure` before a call, `check_all` at start-up."""
        problems = [
            ConfigProblem(config.source, f"models[{index}].{'.'.join(field)}", message)
            for index, field, message in client_problems(config)
        ]
        if problems:
            raise ConfigError(problems)

    @property
    def names(self) -> list[str]:
        """Return the configured model names, in config order."""
        return list(self._by_name)

    def get(self, name: str, *, where: str = "") -> ModelConfig:
        """Return a model's config by name.

        Raises:
            UnknownModelError: listing the configured names.
        """
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownModelError(name, self.names, where) from None

    def base_url(self, name: str) -> str:
        """Return the URL a model's requests go to (for errors and checks)."""
        return self.config.base_url_for(self.get(name)) or "(provider default)"

    def chat_model(self, name: str, overrides: Mapping[str, Any] | None = None) -> ChatRunnable:
        """Return a chat model for `name`, built for the running event loop.

        Args:
            name: A configured model's name.
            overrides: Generation options for this call only (`temperature`, `num_ctx`, ...).
        """
        if name in self._clients:
            self.get(name)
            return self._clients[name]
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        # Under the lock: a client is never cached from a config `update_model` replaced.
        with self._lock:
            model = self.get(name)
            options = model.options
            if overrides:
                options = GenerationOptions.model_validate({**options.set_values(), **overrides})
            if loop is None:
                return self._build(model, options)  # no loop to tie a cached client to
            key = (name, json.dumps(options.set_values(), sort_keys=True))
            for stale in [other for other in self._per_loop if other.is_closed()]:
                del self._per_loop[stale]
            cache = self._per_loop.setdefault(loop, {})
            client = cache.get(key)
            if client is None:
                client = cache[key] = self._build(model, options)
        return client

    def update_model(self, name: str, /, **changes: Any) -> ModelConfig:
        """Change model `name`'s config for every call from now on; return its new config.

        The change is checked as the config file is (the schema, then what the model's
        client accepts), and made whole or not at all. Calls under way finish as
        they started; the next call to the model gets a client built from the new config
        (its options, timeout, URL), in every event loop. Selection sees new capabilities,
        roles, cost or context window at its next pick. A ready-made client (`clients=`)
        is kept, and the rest of the change still applies.

        Args:
            name: A configured model's name.
            **changes: Generation options (`temperature=0.1`, `num_ctx=8192`), or model
                fields: `options`, `capabilities` (or `weights`), `cost`, `supports`,
                `initial_stats` and `prompts` change the sub-fields they name;
                `timeout`, `system_prompt`, `roles`, `context_window`, `base_url`, ...
                take the new value. None unsets an option, or puts back a default.

        Returns:
            The model's new config.

        Raises:
            ConfigError: every problem with the change (unknown model or field, a value
                out of range, an option the provider lacks); nothing was changed.
        """
        # Imported here: the updates module checks changes with this module's client_problems.
        from modelyard.configs.updates import apply_model_changes, describe_changes

        with self._lock:
            old = self._by_name.get(name)
            config = apply_model_changes(self.config, name, changes)
            self.config = config
            self._by_name = {model.name: model for model in config.models}
            for cache in self._per_loop.values():
                for key in [key for key in cache if key[0] == name]:
                    del cache[key]
            self.server_models.update_config(config, name)
            model = self._by_name[name]
        differences = describe_changes(old, model) if old is not None else []
        log.info(
            "model %s changed by update_model: %s", name, "; ".join(differences) or "no change"
        )
        return model

    def copy(self) -> ModelRegistry:
        """Return a registry of the same config and ready-made clients, with its own caches.

        Changes made to one (`update_model`) do not reach the other.
        """
        return ModelRegistry(self.config, clients=self._clients)

    def _build(self, model: ModelConfig, options: GenerationOptions) -> ChatRunnable:
        if model.protocol == "ollama":
            return self._ollama(model, options)
        if model.protocol == "openai":
            return self._openai(model, options)
        return self._init_chat_model(model, options)

    def _ollama(self, model: ModelConfig, options: GenerationOptions) -> ChatRunnable:
        from modelyard.configs.ollama import WholeAnswerChatOllama

        # All of Ollama's options, ChatOllama's fields or not. Without num_ctx, Ollama would
        # cut prompts at its own small default window without saying so.
        ollama_options = options.ollama_options()
        ollama_options.setdefault("num_ctx", model.context_window)
        base_url = self.config.base_url_for(model) or DEFAULT_OLLAMA_URL
        return WholeAnswerChatOllama(
            model=model.model,
            base_url=base_url,
            client_kwargs={"timeout": model.timeout},
            # Only the async client: the sync one (ChatOllama builds both) needs a sync transport.
            async_client_kwargs={"transport": PooledTransport.for_url(base_url)},
            disable_streaming=not model.supports.streaming,
            ollama_options=ollama_options,
        )

    def _openai(self, model: ModelConfig, options: GenerationOptions) -> ChatRunnable:
        from langchain_openai import ChatOpenAI

        native, extra = options.openai_params()
        key = self.config.api_key_for(model)
        local = self.config.is_local_openai_server(model)
        kwargs: dict[str, Any] = {
            "model": model.model,
            "base_url": self.config.base_url_for(model),
            # Local servers need some key; OpenAI's own reads OPENAI_API_KEY when none is set.
            "api_key": key if key is not None or not local else _NO_KEY,
            "timeout": model.timeout,
            "max_retries": 0,
            "stream_usage": True,
            "disable_streaming": not model.supports.streaming,
            **native,
        }
        if local:
            kwargs["use_responses_api"] = False
            if extra:
                kwargs["extra_body"] = extra
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            # ChatOpenAI otherwise shares one async client across instances and loops.
            transport = PooledTransport.for_url(kwargs["base_url"] or OPENAI_API_URL)
            kwargs["http_async_client"] = httpx.AsyncClient(
                timeout=model.timeout, transport=transport
            )
        return ChatOpenAI(**kwargs)

    def _init_chat_model(self, model: ModelConfig, options: GenerationOptions) -> BaseChatModel:
        return build_init_chat_model(self.config, model, options)


def client_problems(config: Config) -> list[tuple[int, tuple[str, ...], str]]:
    """Return (model index, field path within the model, message) for each client problem."""
    problems: list[tuple[int, tuple[str, ...], str]] = []
    for index, model in enumerate(config.models):
        if model.protocol == "openai" and not config.is_local_openai_server(model):
            for option in sorted(set(model.options.set_values()) - OPENAI_NATIVE_OPTIONS):
                problems.append(
                    (
                        index,
                        ("options", option),
                        f"OpenAI's API has no option {option!r}; remove it, or set base_url "
                        "to an OpenAI-compatible server that accepts it",
                    )
                )
        if model.protocol == "init_chat_model":
            message = _init_chat_model_problem(config, model)
            if message:
                problems.append((index, ("model",), message))
    return problems


def _init_chat_model_problem(config: Config, model: ModelConfig) -> str | None:
    """Try to build an init_chat_model client; return why it cannot be built, if so."""
    package = _PROVIDER_PACKAGES.get(model.provider)
    if package and not importlib.util.find_spec(package):
        install = package.replace("_", "-")
        return f"provider {model.provider!r} needs the package {install}; pip install it"
    try:
        build_init_chat_model(config, model, model.options)
    except ImportError as exc:
        return f"provider {model.provider!r} needs a package that is not installed: {exc}"
    except Exception as exc:  # the provider's own validation: missing key, bad option, ...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"cannot build a {model.provider!r} client: {first_line}"
    return None


def build_init_chat_model(
    config: Config, model: ModelConfig, options: GenerationOptions
) -> BaseChatModel:
    """Return an init_chat_model client with the model's timeout and no retries of its own."""
    from langchain.chat_models import init_chat_model

    kwargs: dict[str, Any] = {"timeout": model.timeout, "max_retries": 0}
    kwargs.update(options.set_values())
    key = config.api_key_for(model)
    if key is not None:
        kwargs["api_key"] = key
    base_url = config.base_url_for(model)
    if base_url:
        kwargs["base_url"] = base_url
    return init_chat_model(model.model, model_provider=model.provider, **kwargs)
