"""Wire post-completion steps after a graph's final node: post_complete -> apply_effects, looped."""

from __future__ import annotations

from typing import Any

from langgraph.graph import StateGraph

from modelyard.configs import ModelyardConfig
from modelyard.nodes.effects import apply_effects
from modelyard.nodes.post_complete import (
    post_complete,
    post_completion_route,
    record_post_failure,
)
from modelyard.routers import retry_policy


def add_post_completions(
    builder: StateGraph[Any, Any, Any, Any],
    *,
    after: str,
    config: ModelyardConfig | None = None,
) -> StateGraph[Any, Any, Any, Any]:
    """Add the post-completion nodes and run them after `after`, which must not have an edge yet.

    `after` -> (the task completed and its config has steps) -> post_complete ->
    apply_effects -> post_complete ... -> END; else `after` -> END. Whether there are steps
    is read from the run's config (`Context`), so a graph compiled once serves any config.

    Args:
        builder: The graph over `TaskState`.
        after: The node whose completion the steps follow (the one that sets `result`).
        config: Where the retry settings of the steps' model calls come from.
    """
    builder.add_node(
        "post_complete",
        post_complete,
        retry_policy=retry_policy(config.retry if config else None),
        error_handler=record_post_failure,
    )
    builder.add_node("apply_effects", apply_effects)
    builder.add_conditional_edges(after, post_completion_route)
    builder.add_edge("post_complete", "apply_effects")
    builder.add_conditional_edges("apply_effects", post_completion_route)
    return builder
