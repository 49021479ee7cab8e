"""Which post-completion steps a config has, and whether the next one runs."""

from __future__ import annotations

from typing import Literal, NamedTuple

from modelyard.configs.schema import ModelyardConfig, PostCompletion
from modelyard.state import PostCompletionProgress, TaskStatus


class PostStep(NamedTuple):
    """One post-completion step: the model whose role it is, and what it does."""

    model: str
    step: PostCompletion


def post_steps(config: ModelyardConfig) -> list[PostStep]:
    """Return every post-completion step in config order: models in order, each one's in order."""
    return [
        PostStep(model.name, step) for model in config.models for step in model.post_completions
    ]


def next_post_step(
    state: PostCompletionProgress, steps: int
) -> Literal["post_complete", "__end__"]:
    """Return `post_complete` while the task completed and a step of the `steps` has not run.

    A task that failed runs none; each step runs once, failed or not (its entry in
    `post_completions` counts it as run).
    """
    if state.get("status") != TaskStatus.COMPLETED:
        return "__end__"
    return "post_complete" if len(state.get("post_completions") or []) < steps else "__end__"
