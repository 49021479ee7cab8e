"""Per-model runtime stats: moving averages of success and latency, totals, and cooldowns.

A `ModelStats` is one model's record in the stats store. The methods here are the pure
arithmetic (no I/O): the store keeps the record, the nodes call these to update it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class Health(StrEnum):
    """Whether a model may take calls now."""

    OK = "ok"
    """Taking calls."""
    COOLING = "cooling"
    """Cooled down: left out until `cooldown_until`."""
    TRIAL = "trial"
    """Cooldown over: the next call is a trial that decides whether the model is back."""
    ON_TRIAL = "on_trial"
    """A trial call is under way; other tasks wait for its outcome."""


class CooldownReason(StrEnum):
    """Why a model was cooled down."""

    FAILURES = "failures"
    """`allowed_fails` consecutive failed calls (or a failed trial)."""
    RATE_LIMITED = "rate_limited"
    """The server answered 429 with a Retry-After."""


class ModelStats(BaseModel):
    """What modelyard has learned of one model from its calls, shared by every process."""

    model: str
    calls: int = 0
    successes: int = 0
    failures: int = 0
    failures_by_kind: dict[str, int] = Field(default_factory=dict)
    success_rate: float = 1.0
    """Moving average of success (1.0) and failure (0.0)."""
    latency_ms: float = 1000.0
    """Moving average of the latency of successful calls."""
    first_token_ms: float | None = None
    """Moving average of the time to the first streamed token."""
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    consecutive_failures: int = 0
    cooldown_until: float | None = None
    """Epoch seconds when the current (or last) cooldown ends."""
    cooldown_reason: CooldownReason | None = None
    trial_started_at: float | None = None
    """Epoch seconds when the running trial call started."""
    last_call_at: float | None = None
    last_error: dict[str, Any] | None = None
    """Kind and message of the latest failure."""

    @classmethod
    def initial(cls, model: str, success_rate: float, latency_ms: float) -> ModelStats:
        """Return the record of a model never called, starting from the config's figures."""
        return cls(model=model, success_rate=success_rate, latency_ms=latency_ms)

    def health(self, now: float, allowed_fails: int, trial_timeout: float) -> Health:
        """Return whether the model may take a call at `now` (epoch seconds)."""
        if self.cooldown_until is not None and now < self.cooldown_until:
            return Health.COOLING
        if self.consecutive_failures < allowed_fails and self.cooldown_reason is None:
            return Health.OK
        if self.trial_started_at is not None and now - self.trial_started_at < trial_timeout:
            return Health.ON_TRIAL
        return Health.TRIAL

    def cooldown_left(self, now: float) -> float:
        """Return the seconds of cooldown left (0.0 when none)."""
        return max(0.0, (self.cooldown_until or 0.0) - now)

    def after_success(
        self,
        *,
        latency_ms: float,
        first_token_ms: float | None,
        input_tokens: int,
        output_tokens: int,
        cost: float,
        alpha: float,
        reset_success_rate: float,
        now: float,
    ) -> ModelStats:
        """Return the record after a successful call.

        A success after a cooldown (the trial call) brings the model back, its success rate
        starting over from `reset_success_rate` (the config's initial figure). A success
        during a cooldown comes from a call sent before it began and does not end it.
        """
        success_rate = _ema(self.success_rate, 1.0, alpha)
        back: dict[str, Any] = {}
        if self.cooldown_left(now) <= 0:  # else a call sent before the cooldown: it stands
            back = {
                "consecutive_failures": 0,
                "cooldown_until": None,
                "cooldown_reason": None,
                "trial_started_at": None,
            }
            if self.cooldown_reason is not None:  # the trial call succeeded: it is back
                success_rate = max(success_rate, reset_success_rate)
        first_token = first_token_ms
        if first_token_ms is not None and self.first_token_ms is not None:
            first_token = _ema(self.first_token_ms, first_token_ms, alpha)
        return self.model_copy(
            update={
                "calls": self.calls + 1,
                "successes": self.successes + 1,
                "success_rate": success_rate,
                "latency_ms": _ema(self.latency_ms, latency_ms, alpha),
                "first_token_ms": first_token if first_token is not None else self.first_token_ms,
                "input_tokens": self.input_tokens + input_tokens,
                "output_tokens": self.output_tokens + output_tokens,
                "cost": self.cost + cost,
                "last_call_at": now,
                **back,
            }
        )

    def after_failure(
        self,
        *,
        kind: str,
        message: str,
        retry_after: float | None,
        alpha: float,
        allowed_fails: int,
        cooldown_seconds: float,
        max_retry_after: float,
        now: float,
    ) -> ModelStats:
        """Return the record after a failed call, cooled down when it should be.

        A 429 with Retry-After cools the model down at once for that long (capped at
        `max_retry_after`). Otherwise `allowed_fails` consecutive failures, or a failed trial
        call, cool it down for `cooldown_seconds`. A failure during a cooldown comes from a
        call sent before it began: it is counted and leaves the cooldown as it is.
        """
        consecutive = self.consecutive_failures + 1
        update: dict[str, Any] = {
            "calls": self.calls + 1,
            "failures": self.failures + 1,
            "failures_by_kind": {
                **self.failures_by_kind,
                kind: self.failures_by_kind.get(kind, 0) + 1,
            },
            "success_rate": _ema(self.success_rate, 0.0, alpha),
            "consecutive_failures": consecutive,
            "trial_started_at": None,
            "last_call_at": now,
            "last_error": {"kind": kind, "message": message, "at": now},
        }
        if self.cooldown_left(now) > 0 and not (retry_after and kind == "rate_limited"):
            # A call sent before the cooldown began: counted, but the cooldown stands.
            return self.model_copy(update=update)
        was_on_trial = self.cooldown_reason is CooldownReason.FAILURES
        if retry_after is not None and kind == "rate_limited":
            until = now + min(retry_after, max_retry_after)
            update |= {
                "cooldown_until": max(until, self.cooldown_until or 0.0),
                "cooldown_reason": (
                    CooldownReason.FAILURES if was_on_trial else CooldownReason.RATE_LIMITED
                ),
            }
        elif consecutive >= allowed_fails or was_on_trial:
            update |= {
                "cooldown_until": max(now + cooldown_seconds, self.cooldown_until or 0.0),
                "cooldown_reason": CooldownReason.FAILURES,
            }
        return self.model_copy(update=update)

    def claim_trial(self, now: float) -> ModelStats:
        """Return the record with a trial call marked as under way."""
        return self.model_copy(update={"trial_started_at": now})


def _ema(average: float, value: float, alpha: float) -> float:
    return alpha * value + (1.0 - alpha) * average
