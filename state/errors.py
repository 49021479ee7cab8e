"""Errors a user can act on: what was wrong, where, and what to do."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ModelyardError(Exception):
    """Base of every error modelyard raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a config file: where it is and what is wrong."""

    file: str
    """The file the problem is in."""
    path: str
    """The field path, e.g. `models[1].capabilities.planing` (empty for the whole file)."""
    message: str
    """What is wrong and what was expected."""
    line: int | None = None
    """1-based line of the field, when known."""
    column: int | None = None
    """1-based column of the field, when known."""

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        field = f" {self.path}:" if self.path else ""
        return f"{where}:{field} {self.message}"


class ConfigError(ModelyardError):
    """A config that cannot be used; lists every problem found, one per line."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))


class UnknownModelError(ModelyardError):
    """A model name that the config does not define."""

    def __init__(self, name: str, available: list[str], where: str = "") -> None:
        self.name = name
        self.available = list(available)
        self.where = where
        listing = ", ".join(self.available) or "(none)"
        origin = f" {where}" if where else ""
        super().__init__(
            f"unknown model {name!r}{origin}; configured models: {listing}. "
            "Use one of these names or add the model to the config."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.available, self.where))


class NoModelAvailableError(ModelyardError):
    """No configured model can take a step; says why each one was left out."""

    def __init__(
        self,
        step: str,
        task_type: str,
        reasons: dict[str, str],
        back_in: dict[str, float] | None = None,
    ) -> None:
        self.step = step
        self.task_type = task_type
        self.reasons = dict(reasons)
        self.back_in = dict(back_in or {})
        """Seconds until each cooled-down model may take calls again."""
        detail = "; ".join(f"{name}: {why}" for name, why in self.reasons.items()) or "none"
        advice = (
            "Wait for a cooled-down model to come back (see `modelyard stats`), or add models."
            if self.back_in
            else "Add a model with this role to the config, or relax the task's requirements."
        )
        super().__init__(
            f"no model can take the {step} step of a {task_type} task ({detail}). {advice}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.step, self.task_type, self.reasons, self.back_in))


class AttemptsExhaustedError(ModelyardError):
    """A step failed on every model it tried; lists each attempt and why no other was left."""

    def __init__(
        self, step: str, attempts: list[dict[str, Any]], remaining: dict[str, str] | None = None
    ) -> None:
        self.step = step
        self.attempts = [dict(a) for a in attempts]
        """One record per model tried: model, kind, message, calls."""
        self.remaining = dict(remaining or {})
        """Why each model not tried was left out."""
        lines = [
            f"{i}. {a['model']}: {a['kind']} after {a.get('calls', 1)} "
            f"call{'s' if a.get('calls', 1) != 1 else ''}: {a['message']}"
            for i, a in enumerate(self.attempts, 1)
        ]
        tried = f"the {step} step failed on {len(self.attempts)} model"
        tried += "s" if len(self.attempts) != 1 else ""
        others = "; ".join(f"{name}: {why}" for name, why in self.remaining.items())
        tail = f"\nNo other model could take it ({others})." if others else ""
        super().__init__(f"{tried}:\n" + "\n".join(lines) + tail)

    def as_record(self) -> dict[str, Any]:
        """Return a JSON-safe summary for the task's error field."""
        return {
            "kind": "all_models_failed",
            "step": self.step,
            "attempts": self.attempts,
            "remaining": self.remaining,
            "message": str(self),
        }

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.step, self.attempts, self.remaining))


class InvalidTaskError(ModelyardError):
    """A task that cannot run as given (an empty prompt, an unknown task type, ...)."""


#: How many of a server's models an error lists before it says how many more there are.
LISTED_MODELS = 20


