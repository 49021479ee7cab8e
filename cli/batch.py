"""`modelyard batch`: run a JSONL file of tasks through the task runner, resumably.

Each line is a task: `{"prompt": ..., "task_type"?, "model"?, "priority"?, "id"?, "graph"?}`.
A line without an id gets one from its position and text, so running the same file again
with the same database picks up where an interrupted run stopped: finished tasks are not run
again, unfinished ones resume from their last checkpoint, and every task's result is written
to the output file exactly once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from modelyard.configs import ModelRegistry, ModelyardConfig
from modelyard.configs.persistence import redacted
from modelyard.configs.schema import PersistenceSettings
from modelyard.graphs.distributed import DistributedRunner
from modelyard.graphs.queue import FINISHED
from modelyard.graphs.run import BUILDERS
from modelyard.graphs.runner import TaskRunner
from modelyard.nodes import Context
from modelyard.state import Task, TaskStatus, UnknownModelError

#: The fields a line may have.
LINE_FIELDS = {"prompt", "task_type", "model", "priority", "id", "graph"}


class BatchFileError(Exception):
    """Lines of the input file that cannot be tasks; one `FILE:LINE: problem` per line."""


@dataclass
class BatchLine:
    """One task of the file, with where it came from."""

    number: int
    task: Task
    graph: str


def read_batch(path: Path, registry: ModelRegistry, default_graph: str) -> list[BatchLine]:
    """Read and check every line; raise one error listing every bad line.

    Raises:
        BatchFileError: a line that is not a JSON object, lacks a prompt, names an unknown
            model, task type or graph, or repeats another line's id.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BatchFileError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    lines: list[BatchLine] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = _task_line(raw, number, registry, default_graph)
        except ValueError as exc:
            problems.append(f"{path}:{number}: {exc}")
            continue
        if line.task.id in seen:
            problems.append(
                f"{path}:{number}: id {line.task.id!r} is also on line {seen[line.task.id]}"
            )
            continue
        seen[line.task.id] = number
        lines.append(line)
    if problems:
        raise BatchFileError("\n".join(problems))
    if not lines:
        raise BatchFileError(f"{path}: no tasks in it; write one JSON object per line")
    return lines


def _task_line(raw: str, number: int, registry: ModelRegistry, default_graph: str) -> BatchLine:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ValueError('each line must be a JSON object like {"prompt": "..."}')
    unknown = sorted(set(data) - LINE_FIELDS)
    if unknown:
        allowed = ", ".join(sorted(LINE_FIELDS))
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; a line may have {allowed}")
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is missing or empty")
    graph = data.get("graph") or default_graph
    if graph not in BUILDERS:
        raise ValueError(f"unknown graph {graph!r}; use one of {', '.join(BUILDERS)}")
    if data.get("model") is not None:
        try:
            registry.get(str(data["model"]))
        except UnknownModelError as exc:
            raise ValueError(str(exc)) from None
    task_id = data.get("id") or hashlib.sha256(f"{number}\0{raw.strip()}".encode()).hexdigest()[:32]
    fields = {k: data[k] for k in ("task_type", "model", "priority") if data.get(k) is not None}
    try:
        task = Task(id=str(task_id), prompt=prompt, **fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"{where}: {first['msg']}") from None
    return BatchLine(number, task, graph)


@dataclass
class ResultsFile:
    """The output JSONL: one line per finished task, each task written once."""

    path: Path | None
    """The file; None writes to standard output."""
    written: set[str] = field(default_factory=set)
    stream: IO[str] | None = None

    def open(self) -> ResultsFile:
        """Open for appending, after reading which tasks an earlier run already wrote."""
        if self.path is None:
            self.stream = sys.stdout
            return self
        if self.path.exists():
            self.written = set(_written_ids(self.path))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = self.path.open("a", encoding="utf-8")
        return self

    def write(self, line: BatchLine, task: Task) -> None:
        """Write the task's result unless an earlier run did."""
        if task.id in self.written or self.stream is None:
            return
        self.stream.write(json.dumps(result_record(line, task), ensure_ascii=False) + "\n")
        self.stream.flush()
        self.written.add(task.id)

    def close(self) -> None:
        if self.stream is not None and self.stream is not sys.stdout:
            self.stream.close()


