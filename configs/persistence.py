"""Open the LangGraph store that keeps per-model stats: SQLite, in memory, or PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

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
    import aiosqlite
    from langgraph.store.sqlite.aio import AsyncSqliteStore

    path = Path(location).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(str(path), isolation_level=None, timeout=SQLITE_BUSY_TIMEOUT)
    except (OSError, aiosqlite.Error) as exc:
        raise PersistenceError(
            f"cannot open the stats database {str(path)!r}: {exc}. Set persistence.url in "
            "the config to a writable file, `memory`, or a postgresql:// URL"
        ) from exc
    lock_path = path.with_name(path.name + ".lock")
    try:
        store = AsyncSqliteStore(conn)
        try:
            # Setting up a new file runs migrations: one process at a time.
            async with _file_lock(lock_path):
                await conn.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
                await conn.execute("PRAGMA journal_mode=WAL")
                await store.setup()
        except aiosqlite.Error as exc:
            raise PersistenceError(
                f"the stats database {str(path)!r} cannot be used: {exc}. Move it away, or "
                "point persistence.url elsewhere"
            ) from exc
        _update_locks[store] = lambda: _file_lock(lock_path)
        yield store
    finally:
        await conn.close()


@asynccontextmanager
async def _file_lock(path: Path) -> AsyncIterator[None]:
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
            async with lock.hold():  # migrations: one process at a time
                await store.setup()
        except psycopg.OperationalError as exc:
            raise PersistenceError(
                f"cannot reach the stats database at {_redacted(url)}: {str(exc).strip()}. "
                "Is PostgreSQL running, and does the database exist?"
            ) from exc
        _update_locks[store] = lock.hold
        yield store


class _AdvisoryLock:
    """A PostgreSQL advisory lock for modelyard's stats, held on a connection of its own."""

    KEY = zlib.crc32(b"modelyard.model_stats")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.local = asyncio.Lock()  # one holder per connection at a time

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        async with self.local:
            await self.conn.execute("SELECT pg_advisory_lock(%s)", (self.KEY,))
            try:
                yield
            finally:
                await self.conn.execute("SELECT pg_advisory_unlock(%s)", (self.KEY,))


def _redacted(url: str) -> str:
    """Return the URL with any password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
