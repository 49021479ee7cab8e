"""Which failures are worth retrying, and the RetryPolicy the work nodes use."""

from __future__ import annotations

from langgraph.types import RetryPolicy

from modelyard.configs.schema import RetrySettings
from modelyard.state import ModelCallError


def is_retryable(error: Exception) -> bool:
    """Return True for a model-call failure that another try on the same model may fix.

    Rate limits, server errors, timeouts, dropped connections and garbled answers are;
    bad requests, auth failures, unknown models, context overflows and bugs are not.
    """
    return isinstance(error, ModelCallError) and error.retryable


def retry_policy(settings: RetrySettings | None = None) -> RetryPolicy:
    """Return the RetryPolicy for model-calling nodes, from the config's `retry` section."""
    settings = settings or RetrySettings()
    return RetryPolicy(
        initial_interval=settings.initial_interval,
        backoff_factor=settings.backoff_factor,
        max_interval=settings.max_interval,
        max_attempts=settings.max_attempts,
        jitter=settings.jitter,
        retry_on=is_retryable,
    )