@dataclass(frozen=True)
class MissingModel:
    """A configured model that its server does not have."""

    name: str
    """The configured model's name."""
    model_id: str
    """The id the server was asked for (the config's `model:`)."""
    url: str
    """The server's URL."""
    protocol: str
    """`ollama`, or `openai` for OpenAI and OpenAI-compatible servers."""
    available: tuple[str, ...]
    """The models the server has."""
    pull_error: str | None = None
    """Why pulling the model failed, when modelyard tried."""

    @property
    def server(self) -> str:
        """Return what kind of server it is, for messages."""
        if self.protocol == "ollama":
            return "the Ollama server"
        if "api.openai.com" in self.url:
            return "OpenAI's API"
        return "the OpenAI-compatible server"

    @property
    def detail(self) -> str:
        """Return what is wrong: the server lacks the model, and what it has instead."""
        text = f"{self.server} has no model {self.model_id!r}; it has: {self.listing}"
        close = difflib.get_close_matches(self.model_id, self.available, n=1, cutoff=0.6)
        if close:
            text += f" (did you mean {close[0]!r}?)"
        if self.pull_error:
            text += f"; pulling it failed: {self.pull_error}"
        return text

    @property
    def listing(self) -> str:
        """Return the server's models, sorted, the first `LISTED_MODELS` of them."""
        names = sorted(self.available)
        if not names:
            return "no models"
        shown = ", ".join(names[:LISTED_MODELS])
        more = len(names) - LISTED_MODELS
        return f"{shown} and {more} more" if more > 0 else shown

    @property
    def advice(self) -> str:
        """Return what to do about it."""
        entry = f"`model:` of {self.name!r} in the config"
        if self.protocol == "ollama" and self.pull_error:
            return (
                f"Check the model id ({entry}; see https://ollama.com/library), or pull it "
                f"yourself with `ollama pull {self.model_id}`"
            )
        if self.protocol == "ollama":
            return (
                f"Pull it with `ollama pull {self.model_id}`, or set `auto_pull: true` on "
                f"model {self.name!r} in the config and modelyard pulls it before its first task"
            )
        if "api.openai.com" in self.url:
            return f"Set {entry} to a model your API key can use"
        return (
            "Make the server serve it (LM Studio: load the model; vLLM: start it with "
            f"`vllm serve {self.model_id}`; llama.cpp: start it with that model), or set "
            f"{entry} to one the server has"
        )

    def __str__(self) -> str:
        return f"model {self.name!r} at {self.url}: {self.detail}. {self.advice}"


class ModelNotOnServerError(ModelyardError):
    """Configured models that their servers do not have: what each has, and what to do."""

    def __init__(self, missing: list[MissingModel]) -> None:
        self.missing = list(missing)
        if len(self.missing) == 1:
            message = str(self.missing[0])
        else:
            lines = [f"{i}. {m}" for i, m in enumerate(self.missing, 1)]
            count = f"{len(self.missing)} configured models are not on their servers"
            message = f"{count}:\n" + "\n".join(lines)
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.missing,))


class ModelErrorKind(StrEnum):
    """What went wrong in a model call, across Ollama, OpenAI and plain HTTP."""

    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    CONTEXT_OVERFLOW = "context_overflow"
    BAD_REQUEST = "bad_request"
    AUTH = "auth"
    NOT_FOUND = "not_found"
    MALFORMED_RESPONSE = "malformed_response"


RETRYABLE_KINDS = frozenset(
    {
        ModelErrorKind.RATE_LIMITED,
        ModelErrorKind.SERVER_ERROR,
        ModelErrorKind.TIMEOUT,
        ModelErrorKind.CONNECTION,
        ModelErrorKind.MALFORMED_RESPONSE,
    }
)


class ModelCallError(ModelyardError):
    """A failed call to a model, with the model, the URL and what to do."""

    def __init__(
        self,
        kind: ModelErrorKind,
        *,
        model: str,
        url: str,
        detail: str,
        hint: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.kind = ModelErrorKind(kind)
        self.model = model
        self.url = url
        self.detail = detail
        self.hint = hint
        self.status = status
        self.retry_after = retry_after
        self.attempts = 1
        """Calls made to this model for the step when it gave up (set by the caller)."""
        self.streamed_tokens = 0
        """Tokens the model had streamed before it failed (set by the caller)."""
        self.give_up = False
        """Set when the model was cooled down meanwhile: fall back instead of retrying."""
        status_text = f" (HTTP {status})" if status is not None else ""
        message = f"{self.kind.value}{status_text} from model {model!r} at {url}: {detail}"
        if hint:
            message += f". {hint}"
        super().__init__(message)

    @property
    def retryable(self) -> bool:
        """Whether trying the same model again may succeed."""
        return self.kind in RETRYABLE_KINDS and not self.give_up

    def as_record(self) -> dict[str, Any]:
        """Return a JSON-safe summary for the task's history and results."""
        return {
            "kind": self.kind.value,
            "model": self.model,
            "url": self.url,
            "status": self.status,
            "retry_after": self.retry_after,
            "attempts": self.attempts,
            "streamed_tokens": self.streamed_tokens,
            "message": str(self),
        }

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_model_call_error,
            (
                self.as_record()
                | {"detail": self.detail, "hint": self.hint, "give_up": self.give_up},
            ),
        )


def _rebuild_model_call_error(record: dict[str, Any]) -> ModelCallError:
    error = ModelCallError(
        ModelErrorKind(record["kind"]),
        model=record["model"],
        url=record["url"],
        detail=record["detail"],
        hint=record["hint"],
        status=record["status"],
        retry_after=record["retry_after"],
    )
    error.attempts = record["attempts"]
    error.streamed_tokens = record.get("streamed_tokens", 0)
    error.give_up = record.get("give_up", False)
    return error
