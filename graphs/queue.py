"""The runner's durable queue: every submitted task and its status, kept in the runner's database.

The queue table lives beside LangGraph's checkpoints (the same SQLite file or PostgreSQL
database), so a submitted task is never lost: a runner started after a crash finds every task
that was pending or running and resumes it. `open_task_queue` opens the backend the
persistence settings name; all three have the same interface.
"""

from __future__ import annotations

import asyncio
import itertools
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelyard.configs.persistence import SQLITE_BUSY_TIMEOUT, PersistenceError, postgres_pool
from modelyard.configs.schema import PersistenceSettings
from modelyard.configs.sqlite import SqliteFile, open_sqlite
from modelyard.state import Task, TaskStatus

#: Statuses after which a task never changes again.
FINISHED = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
UNFINISHED = (TaskStatus.PENDING.value, TaskStatus.RUNNING.value)


@dataclass
class QueuedTask:
    """A task as the queue holds it: the task, the graph that runs it, its place in line."""

    task: Task
    """The task, with its status and history as last saved."""
    graph: str
    """The name of the graph that runs it (`route`, `plan_and_implement`, ...)."""
    seq: int = 0
    """Submission order; breaks ties between tasks of one priority and creation time."""

    @property
    def order(self) -> tuple[int, str, int]:
        """Return the key that puts higher priority first, then older tasks first."""
        return (-self.task.priority, utc_text(self.task.created_at), self.seq)


class TaskQueue(ABC):
    """Where the runner keeps its tasks; the same interface for every database."""

    @abstractmethod
    async def add(self, entries: Sequence[QueuedTask]) -> list[QueuedTask]:
        """Store new tasks as submitted; return those stored (ids already known are skipped)."""

    @abstractmethod
    def save(self, task: Task) -> asyncio.Future[None]:
        """Start storing a task's new status, history and result; return a future done
        once it is stored, or failed (its error then), or cancelled (the event loop ended).

        Some errors may raise here instead: the memory queue's for a task it does not hold,
        SQLite's for a task that cannot be turned into a row. The save goes on when its
        caller stops waiting (cancelling the future does not take it back).
        """

    @abstractmethod
    async def get(self, task_ids: Iterable[str]) -> dict[str, QueuedTask]:
        """Return the stored tasks among `task_ids`, by id."""

    @abstractmethod
    async def unfinished(self) -> list[QueuedTask]:
        """Return every pending or running task, in the order they should run."""

    @abstractmethod
    async def list_tasks(self, status: TaskStatus | None = None) -> list[Task]:
        """Return the tasks with `status` (every task when None), oldest first."""

    @abstractmethod
    async def counts(self) -> dict[TaskStatus, int]:
        """Return how many tasks have each status."""


class MemoryTaskQueue(TaskQueue):
    """A queue that lives and dies with the process (persistence.url `memory`)."""

    def __init__(self) -> None:
        self._entries: dict[str, QueuedTask] = {}
        self._seq = itertools.count(1)

    async def add(self, entries: Sequence[QueuedTask]) -> list[QueuedTask]:
        added = []
        for entry in entries:
            if entry.task.id not in self._entries:
                entry.seq = next(self._seq)
                self._entries[entry.task.id] = entry
                added.append(entry)
        return added

    def save(self, task: Task) -> asyncio.Future[None]:
        self._entries[task.id].task = task
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stored.set_result(None)  # awaited, a done future does not wait for the event loop
        return stored

    async def get(self, task_ids: Iterable[str]) -> dict[str, QueuedTask]:
        return {i: self._entries[i] for i in task_ids if i in self._entries}

    async def unfinished(self) -> list[QueuedTask]:
        waiting = [e for e in self._entries.values() if e.task.status not in FINISHED]
        return sorted(waiting, key=lambda e: e.order)

    async def list_tasks(self, status: TaskStatus | None = None) -> list[Task]:
        tasks = [e.task for e in self._entries.values() if status in (None, e.task.status)]
        return sorted(tasks, key=lambda t: t.created_at)

    async def counts(self) -> dict[TaskStatus, int]:
        counts = dict.fromkeys(TaskStatus, 0)
        for entry in self._entries.values():
            counts[entry.task.status] += 1
        return counts


