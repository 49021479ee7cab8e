"""One SQLite connection per file, with group commit: the runner's checkpoints, queue and stats.

With 64 tasks at once, the runner's SQLite file cost it more CPU than its graphs did: LangGraph's
`AsyncSqliteSaver`, the queue and `AsyncSqliteStore` each had an aiosqlite connection, and
committed every checkpoint, every task's writes, every status and stats update on its own,
each statement, commit and cursor close a hand-off to a thread and back. Here they share one
connection; the writes that arrive while a commit runs go into the next commit together. Short
work (a commit, rows by key) runs on the event loop when nothing can make it wait, the rest on
the connection's own thread. A write returns only once its commit is done, so
`durability="sync"` keeps its promise: a step whose checkpoint was saved is not run again
after a crash.

`GroupCommitSqliteSaver` is LangGraph's `SqliteSaver` (the same tables and rows: either
saver reads the other's checkpoints) with async methods that go through that connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    SerializerProtocol,
    get_checkpoint_metadata,
)
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.store.base import GetOp, Op, PutOp, Result
from langgraph.store.sqlite import SqliteStore

from modelyard.configs.batches import Batches
from modelyard.configs.persistence import (
    SQLITE_BUSY_TIMEOUT,
    PersistenceError,
    file_lock,
    lock_path,
)

T = TypeVar("T")
log = logging.getLogger("modelyard.sqlite")

BUSY_TIMEOUT_MS = int(SQLITE_BUSY_TIMEOUT * 1000)
#: SQLite's default: a commit that leaves this many pages in the WAL checkpoints it.
WAL_AUTOCHECKPOINT = 1000
#: Uses of the connection on the event loop (commits and reads) between two WAL checkpoints
#: on the thread: with the runner's writes, a few MB of WAL, about when SQLite's own would run.
CHECKPOINT_EVERY = 400

_PUT_CHECKPOINT = (
    "INSERT OR REPLACE INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, "
    "parent_checkpoint_id, type, checkpoint, metadata) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_WRITE_COLUMNS = (
    "thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, value"
)
_PUT_WRITES = f"INSERT OR REPLACE INTO writes ({_WRITE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_ADD_WRITES = f"INSERT OR IGNORE INTO writes ({_WRITE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


@dataclass(eq=False)
class _Write:
    sql: str
    rows: Sequence[Sequence[Any]]


class SqliteFile:
    """A sqlite3 connection to one file, with a thread of its own.

    `run(fn)` calls `fn(conn)` on that thread; `try_here(fn)` calls it on the event loop
    when nothing can make it wait, and `run_short(fn)` the one or else the other;
    `write(sql, rows)` adds statements to the next commit.
    Get one with `async with open_sqlite(path, purpose=...) as db:`.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, thread: ThreadPoolExecutor) -> None:
        self.path = path
        self.conn = conn
        self.thread = thread
        #: Held for every use of the connection: its thread's, and a sync caller's.
        self.lock = threading.RLock()
        self._commits: Batches[_Write, None] = Batches(self._commit)
        self._done_here = 0
        self._checkpointing: asyncio.Task[None] | None = None
        self._closing = False

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Return `fn(conn)`, called on the connection's thread."""
        return await asyncio.get_running_loop().run_in_executor(self.thread, self._locked, fn)

    def _locked(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self.lock:
            try:
                _set_waiting(self.conn, True)  # in case `try_here` could not put it back
                if self.conn.in_transaction:  # nor roll back
                    self.conn.execute("ROLLBACK")
                return fn(self.conn)
            finally:
                if self.conn.in_transaction:  # left open by a failure: it would block the rest
                    log.warning("rolling back a transaction left open on %s", self.path)
                    self.conn.execute("ROLLBACK")

    def write(self, sql: str, rows: Sequence[Sequence[Any]]) -> asyncio.Future[None]:
        """Run `sql` once per row, in the next commit; return a future done with that commit.

        Writes made while a commit runs share the one after it. A write that breaks a
        constraint, or whose values cannot be stored, fails alone: the others of its commit
        are made again without it. An error of the file itself (locked for too long, the
        disk full) fails them all. A caller cancelled while it waits does not take its write
        back: it may still land.

        The future raises `sqlite3.Error` when the write failed (or what binding its values
        raised).
        """
        return self._commits.submit(_Write(sql, rows))

    async def _commit(self, batch: list[_Write]) -> list[Exception | None]:
        if self.try_here(partial(_transaction, writes=batch)) is not None:
            return [None] * len(batch)
        return await self.run(partial(_commit, batch=batch))

    async def run_short(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Return `fn(conn)` for short work: on the event loop when nothing makes it wait
        (`try_here`), else on the connection's thread."""
        done = self.try_here(fn)
        return done[0] if done is not None else await self.run(fn)

    def try_here(self, fn: Callable[[sqlite3.Connection], T]) -> tuple[T] | None:
        """Return `(fn(conn),)` called right here, on the event loop, if nothing makes it wait.

        For short reads and writes (a commit, a few rows by key). In WAL mode, with
        `synchronous=NORMAL` and the WAL checkpointed on the thread, a commit writes its
        pages to the WAL file and does not flush the disk: tens of microseconds, less than
        handing the work to the thread and back (where each statement also waits for the
        loop to let go of the GIL). None, with nothing done, when the connection is busy
        on its thread, when another process holds a lock `fn` needs (SQLite is told not
        to wait for it), or when `fn` fails: then give `fn` to `run`, which waits and
        says what failed. `fn`'s open transaction is rolled back; what `fn` committed itself
        before it failed stays (LangGraph's `SqliteStore.batch` commits even when a put
        fails), so `fn` must be safe to run again (the store's puts replace).
        """
        if not self.lock.acquire(blocking=False):
            return None
        try:
            try:
                _set_waiting(self.conn, False)
                result = fn(self.conn)
            except Exception:
                try:
                    if self.conn.in_transaction:
                        self.conn.execute("ROLLBACK")
                except sqlite3.Error as exc:  # `run` rolls back before its work
                    log.warning("cannot roll back on %s: %s", self.path, exc)
                return None
            finally:
                try:
                    _set_waiting(self.conn, True)
                except sqlite3.Error as exc:  # `run` sets it again before its work
                    log.warning("cannot restore the busy timeout of %s: %s", self.path, exc)
        finally:
            self.lock.release()
        self._done_here += 1
        due = self._done_here % CHECKPOINT_EVERY == 0
        if due and self._checkpointing is None and not self._closing:
            self._checkpointing = asyncio.create_task(self._checkpoint())
        return (result,)

    async def _checkpoint(self) -> None:
        """Copy the WAL into the file, on the thread but on a connection of its own: the
        commits on the loop go on meanwhile (they would fall back to the thread and wait)."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.thread, _checkpoint_apart, self.path)
        except (sqlite3.Error, RuntimeError) as exc:  # the next one may succeed
            log.warning("checkpointing the WAL of %s failed: %s", self.path, exc)
        finally:
            self._checkpointing = None

    async def drain(self) -> None:
        """Before closing: wait until every write submitted so far is committed, and for
        the WAL checkpoint under way; start no more checkpoints."""
        self._closing = True
        await self._commits.drain()
        if self._checkpointing is not None:
            await asyncio.wait([self._checkpointing])

    async def set_up(self, fn: Callable[[sqlite3.Connection], object], *, purpose: str) -> None:
        """Run `fn(conn)` under the file's lock: one process at a time sets a new file up.

        Raises:
            PersistenceError: it failed; names the file, the error, and what to do.
        """
        try:
            async with file_lock(lock_path(self.path)):
                await self.run(fn)
        except sqlite3.Error as exc:
            raise PersistenceError(
                f"the {purpose} {str(self.path)!r} cannot be used: {exc}. Move it away, or "
                "point persistence.url elsewhere"
            ) from exc


@dataclass(eq=False)
class _Shared:
    db: SqliteFile | None = None
    users: int = 0
    opening: asyncio.Lock = field(default_factory=asyncio.Lock)
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)


#: The files open in this process, by event loop and path.
_shared: dict[tuple[int, Path], _Shared] = {}


@asynccontextmanager
async def open_sqlite(path: Path, *, purpose: str) -> AsyncIterator[SqliteFile]:
    """Open the SQLite file `path` (its folder made when missing), or share it if open.

    Everything in this event loop that opens one file (the runner's queue, checkpoints
    and stats) shares one connection and thread, so none waits for another's lock; the
    queue's and the checkpoints' writes go into the same commits. It is closed when the
    last user is done.

    Raises:
        PersistenceError: the file cannot be opened; says which and what to do.
    """
    key = (id(asyncio.get_running_loop()), path.expanduser().resolve())
    while True:
        shared = _shared.setdefault(key, _Shared())
        async with shared.opening:
            if _shared.get(key) is not shared:
                continue  # closed, or its opening failed, while we waited: start again
            if shared.db is None:
                try:
                    opened = _open(path, purpose=purpose)
                    shared.db = await shared.stack.enter_async_context(opened)
                except BaseException:
                    del _shared[key]
                    raise
            shared.users += 1
            break
    db = shared.db
    try:
        yield db
    finally:
        async with shared.opening:
            shared.users -= 1
            if shared.users == 0:
                shared.db = None
                del _shared[key]
                await shared.stack.aclose()


@asynccontextmanager
async def _open(path: Path, *, purpose: str) -> AsyncIterator[SqliteFile]:
    """Open `path` in WAL mode on a thread of its own; close it on exit.

    WAL lets several connections and processes share the file; `synchronous=NORMAL` keeps
    every committed transaction through a crash of the process (only a power cut can lose
    the last ones) without a disk flush per commit.
    """
    thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelyard-sqlite")
    loop = asyncio.get_running_loop()
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = await loop.run_in_executor(thread, _connect, path)
        except (OSError, sqlite3.Error) as exc:
            raise PersistenceError(
                f"cannot open the {purpose} {str(path)!r}: {exc}. Set persistence.url in "
                "the config to a writable file, `memory`, or a postgresql:// URL"
            ) from exc
        db = SqliteFile(path.expanduser().resolve(), conn, thread)  # the same file after a chdir
        try:
            await db.set_up(_set_up_connection, purpose=purpose)
            yield db
        finally:
            await db.drain()
            await loop.run_in_executor(thread, conn.close)
    finally:
        thread.shutdown(wait=True)


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit: every transaction is explicit (the store's and the group commits' alike).
    return sqlite3.connect(
        str(path), timeout=SQLITE_BUSY_TIMEOUT, check_same_thread=False, isolation_level=None
    )


def _set_up_connection(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")


def _set_waiting(conn: sqlite3.Connection, waiting: bool) -> None:
    """Let SQLite wait for other connections' locks, and checkpoint the WAL as it commits
    (it flushes the disk); or, on the event loop, neither."""
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS if waiting else 0}")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT if waiting else 0}")


def _checkpoint_apart(path: Path) -> None:
    """Checkpoint the WAL of `path` on a connection opened for it.

    PASSIVE copies what no reader still needs and waits for no reader or writer, so the
    file's own connection commits while it runs.
    """
    # mode=rw: a file moved or deleted meanwhile is an error, not a new empty file.
    conn = sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, timeout=SQLITE_BUSY_TIMEOUT)
    try:
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        conn.close()


def _commit(conn: sqlite3.Connection, batch: Sequence[_Write]) -> list[Exception | None]:
    """Make every write of `batch` in one transaction.

    When one fails by itself (a constraint, a value that cannot be bound), the others are
    made each on its own, so only it fails; an error of the file (locked for too long, the
    disk full, I/O) fails them all.
    """
    try:
        _transaction(conn, batch)
        return [None] * len(batch)
    except sqlite3.OperationalError as exc:
        return [exc] * len(batch)
    except Exception as exc:
        if len(batch) == 1:
            return [exc]
    outcomes: list[Exception | None] = []
    for write in batch:
        try:
            _transaction(conn, [write])
            outcomes.append(None)
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


def _transaction(conn: sqlite3.Connection, writes: Sequence[_Write]) -> None:
    conn.execute("BEGIN IMMEDIATE")  # the write lock first: never a read upgraded late
    try:
        for write in writes:
            conn.executemany(write.sql, write.rows)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class GroupCommitSqliteSaver(SqliteSaver):
    """LangGraph's SQLite checkpointer whose async methods go through a `SqliteFile`.

    Checkpoints and writes are serialized in the caller's task and committed with the
    others of the moment; a thread's latest checkpoint is read on the event loop when the
    connection is free (`SqliteFile.try_here`), other reads on its thread. The sync methods are
    `SqliteSaver`'s own, on the same connection (it serializes them with a lock).
    Open it with `async with GroupCommitSqliteSaver.open(path, serde=...) as saver:`.
    """

    def __init__(self, db: SqliteFile, *, serde: SerializerProtocol | None = None) -> None:
        super().__init__(db.conn, serde=serde)
        self.db = db
        self.lock = db.lock  # type: ignore[assignment]  # an RLock: held around our calls too

    @classmethod
    @asynccontextmanager
    async def open(
        cls, path: Path, *, serde: SerializerProtocol | None = None
    ) -> AsyncIterator[GroupCommitSqliteSaver]:
        """Open the checkpoints in the SQLite file `path`, creating their tables when missing.

        Raises:
            PersistenceError: the file cannot be opened or set up; says which and why.
        """
        async with open_sqlite(path, purpose="checkpoint database") as db:
            saver = cls(db, serde=serde)
            await db.set_up(lambda _conn: saver.setup(), purpose="checkpoint database")
            yield saver

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self.db.run(lambda _conn: fn(*args, **kwargs))

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        # A thread's latest checkpoint (every run starts with it), or one by id: short.
        return await self.db.run_short(lambda _conn: self.get_tuple(config))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        found = await self._call(
            lambda: list(self.list(config, filter=filter, before=before, limit=limit))
        )
        for checkpoint in found:
            yield checkpoint

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        configurable = config["configurable"]
        thread_id, namespace = configurable["thread_id"], configurable["checkpoint_ns"]
        kind, blob = self.serde.dumps_typed(checkpoint)
        meta = json.dumps(get_checkpoint_metadata(config, metadata), ensure_ascii=False)
        row = (
            str(thread_id),
            namespace,
            checkpoint["id"],
            configurable.get("checkpoint_id"),
            kind,
            blob,
            meta.encode("utf-8", "ignore"),
        )
        await self.db.write(_PUT_CHECKPOINT, [row])
        return {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": namespace,
                "checkpoint_id": checkpoint["id"],
            }
        }

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        configurable = config["configurable"]
        key = (
            str(configurable["thread_id"]),
            str(configurable["checkpoint_ns"]),
            str(configurable["checkpoint_id"]),
        )
        # Writes of special channels (errors, interrupts) replace; others keep the first.
        special = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        rows = [
            (
                *key,
                task_id,
                task_path,
                WRITES_IDX_MAP.get(channel, idx),
                channel,
                *self.serde.dumps_typed(value),
            )
            for idx, (channel, value) in enumerate(writes)
        ]
        await self.db.write(_PUT_WRITES if special else _ADD_WRITES, rows)

    async def adelete_thread(self, thread_id: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")  # checkpoints and writes go together...
            self.delete_thread(thread_id)  # ...its commit() ends the transaction

        await self.db.run(delete)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return await self._call(self.get_delta_channel_history, config=config, channels=channels)


class SharedSqliteStore(SqliteStore):
    """LangGraph's SQLite store whose async methods run on a `SqliteFile`: gets and puts by
    key on the event loop when the connection is free (`try_here`), the rest on its thread.

    Open it with `async with SharedSqliteStore.open(path) as store:`; a runner's stats
    then share the connection of its checkpoints and queue.
    """

    def __init__(self, db: SqliteFile) -> None:
        super().__init__(db.conn)
        self.db = db
        self.lock = db.lock  # type: ignore[assignment]  # an RLock: held around our calls too

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path) -> AsyncIterator[SharedSqliteStore]:
        """Open the store in the SQLite file `path`, creating its tables when missing.

        Raises:
            PersistenceError: the file cannot be opened or set up; says which and why.
        """
        async with open_sqlite(path, purpose="stats database") as db:
            store = await db.run(lambda _conn: cls(db))
            await db.set_up(lambda _conn: store.setup(), purpose="stats database")
            yield store

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        todo = list(ops)
        if all(isinstance(op, GetOp | PutOp) for op in todo):  # by key: short
            return await self.db.run_short(lambda _conn: self.batch(todo))
        return await self.db.run(lambda _conn: self.batch(todo))
