"""The `modelyard` command: run a task, list the models, or run the offline demo."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from langchain_core.runnables import RunnableConfig
from rich.console import Console
from rich.markup import escape

from modelyard.cli.output import (
    cooldown_state,
    render_models,
    render_stats,
    summary_line,
    task_json,
)
from modelyard.cli.progress import PullProgressView
from modelyard.cli.stream_view import StreamView
from modelyard.configs import ModelRegistry, ModelyardConfig, apply_assignments, load_config
from modelyard.configs.availability import check_models
from modelyard.configs.persistence import open_store, redacted
from modelyard.graphs import build_plan_and_implement_graph, build_review_graph, build_route_graph
from modelyard.graphs.run import recursion_limit
from modelyard.graphs.stream import Finished, stream_events
from modelyard.nodes import Context, StatsBook
from modelyard.state import (
    DEFAULT_MAX_ROUNDS,
    ModelStats,
    ModelyardError,
    Task,
    TaskStatus,
    TaskType,
)

app = typer.Typer(
    name="modelyard",
    help="Route each task to the LLM that suits it: classify, select, answer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False)

ConfigOption = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML config file or folder, or a packaged config name (default, openai, "
        "lmstudio). Default: $MODELYARD_CONFIG, else the packaged default.",
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="MODEL.FIELD=VALUE",
        help="Change a model's config for this run, e.g. coder.temperature=0.1, "
        "coder.options.num_ctx=8192 or coder.timeout=30 (repeat --set for more). Values "
        "are YAML: 0.1, true, \\[a, b], {top_k: 40}.",
    ),
]

PromptArgument = Annotated[str, typer.Argument(help="The task, in your words.")]
ModelOption = Annotated[
    str | None, typer.Option("--model", "-m", help="Use this configured model for every step.")
]
TaskTypeOption = Annotated[
    TaskType | None, typer.Option("--task-type", "-t", help="Skip classification.")
]


class UsageError(Exception):
    """A problem with what the user asked for: printed on one line per problem, exit 2."""


def _load(
    config_file: str | None, assignments: list[str] | None = None
) -> tuple[ModelyardConfig, ModelRegistry]:
    """Return the config, with the `--set` assignments made, and its registry."""
    config = apply_assignments(load_config(config_file), assignments or [])
    return config, ModelRegistry(config)


@app.command()
def run(
    prompt: PromptArgument,
    config_file: ConfigOption = None,
    assignments: SetOption = None,
    model: ModelOption = None,
    task_type: TaskTypeOption = None,
    plan: Annotated[
        bool, typer.Option("--plan", help="A reasoning model plans, a coding model implements.")
    ] = False,
    review: Annotated[
        bool,
        typer.Option(
            "--review",
            help="A reviewing model reviews the code and the coding model revises it, "
            "until approved or --max-rounds (with --plan: plan, implement, review).",
        ),
    ] = False,
    max_rounds: Annotated[
        int | None,
        typer.Option(
            "--max-rounds",
            min=1,
            help=f"Most review rounds, with --review (default {DEFAULT_MAX_ROUNDS}).",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object at the end.")
    ] = False,
) -> None:
    """Run one task: classify it, route it to a model, and stream the answer."""
    config, registry = _load(config_file, assignments)
    if model is not None:
        registry.get(model, where="(--model)")
    if not prompt.strip():
        raise UsageError("the prompt is empty; give the task's text")
    if max_rounds is not None and not review:
        raise UsageError("--max-rounds applies to the review loop; add --review")
    task = Task(
        prompt=prompt,
        model=model,
        task_type=task_type,
        max_rounds=max_rounds or DEFAULT_MAX_ROUNDS,
    )
    context = Context(registry=registry)

    def builder(config: ModelyardConfig) -> Any:
        if review:
            return build_review_graph(config, plan=plan)
        return build_plan_and_implement_graph(config) if plan else build_route_graph(config)

    async def go() -> dict[str, Any]:
        async with open_store(config.persistence) as store:
            graph = builder(config).compile(store=store)
            if as_json:
                pulls = PullProgressView(err)
                stop = registry.server_models.add_listener(lambda p: pulls.show(p.as_event()))
                try:
                    result: dict[str, Any] = await graph.ainvoke(
                        task.to_input(),
                        {"recursion_limit": recursion_limit(task, config)},
                        context=context,
                    )
                finally:
                    stop()
                    pulls.close()
                return result
            return await _stream(graph, task, context, config)

    started = time.perf_counter()
    state = asyncio.run(go())
    elapsed_ms = (time.perf_counter() - started) * 1000
    finished = task.with_state(state)
    if as_json:
        payload = task_json(finished, state, elapsed_ms, plan=plan, review=review)
        typer.echo(json.dumps(payload, indent=2))
    if finished.status is not TaskStatus.COMPLETED:
        message = (finished.error or {}).get("message", "the task did not complete")
        err.print(f"[red]modelyard: error:[/red] {escape(message)}", soft_wrap=True)
        raise typer.Exit(1)
    if not as_json:
        err.print(f"[dim]{escape(summary_line(finished, state, elapsed_ms))}[/dim]", soft_wrap=True)


async def _stream(
    graph: Any, task: Task, context: Context, config: ModelyardConfig
) -> dict[str, Any]:
    """Show the task as it streams (see `StreamView`); return the final state."""
    view = StreamView(err, task.max_rounds)
    state: dict[str, Any] = {}
    run_config: RunnableConfig = {"recursion_limit": recursion_limit(task, config)}
    events = stream_events(graph, task.to_input(), context=context, config=run_config)
    try:
        async for event in events:
            if isinstance(event, Finished):
                state = event.state
            view.show(event)
    finally:
        view.close()
    return state


@app.command()
def models(
    config_file: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the configured models, their roles, and whether each server has them."""
    config, _ = _load(config_file)
    availability = asyncio.run(check_models(config))
    if as_json:
        rows = [
            {
                "name": m.name,
                "provider": m.provider,
                "model": m.model,
                "roles": [r.value for r in m.roles],
                "url": a.url,
                "reachable": a.reachable,
                "available": a.available,
                "detail": a.detail,
            }
            for m, a in zip(config.models, availability, strict=True)
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200)
    console.print(render_models(config, availability))


