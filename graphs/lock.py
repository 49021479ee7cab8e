"""One runner per database: the lock a task runner holds while it works through the queue."""

from __future__ import annotations

import os
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from modelyard.configs.persistence import PersistenceError
from modelyard.configs.schema import PersistenceSettings

#: The PostgreSQL advisory lock key of the runner's queue.
RUNNER_LOCK_KEY = zlib.crc32(b"modelyard.task_runner")


class RunnerBusyError(PersistenceError):
    """Another runner works through the same database's queue."""


@asynccontextmanager
async def hold_runner_lock(settings: PersistenceSettings) -> AsyncIterator[None]:
    """Hold the database's runner lock for the block, or fail at once if another holds it.

    Two runners on one queue would run its unfinished tasks twice. The lock is a file lock
    beside a SQLite file, or a PostgreSQL advisory lock; either is released when the
    process ends, however it ends, so a runner killed mid-batch never blocks the next.

    Raises:
        RunnerBusyError: another runner (its pid named, for SQLite) holds the lock.
    """
    if settings.backend == "memory":
        yield
    elif settings.backend == "postgres":
        async with _advisory_lock(settings.url):
            yield
    else:
        with _file_lock(Path(settings.url).expanduser()):
            yield


@contextmanager
def _file_lock(db: Path) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on `<db>.runner.lock`, writing our pid in it."""
    import fcntl

    path = db.with_name(db.name + ".runner.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise RunnerBusyError(
                f"another modelyard runner (pid {holder}) is working through the queue in "
                f"{str(db)!r}; wait for it to finish, stop it, or give this run another "
                "database (persistence.url, or MODELYARD_DB for the packaged config)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing releases the lock


@asynccontextmanager
async def _advisory_lock(url: str) -> AsyncIterator[None]:
    import psycopg

    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    except psycopg.OperationalError as exc:
        raise PersistenceError(
            f"cannot reach the task database: {str(exc).strip()}. Is PostgreSQL running, "
            "and does the database exist?"
        ) from exc
    async with conn:
        cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", (RUNNER_LOCK_KEY,))
        row = await cursor.fetchone()
        if not row or not row[0]:
            raise RunnerBusyError(
                "another modelyard runner is working through the queue in this PostgreSQL "
                "database; wait for it to finish, stop it, or use another database"
            )
        try:
            yield
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (RUNNER_LOCK_KEY,))
