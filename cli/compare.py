"""`modelyard compare`: one prompt on several models at once, the answers side by side."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from modelyard.configs import ModelRegistry, apply_assignments, load_config
from modelyard.graphs import BranchResult, acompare
from modelyard.nodes import Context
from modelyard.state import InvalidTaskError, TaskType

err = Console(stderr=True, highlight=False)


def model_names(values: list[str], registry: ModelRegistry) -> list[str]:
    """Return the configured model names that `--models` lists (comma-separated or repeated).

    Raises:
        UnknownModelError: a name the config does not define, listing the ones it does.
        InvalidTaskError: no name, or a name given twice.
    """
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if not names:
        raise InvalidTaskError(
            f"--models names no model; give configured names, e.g. --models "
            f"{','.join(registry.names)}"
        )
    for name in names:
        registry.get(name, where="(--models)")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InvalidTaskError(f"--models names {', '.join(map(repr, repeated))} more than once")
    return names


def compare_command(
    prompt: str,
    models: list[str],
    config_file: str | None,
    task_type: TaskType | None,
    as_json: bool,
    *,
    assignments: list[str] | None = None,
) -> None:
    """Ask each model `prompt` at once and print the answers side by side (or as JSON).

    Exits 1 when a model failed (its error is in its column), after printing every result.
    `assignments` are `--set MODEL.FIELD=VALUE` changes to the config for this run.
    """
    registry = ModelRegistry(apply_assignments(load_config(config_file), assignments or []))
    names = model_names(models, registry)
    if not prompt.strip():
        raise InvalidTaskError("the prompt is empty; give the task's text")

    def announce(result: BranchResult) -> None:
        label = escape(result.label)
        if result.ok:
            err.print(f"[green]✓[/green] {label} answered in {result.latency_ms:.0f} ms")
            return
        error = result.error or {}
        kind = (error.get("attempts") or [error])[-1].get("kind", "error")
        err.print(f"[red]✗[/red] {label} failed: {escape(str(kind))}")

    started = time.perf_counter()
    results = asyncio.run(
        acompare(
            prompt,
            names,
            task_type=task_type,
            context=Context(registry=registry),
            on_result=None if as_json else announce,
        )
    )
    elapsed_ms = (time.perf_counter() - started) * 1000
    if as_json:
        typer.echo(json.dumps(comparison_json(prompt, results, elapsed_ms), indent=2))
    else:
        console = Console(highlight=False)
        if not console.is_terminal:
            console = Console(highlight=False, width=max(100, 60 * len(results)))
        console.print(render_comparison(results))
        err.print(f"[dim]{escape(timing_line(results))}[/dim]")
    failed = [r.label for r in results if not r.ok]
    if failed:
        err.print(
            f"[red]modelyard: error:[/red] {len(failed)} of {len(results)} models failed: "
            f"{escape(', '.join(failed))}",
            soft_wrap=True,
        )
        raise typer.Exit(1)


def render_comparison(results: list[BranchResult]) -> Table:
    """Return the side-by-side table: one column per model, its figures above its answer."""
    table = Table(show_lines=True, expand=True)
    for result in results:
        table.add_column(escape(result.label), ratio=1, overflow="fold", vertical="top")
    table.add_row(*[_figures(r) for r in results])
    table.add_row(*[_answer(r) for r in results])
    return table


def _figures(result: BranchResult) -> Text:
    status = Text(result.status.value, style="green" if result.ok else "red")
    lines = [
        f"{result.latency_ms:.0f} ms",
        f"tokens {result.input_tokens} in / {result.output_tokens} out",
    ]
    if result.attempts > 1:
        lines.append(f"{result.attempts} calls")
    return Text.assemble(status, "\n" + "\n".join(lines))


def _answer(result: BranchResult) -> Text:
    if result.ok:
        return Text(result.answer or "")
    return Text(str((result.error or {}).get("message", "failed")), style="red")


def wall_ms(results: list[BranchResult]) -> float:
    """Return the time from the first model's start to the last one's end, in ms."""
    if not results:
        return 0.0
    span = max(r.finished_at for r in results) - min(r.started_at for r in results)
    return span.total_seconds() * 1000


def timing_line(results: list[BranchResult]) -> str:
    """Return the timing summary: the wall time against the slowest model and the sum."""
    slowest = max((r.latency_ms for r in results), default=0.0)
    total = sum(r.latency_ms for r in results)
    return (
        f"{len(results)} models in {wall_ms(results):.0f} ms at once "
        f"(slowest {slowest:.0f} ms; one after another {total:.0f} ms)"
    )


def comparison_json(prompt: str, results: list[BranchResult], elapsed_ms: float) -> dict[str, Any]:
    """Return the `--json` object: the prompt, the times, one entry per model."""
    return {
        "prompt": prompt,
        "wall_ms": round(wall_ms(results), 1),
        "elapsed_ms": round(elapsed_ms, 1),
        "results": [
            {
                "model": r.model,
                "status": r.status.value,
                "task_type": r.task_type.value if r.task_type else None,
                "latency_ms": r.latency_ms,
                "tokens": {"input": r.input_tokens, "output": r.output_tokens},
                "cost": r.cost,
                "attempts": r.attempts,
                "content": r.answer,
                "error": r.error,
            }
            for r in results
        ],
    }
