"""Ask each configured server whether it is up and has the model (Ollama tags, /v1/models)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from modelyard.configs.schema import ModelConfig, ModelyardConfig


@dataclass(frozen=True)
class Availability:
    """What one model's server said."""

    model: str
    url: str | None
    reachable: bool | None
    """True/False when asked; None when the provider cannot be asked."""
    available: bool | None
    """Whether the server lists the model; None when unknown."""
    detail: str = ""


async def check_models(config: ModelyardConfig, *, timeout: float = 3.0) -> list[Availability]:
    """Return each model's availability, asking each server once."""
    listings: dict[tuple[str, str], asyncio.Task[tuple[set[str] | None, str]]] = {}
    keys = [listing_key(config, model) for model in config.models]
    async with httpx.AsyncClient(timeout=timeout) as client:
        for model, key in zip(config.models, keys, strict=True):
            if key is not None and key not in listings:
                listings[key] = asyncio.create_task(list_server_models(client, config, model))
        results = []
        for model, key in zip(config.models, keys, strict=True):
            url = config.base_url_for(model)
            if key is None:
                results.append(Availability(model.name, url, None, None, "not checked"))
                continue
            names, detail = await listings[key]
            if names is None:
                results.append(Availability(model.name, url, False, None, detail))
            else:
                results.append(Availability(model.name, url, True, is_listed(model, names), detail))
        return results


def http_client(url: str, timeout: float | httpx.Timeout) -> httpx.AsyncClient:
    """Return an HTTP client for the server at `url`.

    Plain `http://` needs no certificates, and loading them costs 0.1 s of CPU per client.
    """
    return httpx.AsyncClient(timeout=timeout, verify=url.startswith("https://"))


def listing_key(config: ModelyardConfig, model: ModelConfig) -> tuple[str, str] | None:
    """Return (protocol, URL) of the server that can list a model, or None when none can."""
    url = config.base_url_for(model)
    if url is None or model.protocol == "init_chat_model":
        return None
    return model.protocol, url


def is_listed(model: ModelConfig, names: set[str]) -> bool:
    """Whether a server's listing has the model (Ollama's `x` is `x:latest`)."""
    if model.model in names:
        return True
    return (
        model.protocol == "ollama" and ":" not in model.model and f"{model.model}:latest" in names
    )


async def list_server_models(
    client: httpx.AsyncClient, config: ModelyardConfig, model: ModelConfig
) -> tuple[set[str] | None, str]:
    """Return the models on `model`'s server (None when it cannot be asked) and why not.

    Ollama's `/api/tags` or an OpenAI-compatible server's `/models`; call it only for a model
    that has a `listing_key`.
    """
    key = listing_key(config, model)
    if key is None:
        raise ValueError(f"model {model.name!r} is on no server that lists its models")
    protocol, url = key
    headers = {}
    api_key = config.api_key_for(model)
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key.get_secret_value()}"
    endpoint = (
        f"{url.rstrip('/')}/api/tags" if protocol == "ollama" else f"{url.rstrip('/')}/models"
    )
    try:
        response = await client.get(endpoint, headers=headers)
        response.raise_for_status()
        payload = response.json()
    except httpx.HTTPStatusError as exc:
        return None, f"{endpoint} answered HTTP {exc.response.status_code}"
    except httpx.HTTPError as exc:
        return None, f"cannot reach {endpoint} ({type(exc).__name__})"
    except ValueError:
        return None, f"{endpoint} did not answer JSON"
    field_list = "models" if protocol == "ollama" else "data"
    fields: tuple[str, ...] = ("name", "model") if protocol == "ollama" else ("id",)
    listed = payload.get(field_list) if isinstance(payload, dict) else None
    if not isinstance(listed, list) or not all(isinstance(m, dict) for m in listed):
        expected = f"a `{field_list}` list of objects"
        return None, f"{endpoint} did not answer the expected JSON ({expected})"
    return {str(m.get(field)) for m in listed for field in fields}, ""
