"""Errors a user can act on: what was wrong, where, and what to do."""

from __future__ import annotations

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

    def __init__(self, step: str, task_type: str, reasons: dict[str, str]) -> None:
        self.step = step
        self.task_type = task_type
        self.reasons = dict(reasons)
        detail = "; ".join(f"{name}: {why}" for name, why in self.reasons.items()) or "none"
        super().__init__(
            f"no model can take the {step} step of a {task_type} task ({detail}). "
            "Add a model with this role to the config, or relax the task's requirements."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.step, self.task_type, self.reasons))


class InvalidTaskError(ModelyardError):
    """A task that cannot run as given (an empty prompt, an unknown task type, ...)."""


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
        status_text = f" (HTTP {status})" if status is not None else ""
        message = f"{self.kind.value}{status_text} from model {model!r} at {url}: {detail}"
        if hint:
            message += f". {hint}"
        super().__init__(message)

    @property
    def retryable(self) -> bool:
        """Whether trying the same model again may succeed."""
        return self.kind in RETRYABLE_KINDS

    def as_record(self) -> dict[str, Any]:
        """Return a JSON-safe summary for the task's history and results."""
        return {
            "kind": self.kind.value,
            "model": self.model,
            "url": self.url,
            "status": self.status,
            "retry_after": self.retry_after,
            "attempts": self.attempts,
            "message": str(self),
        }

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_model_call_error,
            (self.as_record() | {"detail": self.detail, "hint": self.hint},),
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
    return error
