"""Pull a model into an Ollama server through `/api/pull`, reporting progress as it streams."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from modelyard.configs.availability import http_client

#: Seconds a pull may go without a progress line (Ollama is silent while it verifies).
PULL_READ_TIMEOUT = 600.0


@dataclass(frozen=True)
class PullProgress:
    """One progress report of a pull, as Ollama streams it."""

    model: str
    """The configured model's name."""
    model_id: str
    """The id being pulled (`deepseek-coder:6.7b-instruct`)."""
    url: str
    """The Ollama server pulling it."""
    status: str
    """Ollama's status: `pulling manifest`, `pulling <digest>`, `verifying sha256 digest`,
    `writing manifest`, `success`."""
    completed: int | None = None
    """Bytes of the current layer pulled so far, when the status is a download."""
    total: int | None = None
    """Bytes of the current layer, when the status is a download."""

    @property
    def done(self) -> bool:
        """Whether the pull has finished."""
        return self.status == "success"

    def __str__(self) -> str:
        share = ""
        if self.total and self.completed is not None:
            share = f" {self.completed / self.total:.0%} of {human_size(self.total)}"
        return f"pull {self.model} ({self.model_id}) into {self.url}: {self.status}{share}"

    def as_event(self) -> dict[str, Any]:
        """Return the custom stream event (`stream_mode="custom"`) that reports it."""
        return {
            "modelyard_event": "pull",
            "model": self.model,
            "model_id": self.model_id,
            "url": self.url,
            "status": self.status,
            "completed": self.completed,
            "total": self.total,
            "detail": str(self),
        }


class PullError(Exception):
    """A pull that failed; the message says why, in the server's words where it gave any."""


async def pull_model(
    url: str,
    model: str,
    model_id: str,
    report: Callable[[PullProgress], None],
    *,
    connect_timeout: float = 5.0,
) -> None:
    """Pull `model_id` into the Ollama server at `url`, calling `report` for each line.

    Args:
        url: The Ollama server's base URL.
        model: The configured model's name, for the reports.
        model_id: The id to pull.
        report: Called with every progress line, the last one `success`.
        connect_timeout: Seconds to wait for the server to accept the connection.

    Raises:
        PullError: the server refused or failed the pull (an HTTP error, or an `error` line
            in the stream), could not be reached, or ended the stream before `success`.
    """
    endpoint = f"{url.rstrip('/')}/api/pull"
    timeout = httpx.Timeout(PULL_READ_TIMEOUT, connect=connect_timeout)
    finished = False
    try:
        async with (
            http_client(url, timeout) as client,
            client.stream("POST", endpoint, json={"model": model_id, "stream": True}) as response,
        ):
            if response.status_code >= 400:
                body = (await response.aread()).decode(errors="replace")
                raise PullError(f"/api/pull answered HTTP {response.status_code}: {_why(body)}")
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                try:
                    payload = json.loads(line)
                except ValueError:
                    message = f"{endpoint} sent a line that is not JSON: {line[:200]}"
                    raise PullError(message) from None
                if not isinstance(payload, dict):
                    raise PullError(f"{endpoint} sent a line that is not an object: {line[:200]}")
                if payload.get("error"):
                    raise PullError(str(payload["error"]))
                progress = PullProgress(
                    model=model,
                    model_id=model_id,
                    url=url,
                    status=str(payload.get("status", "")),
                    completed=_count(payload.get("completed")),
                    total=_count(payload.get("total")),
                )
                report(progress)
                finished = finished or progress.done
    except httpx.TimeoutException:
        raise PullError(f"{endpoint} sent nothing for {PULL_READ_TIMEOUT:g} s") from None
    except httpx.HTTPError as exc:
        raise PullError(f"cannot reach {endpoint} ({type(exc).__name__}: {exc})") from None
    if not finished:
        raise PullError(f"{endpoint} ended the pull without saying `success`")


def _why(body: str) -> str:
    """Return the `error` of a JSON error body, else the body's start."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body.strip()[:300] or "no detail"
    if isinstance(payload, dict) and payload.get("error"):
        return str(payload["error"])
    return body.strip()[:300]


def human_size(size: int) -> str:
    """Return a byte count the way a person reads it: `1.2 GB`, `640 MB`, `12 B`."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
