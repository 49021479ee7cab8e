"""Turn a configured model into a LangChain chat model: ChatOllama, ChatOpenAI or init_chat_model.

Every client gets the model's timeout and no retries of its own (modelyard's retry policy
retries); OpenAI-compatible local servers never get the Responses API; and a client is
never reused across event loops.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import httpx
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable

from modelyard.configs.schema import OPENAI_NATIVE_OPTIONS, GenerationOptions, ModelConfig
from modelyard.configs.schema import ModelyardConfig as Config
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
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, Any]]
        self._per_loop = weakref.WeakKeyDictionary()
        self._no_loop: dict[Any, Any] = {}
        self._clients = dict(clients or {})
        for name in self._clients:
            self.get(name, where="(in clients=)")
        problems = [p for index, m in enumerate(config.models) for p in self._check(index, m)]
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
        model = self.get(name)
        if name in self._clients:
            return self._clients[name]
        options = model.options
        if overrides:
            options = GenerationOptions.model_validate({**options.set_values(), **overrides})
        key = (name, json.dumps(options.set_values(), sort_keys=True))
        cache = self._cache_for_current_loop()
        with self._lock:
            client = cache.get(key)
            if client is None:
                client = cache[key] = self._build(model, options)
        return client

    def _cache_for_current_loop(self) -> dict[Any, Any]:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return self._no_loop
        with self._lock:
            return self._per_loop.setdefault(loop, {})

    def _build(self, model: ModelConfig, options: GenerationOptions) -> ChatRunnable:
        if model.protocol == "ollama":
            return self._ollama(model, options)
        if model.protocol == "openai":
            return self._openai(model, options)
        return self._init_chat_model(model, options)

    def _ollama(self, model: ModelConfig, options: GenerationOptions) -> ChatRunnable:
        from langchain_ollama import ChatOllama

        client = ChatOllama(
            model=model.model,
            base_url=self.config.base_url_for(model),
            client_kwargs={"timeout": model.timeout},
            disable_streaming=not model.supports.streaming,
        )
        # ChatOllama has no field for several Ollama options (min_p, typical_p, penalties,
        # num_keep, ...); a bound `options` object carries all of them.
        return client.bind(options=options.ollama_options())

    def _openai(self, model: ModelConfig, options: GenerationOptions) -> ChatRunnable:
        from langchain_openai import ChatOpenAI

        native, extra = options.openai_params()
        key = self.config.api_key_for(model)
        kwargs: dict[str, Any] = {
            "model": model.model,
            "base_url": self.config.base_url_for(model),
            "api_key": key if key is not None else _NO_KEY,
            "timeout": model.timeout,
            "max_retries": 0,
            "stream_usage": True,
            "disable_streaming": not model.supports.streaming,
            **native,
        }
        if self.config.is_local_openai_server(model):
            kwargs["use_responses_api"] = False
            if extra:
                kwargs["extra_body"] = extra
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            # ChatOpenAI otherwise shares one async client across instances and loops.
            kwargs["http_async_client"] = httpx.AsyncClient(timeout=model.timeout)
        return ChatOpenAI(**kwargs)

    def _init_chat_model(self, model: ModelConfig, options: GenerationOptions) -> BaseChatModel:
        from langchain.chat_models import init_chat_model

        kwargs: dict[str, Any] = {"timeout": model.timeout, "max_retries": 0}
        kwargs.update(options.set_values())
        key = self.config.api_key_for(model)
        if key is not None:
            kwargs["api_key"] = key
        base_url = self.config.base_url_for(model)
        if base_url:
            kwargs["base_url"] = base_url
        return init_chat_model(model.model, model_provider=model.provider, **kwargs)

    def _check(self, index: int, model: ModelConfig) -> list[ConfigProblem]:
        problems = []
        if model.protocol == "openai" and not self.config.is_local_openai_server(model):
            for option in sorted(set(model.options.set_values()) - OPENAI_NATIVE_OPTIONS):
                problems.append(
                    ConfigProblem(
                        self.config.source,
                        f"models[{index}].options.{option}",
                        f"OpenAI's API has no option {option!r}; remove it, or set base_url "
                        "to an OpenAI-compatible server that accepts it",
                    )
                )
        package = _PROVIDER_PACKAGES.get(model.provider)
        if (
            model.protocol == "init_chat_model"
            and package
            and not importlib.util.find_spec(package)
        ):
            problems.append(
                ConfigProblem(
                    self.config.source,
                    f"models[{index}].provider",
                    f"provider {model.provider!r} needs the package "
                    f"{package.replace('_', '-')}; pip install it",
                )
            )
        return problems