@app.command()
def stats(
    config_file: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    reset: Annotated[
        bool, typer.Option("--reset", help="Forget the recorded stats of the configured models.")
    ] = False,
) -> None:
    """Show what modelyard has learned of each model: calls, success, latency, cooldowns."""
    config, _ = _load(config_file)

    async def read() -> dict[str, ModelStats]:
        async with open_store(config.persistence) as store:
            book = StatsBook(store, config)
            if reset:
                await book.reset()
            return await book.snapshot()

    records = asyncio.run(read())
    now = time.time()
    if as_json:
        rows = [
            record.model_dump(mode="json") | {"state": cooldown_state(config, record, now)}
            for record in records.values()
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200)
    console.print(render_stats(config, records, now))


@app.command()
def compare(
    prompt: Annotated[str, typer.Argument(help="The question every model answers.")],
    models: Annotated[
        list[str],
        typer.Option("--models", "-m", help="Configured models: a,b,c (or repeat --models)."),
    ],
    config_file: ConfigOption = None,
    assignments: SetOption = None,
    task_type: TaskTypeOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of the table.")
    ] = False,
) -> None:
    """Ask several models one prompt at once and show their answers side by side."""
    from modelyard.cli.compare import compare_command

    compare_command(prompt, models, config_file, task_type, as_json, assignments=assignments)


@app.command()
def batch(
    file: Annotated[Path, typer.Argument(help='JSONL: one task per line, {"prompt": ...}.')],
    config_file: ConfigOption = None,
    assignments: SetOption = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-w", min=1, help="Tasks at once; default: runner.workers."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Results JSONL; default: standard output."),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option("--db", help="Database for the queue and checkpoints; default: the config's."),
    ] = None,
    graph: Annotated[
        str,
        typer.Option("--graph", "-g", help="Graph for lines without one."),
    ] = "route",
    distributed: Annotated[
        bool,
        typer.Option(
            "--distributed",
            help="Put the tasks on the PostgreSQL queue for `modelyard worker` processes "
            "(persistence.url or --db a postgresql:// URL) and wait for their results.",
        ),
    ] = False,
) -> None:
    """Run a file of tasks through the runner; run it again to pick up where it stopped.

    Each line: {"prompt": ..., "task_type": ..., "model": ..., "priority": ..., "id": ...}
    (all but prompt optional). Results are written as JSONL as tasks finish.
    """
    from modelyard.cli.batch import BatchFileError, batch_main

    if distributed and workers is not None:
        raise UsageError(
            "--workers sets the in-process runner's workers; with --distributed, give each "
            "`modelyard worker` its --concurrency instead"
        )
    config, registry = _load(config_file, assignments)
    try:
        code = batch_main(
            file,
            config=config,
            registry=registry,
            workers=workers,
            out=out,
            db=db,
            graph=graph,
            console=err,
            distributed=distributed,
        )
    except BatchFileError as exc:
        raise UsageError(str(exc)) from exc
    raise typer.Exit(code)


