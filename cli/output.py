"""How the CLI shows results: the summary line, the JSON object, the models table."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from modelyard.configs import ModelyardConfig
from modelyard.configs.availability import Availability
from modelyard.state import CooldownReason, Health, ModelCall, ModelStats, Task


def _calls(state: dict[str, Any]) -> list[ModelCall]:
    return list(state.get("calls", []))


def _tokens(calls: list[ModelCall]) -> tuple[int, int]:
    """Return the input and output tokens of all calls."""
    return sum(c.input_tokens for c in calls), sum(c.output_tokens for c in calls)


def summary_line(task: Task, state: dict[str, Any], elapsed_ms: float) -> str:
    """Return the one-line summary: task type, model(s), latency, tokens."""
    calls = _calls(state)
    models = " → ".join(f"{c.step}:{c.model}" for c in calls) or task.assigned_model or "-"
    tokens_in, tokens_out = _tokens(calls)
    task_type = task.task_type.value if task.task_type else "-"
    return (
        f"task_type={task_type} model={models} latency={elapsed_ms:.0f}ms "
        f"tokens={tokens_in}in/{tokens_out}out attempts={task.attempts}"
    )


def task_json(
    task: Task, state: dict[str, Any], elapsed_ms: float, *, plan: bool
) -> dict[str, Any]:
    """Return the `--json` object for a finished task."""
    calls = _calls(state)
    tokens_in, tokens_out = _tokens(calls)
    classification = state.get("classification")
    selections = state.get("selections", {})
    payload: dict[str, Any] = {
        "task_id": task.id,
        "status": task.status.value,
        "task_type": task.task_type.value if task.task_type else None,
        "classification": classification.model_dump(mode="json", exclude={"scores"})
        if classification
        else None,
        "model": task.assigned_model,
        "reason": {step: s.reason for step, s in selections.items()},
        "content": task.result,
        "latency_ms": round(elapsed_ms, 1),
        "attempts": task.attempts,
        "tokens": {"input": tokens_in, "output": tokens_out},
        "cost": sum(c.cost for c in calls),
        "calls": [c.model_dump(mode="json", exclude={"prompt"}) for c in calls],
        "error": task.error,
    }
    if plan:
        payload["plan"] = state.get("plan")
        payload["implementation"] = state.get("implementation")
        payload["models"] = {step: s.model for step, s in selections.items()}
    return payload


def _mark(value: bool | None) -> str:
    return {True: "[green]yes[/green]", False: "[red]no[/red]", None: "[dim]?[/dim]"}[value]


def render_models(config: ModelyardConfig, availability: list[Availability]) -> Table:
    """Return the `modelyard models` table."""
    table = Table(title=f"models in {escape(config.source)}")
    for column in ("name", "provider", "model", "roles", "url", "reachable", "available"):
        table.add_column(column)
    for model, status in zip(config.models, availability, strict=True):
        roles = ", ".join(r.value for r in model.roles) or "-"
        post = len(model.post_completions)
        if post:
            roles += f" (+{post} post-completion)"
        detail = f" [dim]{escape(status.detail)}[/dim]" if status.detail else ""
        table.add_row(
            escape(model.name),
            model.provider,
            escape(model.model),
            roles,
            escape(status.url or "-"),
            _mark(status.reachable) + detail,
            _mark(status.available),
        )
    return table


def cooldown_state(config: ModelyardConfig, record: ModelStats, now: float) -> str:
    """Return whether a model takes calls: `ok`, `cooling 12.3 s (...)`, or `trial next`."""
    timeout = next((m.timeout for m in config.models if m.name == record.model), 0.0)
    health = record.health(now, config.cooldown.allowed_fails, timeout)
    if health is Health.COOLING:
        cause = (
            "rate-limited"
            if record.cooldown_reason is CooldownReason.RATE_LIMITED
            else f"{record.consecutive_failures} failures"
        )
        return f"cooling {record.cooldown_left(now):.1f} s ({cause})"
    if health is Health.TRIAL:
        return "trial next"
    if health is Health.ON_TRIAL:
        return "trial under way"
    return "ok"


def render_stats(config: ModelyardConfig, records: dict[str, ModelStats], now: float) -> Table:
    """Return the `modelyard stats` table: one row per configured model."""
    table = Table(title=f"model stats in {escape(config.persistence.url)}")
    for column in ("model", "calls", "ok", "failed", "success", "latency", "first token",
                   "tokens in/out", "cost", "state", "last error"):  # fmt: skip
        justify = "left" if column in ("model", "state", "last error") else "right"
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for name, record in records.items():
        first_token = f"{record.first_token_ms:.0f} ms" if record.first_token_ms else "-"
        last = record.last_error or {}
        table.add_row(
            escape(name),
            str(record.calls),
            str(record.successes),
            str(record.failures),
            f"{record.success_rate:.0%}",
            f"{record.latency_ms:.0f} ms",
            first_token,
            f"{record.input_tokens}/{record.output_tokens}",
            f"{record.cost:.4f}",
            escape(cooldown_state(config, record, now)),
            escape(str(last.get("kind", "-"))),
        )
    return table