_COLUMNS = "id, graph, priority, created_at, seq, status, task"
#: The table of the in-process runner's queue; the distributed one keeps its own.
TASKS_TABLE = "modelyard_tasks"
_CREATE = [
    """CREATE TABLE IF NOT EXISTS {table} (
        id TEXT PRIMARY KEY,
        graph TEXT NOT NULL,
        priority INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        seq BIGINT NOT NULL,
        status TEXT NOT NULL,
        task TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS {table}_status ON {table} (status)",
]
_ORDER = "ORDER BY priority DESC, created_at, seq"
_UPDATE = "UPDATE {table} SET status = ?, task = ? WHERE id = ?"


class SqlTaskQueue(TaskQueue):
    """The queue table in SQL; subclasses say how a statement reaches the database."""

    placeholder = "?"

    def __init__(self, table: str = TASKS_TABLE) -> None:
        self.table = table
        self._seq = itertools.count(1)
        self._unsaved: dict[str, Task] = {}
        self._flush: asyncio.Future[None] | None = None

    @abstractmethod
    async def _execute(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run `sql` once per row of parameters, in one transaction."""

    @abstractmethod
    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query and return its rows."""

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self.placeholder).replace("{table}", self.table)

    async def setup(self) -> None:
        """Create the table when missing, and continue the submission order."""
        for statement in _CREATE:
            await self._execute(self._sql(statement), [()])
        rows = await self._fetch(self._sql("SELECT COALESCE(MAX(seq), 0) FROM {table}"))
        self._seq = itertools.count(int(rows[0][0]) + 1)

    async def add(self, entries: Sequence[QueuedTask]) -> list[QueuedTask]:
        known = await self.get(e.task.id for e in entries)
        added, seen = [], set(known)
        for entry in entries:
            if entry.task.id not in seen:
                seen.add(entry.task.id)
                entry.seq = next(self._seq)
                added.append(entry)
        rows = [
            (
                e.task.id,
                e.graph,
                e.task.priority,
                utc_text(e.task.created_at),
                e.seq,
                e.task.status.value,
                e.task.model_dump_json(),
            )
            for e in added
        ]
        if rows:
            sql = f"INSERT INTO {{table}} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
            await self._execute(self._sql(sql), rows)
        return added

    def save(self, task: Task) -> asyncio.Future[None]:
        """Store the task; saves made at the same moment share one transaction."""
        self._unsaved[task.id] = task
        if self._flush is None:
            self._flush = asyncio.get_running_loop().create_task(self._save_unsaved())
        return asyncio.shield(self._flush)  # one caller's cancellation stops no one's save

    async def _save_unsaved(self) -> None:
        await asyncio.sleep(0)  # let the other workers' saves of this moment join in
        tasks, self._unsaved, self._flush = self._unsaved, {}, None
        await self._execute(self._sql(_UPDATE), [_update_row(t) for t in tasks.values()])

    async def get(self, task_ids: Iterable[str]) -> dict[str, QueuedTask]:
        found: dict[str, QueuedTask] = {}
        ids = list(task_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT graph, seq, task FROM {{table}} WHERE id IN ({marks})"
            for entry in map(_entry, await self._fetch(self._sql(sql), chunk)):
                found[entry.task.id] = entry
        return found

    async def unfinished(self) -> list[QueuedTask]:
        sql = f"SELECT graph, seq, task FROM {{table}} WHERE status IN (?, ?) {_ORDER}"
        return [_entry(row) for row in await self._fetch(self._sql(sql), UNFINISHED)]

    async def list_tasks(self, status: TaskStatus | None = None) -> list[Task]:
        where, params = ("WHERE status = ?", [status.value]) if status else ("", [])
        sql = f"SELECT graph, seq, task FROM {{table}} {where} ORDER BY created_at, seq"
        return [_entry(row).task for row in await self._fetch(self._sql(sql), params)]

    async def counts(self) -> dict[TaskStatus, int]:
        counts = dict.fromkeys(TaskStatus, 0)
        sql = self._sql("SELECT status, COUNT(*) FROM {table} GROUP BY status")
        rows = await self._fetch(sql)
        for status, count in rows:
            counts[TaskStatus(status)] = int(count)
        return counts


def utc_text(moment: datetime) -> str:
    """Return a time as UTC ISO text, which sorts in time order whatever zone it came in."""
    return moment.astimezone(UTC).isoformat()


def _update_row(task: Task) -> tuple[str, str, str]:
    """Return the parameters of `_UPDATE` that store `task`."""
    return (task.status.value, task.model_dump_json(), task.id)


def _entry(row: tuple[Any, ...]) -> QueuedTask:
    graph, seq, payload = row
    return QueuedTask(Task.model_validate_json(payload), graph, int(seq))


class SqliteTaskQueue(SqlTaskQueue):
    """The queue table in the runner's SQLite file; its writes share the file's commits."""

    def __init__(self, db: SqliteFile, table: str = TASKS_TABLE) -> None:
        super().__init__(table)
        self.db = db

    async def _execute(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self.db.write(sql, rows)

    def save(self, task: Task) -> asyncio.Future[None]:
        """Store the task in the file's next commit, which the saves of the moment share.

        The file groups writes itself, so the save goes straight to it instead of first
        waiting a turn of the event loop to group the saves here (in order: a later save
        of a task wins). It is `_execute`'s write, without its coroutine: the future of
        the commit is what the caller waits for.
        """
        return self.db.write(self._sql(_UPDATE), [_update_row(task)])

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await self.db.run(lambda conn: [tuple(row) for row in conn.execute(sql, params)])


class PostgresTaskQueue(SqlTaskQueue):
    """The queue table in PostgreSQL, on connections from the runner's pool."""

    placeholder = "%s"

    def __init__(self, pool: Any, table: str = TASKS_TABLE) -> None:
        super().__init__(table)
        self.pool = pool

    async def _execute(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(sql, rows)

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        from psycopg.rows import tuple_row

        async with self.pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(sql, params)
            return [tuple(row) for row in await cur.fetchall()]


@asynccontextmanager
async def open_task_queue(
    settings: PersistenceSettings, *, pool: Any = None
) -> AsyncIterator[TaskQueue]:
    """Open the queue in the database `settings.url` names, creating its table when missing.

    Args:
        settings: The config's persistence settings.
        pool: For PostgreSQL, a psycopg `AsyncConnectionPool` to share; opened when absent.

    Raises:
        PersistenceError: the database cannot be opened or used; says which and what to do.
    """
    backend = settings.backend
    if backend == "memory":
        yield MemoryTaskQueue()
        return
    if backend == "postgres":
        async with postgres_pool(settings.url, given=pool) as opened:
            queue: SqlTaskQueue = PostgresTaskQueue(opened)
            await queue.setup()
            yield queue
        return
    path = Path(settings.url).expanduser()
    async with open_sqlite(path, purpose="task queue") as db:
        queue = SqliteTaskQueue(db)
        try:
            await queue.setup()
        except Exception as exc:
            raise PersistenceError(
                f"the task queue in {str(path)!r} cannot be used: {exc}. Move the file "
                f"away, or point persistence.url elsewhere (busy for {SQLITE_BUSY_TIMEOUT:g} s?)"
            ) from exc
        yield queue