DbOption = Annotated[
    str | None,
    typer.Option(
        "--db", help="The PostgreSQL URL of the queue; default: the config's persistence.url."
    ),
]


@app.command()
def worker(
    config_file: ConfigOption = None,
    assignments: SetOption = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            "-n",
            min=1,
            help="Tasks this worker runs at once; default: runner.workers.",
        ),
    ] = None,
    db: DbOption = None,
    name: Annotated[
        str | None, typer.Option("--name", help="The worker's name; default: HOST-PID.")
    ] = None,
) -> None:
    """Take tasks off the PostgreSQL queue and run them, until Ctrl-C or SIGTERM.

    Start one on each machine (any number per machine), all with the same persistence.url.
    A stop lets running tasks finish; a worker that dies has its tasks resumed by the others.
    """
    import logging

    from modelyard.graphs.distributed import DistributedWorker

    _, registry = _load(config_file, assignments)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("modelyard").setLevel(logging.INFO)
    runner = DistributedWorker(
        context=Context(registry=registry),
        concurrency=concurrency,
        persistence=db,
        name=name,
        signal_handlers=True,
    )
    err.print(
        f"[dim]starting worker {runner.name} on the queue at "
        f"{redacted(runner.persistence.url)}[/dim]"
    )
    asyncio.run(runner.run())


@app.command()
def submit(
    prompt: PromptArgument,
    config_file: ConfigOption = None,
    db: DbOption = None,
    priority: Annotated[
        int, typer.Option("--priority", "-p", help="Higher runs first (0 low .. 3 urgent).")
    ] = 1,
    model: ModelOption = None,
    task_type: TaskTypeOption = None,
    graph: Annotated[str, typer.Option("--graph", "-g", help="The graph to run.")] = "route",
    task_id: Annotated[
        str | None, typer.Option("--id", help="The task's id; default: a new one.")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for a worker to finish it; print it as JSON.")
    ] = False,
) -> None:
    """Put one task on the PostgreSQL queue for `modelyard worker` processes; print its id."""
    from modelyard.cli.batch import task_record
    from modelyard.graphs.distributed import DistributedRunner

    _, registry = _load(config_file)
    if model is not None:
        registry.get(model, where="(--model)")
    if not prompt.strip():
        raise UsageError("the prompt is empty; give the task's text")
    fields: dict[str, Any] = {"priority": priority, "model": model, "task_type": task_type}
    if task_id:
        fields["id"] = task_id

    async def go() -> Task:
        async with DistributedRunner(
            context=Context(registry=registry), persistence=db, graph=graph
        ) as runner:
            task = await runner.submit(prompt, **fields)
            print(task.id, flush=True)
            if not wait:
                await runner.shutdown(drain=False)
                return task
            return await runner.wait(task.id)

    try:
        task = asyncio.run(go())
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if wait:
        print(json.dumps(task_record(task), ensure_ascii=False))
        raise typer.Exit(0 if task.status is TaskStatus.COMPLETED else 1)


MethodOption = Annotated[
    str | None,
    typer.Option(
        "--method",
        help="keyword, embedding, llm or hybrid; default: the config's classifier.method.",
    ),
]
EmbeddingsOption = Annotated[
    str | None,
    typer.Option(
        "--embeddings",
        "-e",
        help="Embeddings model, e.g. minilm, ollama:nomic-embed-text; default: the config's "
        "classifier.embeddings, else minilm when installed.",
    ),
]


