"""Pure decisions, no I/O: the task classifier, the model selector, what to retry."""

from modelyard.routers.keywords import classify_by_keywords, keyword_scores
from modelyard.routers.retry import is_retryable, retry_policy
from modelyard.routers.select import (
    estimate_tokens,
    select_model,
    task_type_for_step,
    why_not,
)

__all__ = [
    "classify_by_keywords",
    "estimate_tokens",
    "is_retryable",
    "keyword_scores",
    "retry_policy",
    "select_model",
    "task_type_for_step",
    "why_not",
]
