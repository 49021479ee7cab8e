"""Pure decisions, no I/O: the task classifier, the model selector, what to retry."""

from modelyard.routers.keywords import classify_by_keywords, keyword_scores
from modelyard.routers.post_completion import PostStep, next_post_step, post_steps
from modelyard.routers.retry import is_retryable, retry_policy
from modelyard.routers.select import (
    Ranking,
    describe_factors,
    estimate_tokens,
    initial_stats,
    rank_models,
    select_model,
    task_type_for_step,
    why_not,
)

__all__ = [
    "PostStep",
    "Ranking",
    "classify_by_keywords",
    "describe_factors",
    "estimate_tokens",
    "initial_stats",
    "is_retryable",
    "keyword_scores",
    "next_post_step",
    "post_steps",
    "rank_models",
    "retry_policy",
    "select_model",
    "task_type_for_step",
    "why_not",
]