@app.command("eval-classifier")
def eval_classifier(
    file: Annotated[Path, typer.Argument(help='JSONL: {"text": ..., "label": ...} per line.')],
    method: MethodOption = None,
    embeddings: EmbeddingsOption = None,
    config_file: ConfigOption = None,
    assignments: SetOption = None,
    mistakes: Annotated[
        bool, typer.Option("--mistakes", help="Also list the misclassified prompts.")
    ] = False,
) -> None:
    """Measure the task classifier on a labeled file: accuracy, precision and recall per
    label, the confusion matrix, latency per prompt. The last line is `accuracy: 0.XXX`."""
    from modelyard.cli.classify import render_evaluation, run_evaluation, with_embeddings
    from modelyard.nodes.classifiers import read_labeled

    config, _ = _load(config_file, assignments)
    chosen = _method(method, config)
    config = with_embeddings(config, chosen, embeddings)
    rows = read_labeled(file)
    evaluation = run_evaluation(config, ModelRegistry(config), chosen, rows)
    if mistakes:
        for row, decision in evaluation.mistakes():
            text = " ".join(row.text.split())[:100]
            print(
                f"{row.label.value} -> {decision.task_type.value} "
                f"({decision.method} {decision.confidence:.2f}): {text}"
            )
        print()
    print("\n".join(render_evaluation(evaluation)))


@app.command("fit-classifier")
def fit_classifier(
    file: Annotated[Path, typer.Argument(help='JSONL: {"text": ..., "label": ...} per line.')],
    embeddings: EmbeddingsOption = None,
    config_file: ConfigOption = None,
    assignments: SetOption = None,
) -> None:
    """Tune the hybrid cascade's thresholds on a labeled file; print them for the config."""
    from modelyard.cli.classify import run_fit, with_embeddings
    from modelyard.nodes.classifiers import read_labeled

    config, _ = _load(config_file, assignments)
    config = with_embeddings(config, "hybrid", embeddings)
    fit = run_fit(config, ModelRegistry(config), read_labeled(file))
    print(
        f"keyword then embedding, without the LLM: accuracy {fit.accuracy_before:.3f} at "
        f"keyword {fit.before.keyword:.2f}, {fit.accuracy_after:.3f} at keyword "
        f"{fit.after.keyword:.2f}"
    )
    print("# put these in your config:")
    print("classifier:")
    print("  thresholds:")
    print(f"    keyword: {fit.after.keyword:.2f}")
    print(f"    embedding: {fit.after.embedding:.2f}")


def _method(method: str | None, config: ModelyardConfig) -> Any:
    choices = ("keyword", "embedding", "llm", "hybrid")
    if method is None:
        return config.classifier.method
    if method not in choices:
        raise UsageError(f"unknown method {method!r}; expected one of: {', '.join(choices)}")
    return method


@app.command()
def mcp(
    config_file: ConfigOption = None,
    http: Annotated[
        bool,
        typer.Option("--http", help="Serve streamable HTTP (at /mcp) instead of stdio."),
    ] = False,
    host: Annotated[str, typer.Option("--host", help="With --http: the address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="With --http: the port.")] = 8000,
) -> None:
    """Serve the graphs as MCP tools: run_task, plan_and_implement, review, list_models.

    Over stdio by default (what Claude Code, Cursor and most MCP clients start); with
    --http over streamable HTTP at http://HOST:PORT/mcp.
    """
    try:
        from modelyard.cli.mcp_server import run_server
    except ImportError as exc:
        raise UsageError(
            f"the MCP server needs the mcp package ({exc}); install it with "
            "pip install 'modelyard[mcp]'"
        ) from None
    run_server(config_file, http=http, host=host, port=port)


@app.command()
def demo() -> None:
    """Run both graphs against a local stand-in server with scripted models (offline)."""
    from modelyard.cli.demo import run_demo

    run_demo(Console(highlight=False))


def main() -> None:
    """Run the CLI; print modelyard's errors without a traceback."""
    try:
        app()
    except (ModelyardError, UsageError) as exc:
        kind = "config error" if type(exc).__name__ == "ConfigError" else "error"
        lines = str(exc).splitlines() or [type(exc).__name__]
        for line in lines:
            err.print(f"[red]modelyard: {kind}:[/red] {escape(line)}", soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[yellow]modelyard: interrupted[/yellow]")
        sys.exit(130)


if __name__ == "__main__":
    main()
