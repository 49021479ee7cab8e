"""Open the LangGraph store that keeps per-model stats: SQLite, in memory, or PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore

from modelyard.configs.schema import PersistenceSettings
from modelyard.state import ModelyardError

#: Seconds a SQLite writer waits for another process's write to finish.
SQLITE_BUSY_TIMEOUT = 30.0


class PersistenceError(ModelyardError):
    """The stats store could not be opened."""


#: The lock that serialises read-change-write updates of one store across processes.
_update_locks: WeakKeyDictionary[BaseStore, Callable[[], AbstractAsyncContextManager[Any]]] = (
    WeakKeyDictionary()
)


def update_lock(store: BaseStore) -> AbstractAsyncContextManager[Any]:
    """Return a lock to hold while reading, changing and writing an item of `store`.

    For a store from `open_store` it excludes every other process and connection updating
    the same database (a file lock beside a SQLite file, an advisory lock in PostgreSQL);
    for other stores it is a no-op, and only the caller's own locking applies.
    """
    factory = _update_locks.get(store)
    return factory() if factory is not None else nullcontext()


@asynccontextmanager
async def open_store(settings: PersistenceSettings | None = None) -> AsyncIterator[BaseStore]:
    """Open the store `settings.url` names, set it up, and close it on exit.

    A SQLite file (the default, `.modelyard/modelyard.db`, its folder made when missing) is
    opened in WAL mode so that several processes can share it; `memory` gives a store that
    lives as long as the block; a `postgresql://` URL needs the `postgres` extra
    (`pip install 'modelyard[postgres]'`).

    Raises:
        PersistenceError: the database cannot be opened; says which and why.
    """
    settings = settings or PersistenceSettings()
    backend = settings.backend
    if backend == "memory":
        yield InMemoryStore()
    elif backend == "postgres":
        async with _postgres_store(settings.url) as store:
            yield store
    else:
        async with _sqlite_store(settings.url) as store:
            yield store


@asynccontextmanager
async def _sqlite_store(location: str) -> AsyncIterator[BaseStore]:
    from modelyard.configs.sqlite import SharedSqliteStore

    path = Path(location).expanduser()
    async with SharedSqliteStore.open(path) as store:
        _update_locks[store] = lambda: file_lock(lock_path(path))
        yield store


async def _stop_batching(store: BaseStore) -> None:
    """Stop the store's background batching task before its connection closes.

    LangGraph's async SQL stores batch operations in a task that is only cancelled when the
    store is garbage-collected; left running, it is reported as destroyed while pending.
    """
    task = getattr(store, "_task", None)
    if isinstance(task, asyncio.Task) and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@asynccontextmanager
async def open_checkpointer(
    settings: PersistenceSettings | None = None, *, pool: Any = None
) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """Open a LangGraph checkpointer in the database `settings.url` names, set up for use.

    The same database as the stats store: a SQLite file (default), `memory`, or
    PostgreSQL. Checkpoints are written with modelyard's serializer.

    Args:
        settings: The config's persistence settings.
        pool: For PostgreSQL, a psycopg `AsyncConnectionPool` to share; opened when absent.

    Raises:
        PersistenceError: the database cannot be opened; says which and why.
    """
    from modelyard.state.serde import checkpoint_serializer

    settings = settings or PersistenceSettings()
    serde = checkpoint_serializer()
    if settings.backend == "memory":
        yield InMemorySaver(serde=serde)
    elif settings.backend == "postgres":
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        async with postgres_pool(settings.url, given=pool) as opened:
            saver = AsyncPostgresSaver(opened, serde=serde)
            async with opened.connection() as conn, _AdvisoryLock(conn).hold(setup=True):
                await saver.setup()  # migrations: one process at a time
            yield saver
    else:
        from modelyard.configs.sqlite import GroupCommitSqliteSaver

        path = Path(settings.url).expanduser()
        async with GroupCommitSqliteSaver.open(path, serde=serde) as sqlite_saver:
            yield sqlite_saver


@asynccontextmanager
async def postgres_pool(url: str, *, given: Any = None, size: int = 8) -> AsyncIterator[Any]:
    """Yield `given`, or a psycopg connection pool to `url` opened for the block.

    Connections are in autocommit mode with dict rows and no prepared statements, as
    LangGraph's PostgreSQL checkpointer expects.

    Raises:
        PersistenceError: PostgreSQL support is missing or the server cannot be reached.
    """
    if given is not None:
        yield given
        return
    try:
        import psycopg
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool, PoolTimeout
    except ImportError as exc:
        raise PersistenceError(
            f"persistence.url is a PostgreSQL URL but PostgreSQL support is not installed "
            f"({exc.name} is missing); run `pip install 'modelyard[postgres]'`"
        ) from exc
    pool = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=size,
        open=False,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
    )
    try:
        await pool.open(wait=True, timeout=10)
    except (psycopg.OperationalError, PoolTimeout) as exc:
        await pool.close()
        raise PersistenceError(
            f"cannot reach the database at {redacted(url)}: {str(exc).strip()}. "
            "Is PostgreSQL running, and does the database exist?"
        ) from exc
    try:
        yield pool
    finally:
        await pool.close()


@asynccontextmanager
async def file_lock(path: Path) -> AsyncIterator[None]:
    """Hold an exclusive lock on `path` (made when missing), against every other holder.

    The lock is taken without blocking the event loop: at once when it is free, else in a
    worker thread. Without `fcntl` (Windows) only this process's own locking applies.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@asynccontextmanager