def _written_ids(path: Path) -> Iterator[str]:
    """Yield the ids in an earlier run's output; cut a last line a kill left half written."""
    with path.open("r+", encoding="utf-8") as handle:
        text = handle.read()
        complete = text[: text.rfind("\n") + 1]
        if len(complete) != len(text):
            handle.truncate(len(complete.encode()))
    for raw in complete.splitlines():
        try:
            yield json.loads(raw)["id"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue


def result_record(line: BatchLine, task: Task) -> dict[str, Any]:
    """Return the output line of a finished task."""
    record = task_record(task)
    return {"id": record.pop("id"), "line": line.number, **record}


def task_record(task: Task) -> dict[str, Any]:
    """Return a finished task as JSON: status, models, result or error, times."""
    models = sorted({e.model for e in task.history if e.kind == "model_call" and e.model})
    return {
        "id": task.id,
        "status": task.status.value,
        "task_type": task.task_type.value if task.task_type else None,
        "model": task.assigned_model,
        "models": models,
        "result": task.result,
        "error": task.error,
        "attempts": task.attempts,
        "started_at": task.started_at.isoformat() if task.started_at else None,
        "finished_at": task.finished_at.isoformat() if task.finished_at else None,
    }


class BatchProgress:
    """A live progress bar with the count of this file's tasks in each status."""

    def __init__(self, console: Console, lines: list[BatchLine]) -> None:
        self.status = {line.task.id: TaskStatus.PENDING for line in lines}
        self.progress = Progress(
            TextColumn("[bold]batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.bar = self.progress.add_task("batch", total=len(lines), counts="")

    def set(self, task: Task) -> None:
        """Note a task's new status and redraw the counts."""
        if task.id not in self.status:
            return  # a task of another batch, resumed by the runner
        self.status[task.id] = task.status
        counts = self.counts()
        finished = sum(counts[s] for s in FINISHED)
        text = " · ".join(f"{s.value} {counts[s]}" for s in TaskStatus)
        self.progress.update(self.bar, completed=finished, counts=text)

    def counts(self) -> dict[TaskStatus, int]:
        counts = {s: 0 for s in TaskStatus}
        for status in self.status.values():
            counts[status] += 1
        return counts


async def run_batch(
    lines: list[BatchLine],
    *,
    config: ModelyardConfig,
    registry: ModelRegistry,
    workers: int | None,
    persistence: PersistenceSettings,
    out: ResultsFile,
    console: Console,
    distributed: bool = False,
) -> dict[TaskStatus, int]:
    """Run the file's tasks (and resume the database's unfinished ones); return the counts.

    Tasks the database already finished are written to `out` if an earlier run did not,
    and not run again. With `distributed`, the tasks go on the PostgreSQL queue that
    `modelyard worker` processes take them from, and this waits for them there.
    """
    by_id = {line.task.id: line for line in lines}
    view = BatchProgress(console, lines)

    def finished(task: Task) -> None:
        if task.id in by_id:
            out.write(by_id[task.id], task)

    runner: TaskRunner | DistributedRunner
    if distributed:
        runner = DistributedRunner(
            context=Context(registry=registry),
            persistence=persistence,
            on_finish=finished,
            on_change=view.set,
        )
    else:
        runner = TaskRunner(
            context=Context(registry=registry),
            workers=workers,
            persistence=persistence,
            on_finish=finished,
            on_change=view.set,
        )
    with view.progress:
        async with runner:
            assert runner.queue is not None
            known = await runner.queue.get(by_id)
            for task_id in known:
                task = await runner.get(task_id)  # as this runner has it, if it resumed it
                assert task is not None
                view.set(task)
                if task.status in FINISHED:
                    out.write(by_id[task_id], task)
            if isinstance(runner, DistributedRunner):  # an earlier run's, still on the queue
                runner.watch(entry.task for entry in known.values())
            for graph in dict.fromkeys(line.graph for line in lines):
                new = [ln.task for ln in lines if ln.graph == graph and ln.task.id not in known]
                await runner.submit_many(new, graph=graph)
            await runner.join()
    return view.counts()


def batch_main(
    path: Path,
    *,
    config: ModelyardConfig,
    registry: ModelRegistry,
    workers: int | None,
    out: Path | None,
    db: str | None,
    graph: str,
    console: Console,
    distributed: bool = False,
) -> int:
    """Run the batch command; return its exit code (0 all completed, 1 some failed, 130 stopped)."""
    lines = read_batch(path, registry, graph)
    persistence = PersistenceSettings(url=db) if db else config.persistence
    results = ResultsFile(out).open()
    where = "workers on" if distributed else "database"
    console.print(
        f"[dim]{len(lines)} task(s) from {path}; results to {out or 'standard output'}; "
        f"{where} {redacted(persistence.url)}[/dim]"
    )

    async def go() -> dict[TaskStatus, int]:
        main = asyncio.current_task()
        assert main is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, main.cancel)
        return await run_batch(
            lines,
            config=config,
            registry=registry,
            workers=workers,
            persistence=persistence,
            out=results,
            console=console,
            distributed=distributed,
        )

    try:
        counts = asyncio.run(go())
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print(
            "[yellow]stopped[/yellow]: unfinished tasks stay in the database; run the same "
            "command again to pick up where this run stopped"
        )
        return 130
    finally:
        results.close()
    summary = ", ".join(f"{s.value} {n}" for s, n in counts.items() if n)
    console.print(f"[dim]done: {summary}[/dim]")
    return 0 if counts[TaskStatus.COMPLETED] == len(lines) else 1
