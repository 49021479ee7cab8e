"""How the CLI shows results: the summary line, the JSON object, the models table."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from modelyard.configs import ModelyardConfig
from modelyard.configs.availability import Availability
from modelyard.routers.review import review_finished
from modelyard.state import CooldownReason, Health, ModelCall, ModelStats, Task, TaskEvent


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
    rounds = ""
    if task.rounds:
        last = task.rounds[-1]
        rounds = f" rounds={last.round} {'approved' if last.approved else 'unapproved'}"
    return (
        f"task_type={task_type} model={models} latency={elapsed_ms:.0f}ms "
        f"tokens={tokens_in}in/{tokens_out}out attempts={task.attempts}{rounds}"
    )


def review_lines(event: TaskEvent, max_rounds: int) -> list[str]:
    """Return the lines that show a review loop's event as it happens; none for others."""
    data = event.data
    if event.kind == "review":
        number, reviewer, comments = data["round"], data["reviewer"], data["comments"]
        if data["verdict"] == "approve":
            return [f"✓ approved in round {number} by {reviewer}"]
        count = f"{len(comments)} comment{'s' if len(comments) != 1 else ''}"
        lines = [f"round {number}: {reviewer} requests changes ({count}):"]
        lines += [f"  - {comment}" for comment in comments]
        if not review_finished(data["verdict"], number, max_rounds):
            lines.append(f"round {number + 1}: {data['coder']} revises after {count}")
        return lines
    if event.kind == "review_stopped":
        return [f"⚠ {event.detail}; the result is the code of round {data['round']}"]
    return []


def post_completion_lines(event: TaskEvent) -> list[str]:
    """Return the lines that show a post-completion step's files or failure; none for others."""
    if event.kind == "post_completion_wrote":
        return [f"✓ {event.model} wrote {path}" for path in event.data.get("files", [])]
    if event.kind == "post_completion_failed":
        return [f"⚠ {event.detail}"]
    return []


def task_json(
    task: Task, state: dict[str, Any], elapsed_ms: float, *, plan: bool, review: bool = False
) -> dict[str, Any]:
    """Return the `--json` object for a finished task.

    With `plan`: also the plan; with `plan` or `review`: the implementation and the model
    of each step; with `review`: every round (round, code, coder, reviewer, verdict,
    comments) and whether the last one was approved.
    """
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
        "post_completions": [  # each: index, model, task, output, files_written, error, ...
            p.model_dump(mode="json", exclude={"staged"}) for p in task.post_completions
        ],
    }
    if plan:
        payload["plan"] = state.get("plan")
    if plan or review:
        payload["implementation"] = state.get("implementation")
        models = {step: s.model for step, s in selections.items()}
        payload["models"] = models | {c.step: c.model for c in calls}  # who did the work
    if review:
        payload["rounds"] = [r.model_dump(mode="json", exclude={"review"}) for r in task.rounds]
        payload["approved"] = bool(task.rounds) and task.rounds[-1].approved
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
