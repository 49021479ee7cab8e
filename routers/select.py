"""Choose the model for a step: filter by requirements, then rank by role and capability."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from modelyard.configs.schema import ModelConfig
from modelyard.state import (
    NoModelAvailableError,
    Requirements,
    Selection,
    Step,
    TaskType,
    UnknownModelError,
)

#: The task type whose role and capability decide the model of each fixed step.
STEP_TASK_TYPES: dict[Step, TaskType] = {
    Step.PLAN: TaskType.PLANNING,
    Step.IMPLEMENT: TaskType.CODE_GENERATION,
}


def estimate_tokens(text: str) -> int:
    """Return a rough token count (about four characters a token)."""
    return max(1, math.ceil(len(text) / 4))


def task_type_for_step(step: Step, task_type: TaskType | None) -> TaskType:
    """Return the task type that picks the model for a step."""
    return STEP_TASK_TYPES.get(step, task_type or TaskType.GENERAL)


def why_not(model: ModelConfig, requirements: Requirements, prompt_tokens: int) -> str | None:
    """Return why a model cannot take the task, or None when it can."""
    if prompt_tokens >= model.context_window:
        return (
            f"the prompt (~{prompt_tokens} tokens) does not fit its "
            f"{model.context_window}-token context window"
        )
    if requirements.min_context_length and model.context_window < requirements.min_context_length:
        return f"context window {model.context_window} < required {requirements.min_context_length}"
    if requirements.target_provider and model.provider != requirements.target_provider:
        return f"provider {model.provider}, not {requirements.target_provider}"
    if requirements.needs_streaming and not model.supports.streaming:
        return "does not stream"
    if requirements.needs_tools and not model.supports.tools:
        return "has no tool calling"
    return None


def select_model(
    *,
    step: Step,
    task_type: TaskType,
    models: Sequence[ModelConfig],
    requirements: Requirements,
    prompt_tokens: int,
    override: str | None = None,
    excluded: Collection[str] = (),
) -> Selection:
    """Return the model for a step and why it was chosen.

    The caller's override wins if the model can take the task. Otherwise the models that
    pass the requirements and have the task type among their roles are ranked by their
    capability for it; ties go to the model listed first. When no model has the role, all
    models that pass the requirements are ranked by capability.

    Raises:
        UnknownModelError: the override names no configured model.
        NoModelAvailableError: no model passes the filters; says why for each.
    """
    by_name = {m.name: m for m in models}
    override = override or requirements.target_model
    if override is not None:
        if override not in by_name:
            raise UnknownModelError(override, list(by_name), "(requested override)")
        reason = why_not(by_name[override], requirements, prompt_tokens)
        if reason is not None:
            raise NoModelAvailableError(step.value, task_type.value, {override: reason})
        return Selection(
            step=step.value,
            model=override,
            task_type=task_type,
            reason=f"{override} was requested by the caller",
            score=by_name[override].capability(task_type),
        )

    filtered: dict[str, str] = {}
    eligible: list[ModelConfig] = []
    for model in models:
        reason = "already failed for this task" if model.name in excluded else None
        reason = reason or why_not(model, requirements, prompt_tokens)
        if reason is None:
            eligible.append(model)
        else:
            filtered[model.name] = reason
    if not eligible:
        raise NoModelAvailableError(step.value, task_type.value, filtered)

    with_role = [m for m in eligible if task_type in m.roles]
    pool = with_role or eligible
    ranked = sorted(pool, key=lambda m: -m.capability(task_type))  # stable: config order
    best = ranked[0]
    scores = {m.name: m.capability(task_type) for m in ranked}
    others = ", ".join(f"{name} {score:.2f}" for name, score in scores.items() if name != best.name)
    if with_role:
        reason = f"{best.name} has the {task_type.value} role"
        reason += (
            f" and the best {task_type.value} capability ({scores[best.name]:.2f}; {others})"
            if others
            else f" (capability {scores[best.name]:.2f}; the only eligible model with it)"
        )
    else:
        reason = (
            f"no model has the {task_type.value} role; {best.name} has the best "
            f"{task_type.value} capability ({scores[best.name]:.2f}"
            + (f"; {others})" if others else ")")
        )
    for model in eligible:
        if model not in pool:
            filtered[model.name] = f"does not have the {task_type.value} role"
    return Selection(
        step=step.value,
        model=best.name,
        task_type=task_type,
        reason=reason,
        score=scores[best.name],
        candidates=scores,
        excluded=filtered,
    )
