"""Open the LangGraph store that keeps per-model stats: SQLite, in memory, or PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore

from modelyard.configs.schema import PersistenceSettings
from modelyard.state import ModelyardError

#: Seconds a SQLite writer waits for another process's write to finish.
SQLITE_BUSY_TIMEOUT = 30.0


class PersistenceError(ModelyardError):
    """The stats store could not be opened."""


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
        conn = await aiosqlite.connect(
            str(path), isolation_level=None, timeout=SQLITE_BUSY_TIMEOUT
        )
    except (OSError, aiosqlite.Error) as exc:
        raise PersistenceError(
            f"cannot open the stats database {str(path)!r}: {exc}. Set persistence.url in "
            "the config to a writable file, `memory`, or a postgresql:// URL"
        ) from exc
    try:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
        store = AsyncSqliteStore(conn)
        try:
            await store.setup()
        except aiosqlite.Error as exc:
            raise PersistenceError(
                f"the stats database {str(path)!r} cannot be used: {exc}. Move it away, or "
                "point persistence.url elsewhere"
            ) from exc
        yield store
    finally:
        await conn.close()


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
            await store.setup()
        except psycopg.OperationalError as exc:
            raise PersistenceError(
                f"cannot reach the stats database at {_redacted(url)}: {str(exc).strip()}. "
                "Is PostgreSQL running, and does the database exist?"
            ) from exc
        yield store


def _redacted(url: str) -> str:
    """Return the URL with any password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
