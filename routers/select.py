"""Choose the model for a step: filter the candidates, then rank them by a weighted score.

Pure: the caller passes the models, their stats and the clock; nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from modelyard.configs.schema import CooldownSettings, ModelConfig, SelectionSettings
from modelyard.state import (
    CandidateScore,
    Health,
    ModelStats,
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
    Step.REVIEW: TaskType.CODE_REVIEW,
    Step.REVISE: TaskType.CODE_GENERATION,
}


def estimate_tokens(text: str) -> int:
    """Return a rough token count (about four characters a token)."""
    return max(1, math.ceil(len(text) / 4))


def task_type_for_step(step: Step, task_type: TaskType | None) -> TaskType:
    """Return the task type that picks the model for a step."""
    # A checkpointer that keeps plain strings as JSON (PostgreSQL) gives the enum back as str.
    return STEP_TASK_TYPES.get(step, TaskType(task_type) if task_type else TaskType.GENERAL)


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


FACTORS = ("capability", "success_rate", "latency", "cost", "provider")

#: How often a task waiting for a model on trial looks again.
TRIAL_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Ranking:
    """The candidates of one selection, best first, and why the others were left out."""

    ranked: list[CandidateScore]
    filtered: dict[str, str] = field(default_factory=dict)
    """Why each model left out was left out, by name, in config order."""
    back_in: dict[str, float] = field(default_factory=dict)
    """Seconds until each model left out for a cooldown (or a running trial) may be tried."""
    with_role: bool = True
    """Whether the candidates have the task type among their roles."""


def rank_models(
    *,
    task_type: TaskType,
    models: Sequence[ModelConfig],
    requirements: Requirements,
    prompt_tokens: int,
    stats: Mapping[str, ModelStats] | None = None,
    settings: SelectionSettings | None = None,
    cooldown: CooldownSettings | None = None,
    excluded: Collection[str] = (),
    larger_than: int = 0,
    now: float = 0.0,
) -> Ranking:
    """Filter the models, then rank the rest by their weighted score.

    Filters, in order: already failed for this task (`excluded`), the requirements (the
    prompt against the context window, `larger_than` after a context overflow, streaming,
    tools, provider), cooled down or on trial, and a success rate under `min_availability`.
    Of the rest, the models that have the task type among their roles are ranked; when none
    has it, all of them are. Models whose cooldown is over get their trial call first; then
    the highest score wins, and ties go to the model listed first.

    Args:
        stats: Each model's stats; a model missing has its config's initial figures.
        larger_than: Only models whose context window is larger (after a context overflow).
        now: The clock, in epoch seconds, that cooldowns are compared with.
    """
    settings = settings or SelectionSettings()
    cooldown = cooldown or CooldownSettings()
    stats = stats or {}
    filtered: dict[str, str] = {}
    back_in: dict[str, float] = {}
    eligible: list[tuple[ModelConfig, ModelStats, bool]] = []
    for model in models:
        record = stats.get(model.name) or initial_stats(model)
        reason = "already failed for this task" if model.name in excluded else None
        if reason is None and larger_than and model.context_window <= larger_than:
            reason = (
                f"context window {model.context_window} is not larger than the "
                f"{larger_than} tokens that overflowed"
            )
        reason = reason or why_not(model, requirements, prompt_tokens)
        trial = False
        if reason is None:
            health = record.health(now, cooldown.allowed_fails, model.timeout)
            if health is Health.COOLING:
                left = record.cooldown_left(now)
                reason = f"cooled down for {left:.1f} s more ({_cooldown_cause(record)})"
                back_in[model.name] = left
            elif health is Health.ON_TRIAL:
                reason = "back from a cooldown; another task's trial call is under way"
                # The trial may end any moment: look again soon.
                trial_ends = (record.trial_started_at or now) + model.timeout
                back_in[model.name] = min(TRIAL_POLL_SECONDS, max(0.0, trial_ends - now))
            elif health is Health.TRIAL:
                trial = True
            elif record.success_rate < settings.min_availability:
                idle = now - (record.last_call_at or now)
                if idle >= cooldown.cooldown_seconds:
                    trial = True
                else:
                    reason = (
                        f"success rate {record.success_rate:.2f} is below min_availability "
                        f"{settings.min_availability:.2f} (a trial call in "
                        f"{cooldown.cooldown_seconds - idle:.1f} s)"
                    )
        if reason is None:
            eligible.append((model, record, trial))
        else:
            filtered[model.name] = reason

    with_role = [entry for entry in eligible if task_type in entry[0].roles]
    pool = with_role or eligible
    for model, _, _ in eligible:
        if not any(model is m for m, _, _ in pool):
            filtered[model.name] = f"does not have the {task_type.value} role"
    ranked = score_candidates(task_type, pool, prompt_tokens, settings)
    return Ranking(
        ranked=ranked,
        filtered={m.name: filtered[m.name] for m in models if m.name in filtered},
        back_in=back_in,
        with_role=bool(with_role),
    )


def score_candidates(
    task_type: TaskType,
    pool: Sequence[tuple[ModelConfig, ModelStats, bool]],
    prompt_tokens: int,
    settings: SelectionSettings,
) -> list[CandidateScore]:
    """Return the candidates' weighted scores, trials first, then best first.

    Latency and cost are relative: 1.0 for the fastest (cheapest) candidate, and the others
    the fastest latency (lowest cost) over their own.
    """
    if not pool:
        return []
    costs = {m.name: m.cost.of(prompt_tokens, settings.expected_output_tokens) for m, _, _ in pool}
    fastest = min(record.latency_ms for _, record, _ in pool)
    cheapest = min(costs.values())
    weights = settings.weights.model_dump()
    scored: list[tuple[tuple[bool, float, int], CandidateScore]] = []
    for index, (model, record, trial) in enumerate(pool):
        cost = costs[model.name]
        factors = {
            "capability": model.capability(task_type),
            "success_rate": record.success_rate,
            "latency": fastest / record.latency_ms if record.latency_ms > 0 else 1.0,
            "cost": cheapest / cost if cost > 0 else 1.0,
            "provider": settings.provider_preference.get(model.provider, 0.0),
        }
        score = sum(weights[name] * value for name, value in factors.items())
        factors = {name: round(value, 4) for name, value in factors.items()}
        candidate = CandidateScore(
            model=model.name, score=round(score, 4), factors=factors, trial=trial
        )
        scored.append(((not trial, -round(score, 9), index), candidate))
    return [candidate for _, candidate in sorted(scored, key=lambda item: item[0])]


def select_model(
    *,
    step: Step,
    task_type: TaskType,
    models: Sequence[ModelConfig],
    requirements: Requirements,
    prompt_tokens: int,
    stats: Mapping[str, ModelStats] | None = None,
    settings: SelectionSettings | None = None,
    cooldown: CooldownSettings | None = None,
    override: str | None = None,
    excluded: Collection[str] = (),
    larger_than: int = 0,
    now: float = 0.0,
    explain: bool = False,
) -> Selection:
    """Return the model for a step and why it was chosen (see `rank_models` for the rules).

    The caller's override (or `requirements.target_model`) is the only candidate when given:
    it still has to take the prompt, and a cooled-down override is not used until it is back.

    Args:
        explain: Also return every candidate's score broken down by factor.

    Raises:
        UnknownModelError: the override names no configured model.
        NoModelAvailableError: every model was filtered out; says which filter removed each,
            and when each cooled-down one comes back.
    """
    by_name = {m.name: m for m in models}
    override = override or requirements.target_model
    if override is not None and override not in by_name:
        raise UnknownModelError(override, list(by_name), "(requested override)")
    candidates = [by_name[override]] if override is not None else list(models)
    ranking = rank_models(
        task_type=task_type,
        models=candidates,
        requirements=requirements,
        prompt_tokens=prompt_tokens,
        stats=stats,
        settings=settings,
        cooldown=cooldown,
        excluded=excluded,
        larger_than=larger_than,
        now=now,
    )
    if not ranking.ranked:
        raise NoModelAvailableError(step.value, task_type.value, ranking.filtered, ranking.back_in)
    best = ranking.ranked[0]
    return Selection(
        step=step.value,
        model=best.model,
        task_type=task_type,
        reason=_reason(best, ranking, task_type, requested=override is not None),
        score=best.score,
        candidates={c.model: c.score for c in ranking.ranked},
        excluded=ranking.filtered,
        ranking=ranking.ranked if explain else [],
        trial=best.trial,
    )


def initial_stats(model: ModelConfig) -> ModelStats:
    """Return the stats a model starts from before its first call."""
    return ModelStats.initial(
        model.name, model.initial_stats.success_rate, model.initial_stats.latency_ms
    )


def describe_factors(candidate: CandidateScore) -> str:
    """Return `capability 0.90 · success_rate 0.98 · ...` for a candidate."""
    return " · ".join(f"{name} {candidate.factors[name]:.2f}" for name in FACTORS)


def _reason(best: CandidateScore, ranking: Ranking, task_type: TaskType, *, requested: bool) -> str:
    if requested:
        return f"{best.model} was requested by the caller"
    if best.trial:
        reason = f"{best.model} is back from a cooldown; this call is its trial"
    elif not ranking.with_role:
        reason = f"no model left has the {task_type.value} role; {best.model} scores best"
    elif len(ranking.ranked) == 1:
        reason = f"{best.model} has the {task_type.value} role (the only eligible model with it)"
    else:
        reason = f"{best.model} has the {task_type.value} role and the best score"
    others = ", ".join(f"{c.model} {c.score:.2f}" for c in ranking.ranked[1:])
    return f"{reason}: {best.score:.2f} ({describe_factors(best)})" + (
        f"; {others}" if others else ""
    )


def _cooldown_cause(record: ModelStats) -> str:
    if record.cooldown_reason is not None and record.cooldown_reason.value == "rate_limited":
        return "rate-limited by its server"
    last = (record.last_error or {}).get("kind", "failures")
    return f"{record.consecutive_failures} consecutive failures, last {last}"