async def _postgres_store(url: str) -> AsyncIterator[BaseStore]:
    try:
        import psycopg
        from langgraph.store.postgres.aio import AsyncPostgresStore
    except ImportError as exc:
        raise PersistenceError(
            f"persistence.url is a PostgreSQL URL but PostgreSQL support is not installed "
            f"({exc.name} is missing); run `pip install 'modelyard[postgres]'`"
        ) from exc
    async with AsyncExitStack() as stack:
        try:
            store = await stack.enter_async_context(AsyncPostgresStore.from_conn_string(url))
            side = await psycopg.AsyncConnection.connect(url, autocommit=True)
            stack.push_async_callback(side.close)
            lock = _AdvisoryLock(side)
            async with lock.hold(setup=True):  # migrations: one process at a time
                await store.setup()
        except psycopg.OperationalError as exc:
            raise PersistenceError(
                f"cannot reach the stats database at {redacted(url)}: {str(exc).strip()}. "
                "Is PostgreSQL running, and does the database exist?"
            ) from exc
        _update_locks[store] = lock.hold
        try:
            yield store
        finally:
            await _stop_batching(store)


class _AdvisoryLock:
    """A PostgreSQL advisory lock for modelyard's stats, held on a connection of its own."""

    KEY = zlib.crc32(b"modelyard.model_stats")
    #: Migrations take their own key: a migration's `CREATE INDEX CONCURRENTLY` waits for
    #: every open statement in the database, a stats update waiting for KEY among them.
    SETUP_KEY = zlib.crc32(b"modelyard.migrations")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.local = asyncio.Lock()  # one holder per connection at a time

    @asynccontextmanager
    async def hold(self, *, setup: bool = False) -> AsyncIterator[None]:
        """Hold the lock for the block.

        Args:
            setup: For migrations: poll for the lock instead of waiting in
                `pg_advisory_lock`. A session waiting there holds a snapshot, which another
                process's `CREATE INDEX CONCURRENTLY` (LangGraph's migrations) waits for,
                while that process holds the lock: a deadlock PostgreSQL does not see.
        """
        async with self.local:
            key = self.SETUP_KEY if setup else self.KEY
            if setup:
                await poll_advisory_lock(self.conn, key)
            else:
                await self.conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            try:
                yield
            finally:
                await self.conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


async def poll_advisory_lock(conn: Any, key: int, every: float = 0.05) -> None:
    """Take the PostgreSQL advisory lock `key` on `conn`, trying again until it is free.

    Unlike `pg_advisory_lock`, no statement stays open while waiting, so a concurrent index
    build elsewhere (which waits for every open snapshot) never waits for this one.
    """
    while True:
        cursor = await conn.execute("SELECT pg_try_advisory_lock(%s) AS taken", (key,))
        row = await cursor.fetchone()
        taken = row["taken"] if isinstance(row, dict) else row[0]
        if taken:
            return
        await asyncio.sleep(every)


def redacted(url: str) -> str:
    """Return the URL with any password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
