"""The SQLite layer under the runner: one connection per file, group commit, LangGraph's format."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.store.memory import InMemoryStore
from typing_extensions import TypedDict

from modelyard.configs import load_config
from modelyard.configs import sqlite as sqlite_module
from modelyard.configs.persistence import PersistenceError, open_checkpointer, open_store
from modelyard.configs.schema import PersistenceSettings
from modelyard.configs.sqlite import SharedSqliteStore, open_sqlite
from modelyard.graphs.queue import open_task_queue
from modelyard.nodes import StatsBook
from modelyard.state import ModelCall
from modelyard.state.serde import checkpoint_serializer

CONFIG = load_config("default")


class Count(TypedDict):
    n: int


def counting_graph() -> StateGraph[Count, None, Count, Count]:
    builder = StateGraph(Count)
    builder.add_node("one", lambda s: {"n": s["n"] + 1})
    builder.add_node("two", lambda s: {"n": s["n"] * 10})
    builder.add_edge(START, "one")
    builder.add_edge("one", "two")
    builder.add_edge("two", END)
    return builder


async def test_concurrent_writes_share_commits_and_all_land(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    statements: list[str] = []
    async with open_sqlite(path, purpose="test") as db:
        await db.run(lambda conn: conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
        await db.run(lambda conn: conn.set_trace_callback(statements.append))
        await asyncio.gather(*(db.write("INSERT INTO t VALUES (?)", [(k,)]) for k in range(200)))
        await db.run(lambda conn: conn.set_trace_callback(None))
    commits = statements.count("COMMIT")
    assert 1 <= commits < 200 / 4  # most commits carried several writes
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM t").fetchone() == (200,)


async def test_a_write_that_breaks_a_constraint_fails_alone(tmp_path: Path) -> None:
    async with open_sqlite(tmp_path / "db.sqlite", purpose="test") as db:
        await db.run(lambda conn: conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
        await db.write("INSERT INTO t VALUES (?)", [(1,)])
        outcomes = await asyncio.gather(
            *(db.write("INSERT INTO t VALUES (?)", [(k,)]) for k in (2, 1, 3)),
            return_exceptions=True,
        )
        rows = await db.run(lambda conn: conn.execute("SELECT k FROM t ORDER BY k").fetchall())
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], sqlite3.IntegrityError)
    assert rows == [(1,), (2,), (3,)]


async def test_the_runners_queue_checkpoints_and_stats_share_one_connection(
    tmp_path: Path,
) -> None:
    settings = PersistenceSettings(url=str(tmp_path / "runner.db"))
    async with (
        open_task_queue(settings) as queue,
        open_checkpointer(settings) as saver,
        open_store(settings) as store,
    ):
        dbs = {id(getattr(part, "db", None)) for part in (queue, saver, store)}
        assert len(dbs) == 1 and id(None) not in dbs
        conn = saver.db.conn  # type: ignore[attr-defined]
    with pytest.raises(sqlite3.ProgrammingError):  # closed with the last user
        conn.execute("SELECT 1")


async def test_checkpoints_are_langgraphs_own_rows_both_ways(tmp_path: Path) -> None:
    import aiosqlite

    path = tmp_path / "checkpoints.db"
    settings = PersistenceSettings(url=str(path))
    first = {"configurable": {"thread_id": "ours"}}
    second = {"configurable": {"thread_id": "theirs"}}
    async with open_checkpointer(settings) as saver:
        ours = counting_graph().compile(checkpointer=saver)
        assert await ours.ainvoke({"n": 1}, first) == {"n": 20}
    async with aiosqlite.connect(path) as conn:
        theirs = counting_graph().compile(
            checkpointer=AsyncSqliteSaver(conn, serde=checkpoint_serializer())
        )
        assert (await theirs.aget_state(first)).values == {"n": 20}  # type: ignore[arg-type]
        await theirs.ainvoke({"n": 2}, second)  # type: ignore[arg-type]
    async with open_checkpointer(settings) as saver:
        ours = counting_graph().compile(checkpointer=saver)
        assert (await ours.aget_state(second)).values == {"n": 30}  # type: ignore[arg-type]
        history = [s async for s in ours.aget_state_history(first)]  # type: ignore[arg-type]
        assert [s.metadata["step"] for s in history if s.metadata] == [2, 1, 0, -1]
        assert [s async for s in saver.alist(None, limit=1)]  # listing works too


async def test_a_sync_caller_waits_for_the_thread(tmp_path: Path) -> None:
    """`graph.get_state` (sync) on the same saver is serialised with the async writes."""
    settings = PersistenceSettings(url=str(tmp_path / "db.sqlite"))
    async with open_checkpointer(settings) as saver:
        graph = counting_graph().compile(checkpointer=saver)
        runs = [
            graph.ainvoke({"n": n}, {"configurable": {"thread_id": f"t{n}"}}) for n in range(20)
        ]
        reads = asyncio.gather(*runs)
        snapshot = await asyncio.to_thread(graph.get_state, {"configurable": {"thread_id": "t0"}})
        await reads
        assert snapshot.values in ({}, {"n": 0}, {"n": 1}, {"n": 10})
        assert graph.get_state({"configurable": {"thread_id": "t3"}}).values == {"n": 40}


class CountingStore(InMemoryStore):
    """An in-memory store that counts the writes it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.puts = 0

    async def aput(self, *args: Any, **kwargs: Any) -> None:
        self.puts += 1
        await asyncio.sleep(0.01)  # a write that takes a while, as a real database's does
        await super().aput(*args, **kwargs)


def call(model: str = "coder") -> ModelCall:
    return ModelCall(
        step="answer", model=model, provider="ollama", latency_ms=100.0,
        input_tokens=3, output_tokens=7, cost=0.0,
    )  # fmt: skip


async def test_stats_updates_of_one_model_are_written_together_and_none_is_lost() -> None:
    store = CountingStore()
    book = StatsBook(store, CONFIG)
    results = await asyncio.gather(*(book.record_success(call()) for _ in range(40)))
    assert sorted(r.calls for r in results) == list(range(1, 41))  # each saw its own update
    assert (await book.get("coder")).calls == 40
    assert store.puts < 40 / 4


async def test_a_stats_change_that_raises_fails_alone() -> None:
    store = CountingStore()
    book = StatsBook(store, CONFIG)

    def broken(stats: Any) -> Any:
        raise RuntimeError("a bug in one change")

    outcomes = await asyncio.gather(
        book.record_success(call()),
        book._update("coder", broken),
        book.record_success(call()),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], RuntimeError)
    assert (await book.get("coder")).calls == 2


async def test_a_value_sqlite_cannot_bind_fails_alone(tmp_path: Path) -> None:
    async with open_sqlite(tmp_path / "db.sqlite", purpose="test") as db:
        await db.run(lambda conn: conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
        outcomes = await asyncio.gather(
            *(db.write("INSERT INTO t VALUES (?)", [(k,)]) for k in (1, 2**70, 3)),
            return_exceptions=True,
        )
        rows = await db.run(lambda conn: conn.execute("SELECT k FROM t ORDER BY k").fetchall())
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], OverflowError)
    assert rows == [(1,), (3,)]


async def test_a_transaction_left_open_is_rolled_back_not_kept(tmp_path: Path) -> None:
    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("failed mid-transaction")

    async with open_sqlite(tmp_path / "db.sqlite", purpose="test") as db:
        await db.run(lambda conn: conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
        with pytest.raises(RuntimeError):
            await db.run(half_done)
        await db.write("INSERT INTO t VALUES (?)", [(2,)])  # not "within a transaction"
        rows = await db.run(lambda conn: conn.execute("SELECT k FROM t").fetchall())
    assert rows == [(2,)]


async def test_openers_after_a_failed_open_share_one_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = sqlite_module._open
    calls = 0

    def flaky(path: Path, *, purpose: str) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise PersistenceError("the first open fails")
        return real_open(path, purpose=purpose)

    monkeypatch.setattr(sqlite_module, "_open", flaky)
    path = tmp_path / "db.sqlite"

    async def use(seen: list[int]) -> None:
        async with open_sqlite(path, purpose="test") as db:
            seen.append(id(db))
            await asyncio.sleep(0.05)

    seen: list[int] = []
    outcomes = await asyncio.gather(use(seen), use(seen), use(seen), return_exceptions=True)
    assert isinstance(outcomes[0], PersistenceError) and outcomes[1:] == [None, None]
    assert len(seen) == 2 and len(set(seen)) == 1
    assert not sqlite_module._shared  # closed and forgotten with its last user


class CancelledStore(InMemoryStore):
    """A store whose reads are cancelled, as a store closing under a running task's are."""

    async def abatch(self, ops: Any) -> Any:
        raise asyncio.CancelledError


async def test_a_stats_update_whose_store_is_cancelled_does_not_hang() -> None:
    book = StatsBook(CancelledStore(), CONFIG)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(book.record_success(call()), timeout=5)


async def test_short_writes_commit_on_the_loop_while_the_wal_is_checkpointed_on_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_EVERY", 5)
    seen: list[tuple[str, str]] = []
    checkpoints: list[tuple[str, int]] = []  # (thread, bytes the file grew by)
    real_checkpoint = sqlite_module._checkpoint_apart
    committed_during: list[int] = []

    def slow_checkpoint(path: Path) -> None:
        size, before = path.stat().st_size, len([s for _, s in seen if s == "COMMIT"])
        time.sleep(0.3)  # a checkpoint that flushes a slow disk
        real_checkpoint(path)  # copies the rows from the WAL into the file
        committed_during.append(len([s for _, s in seen if s == "COMMIT"]) - before)
        checkpoints.append((threading.current_thread().name, path.stat().st_size - size))

    def trace(statement: str) -> None:
        seen.append((threading.current_thread().name, statement))

    monkeypatch.setattr(sqlite_module, "_checkpoint_apart", slow_checkpoint)
    async with open_sqlite(tmp_path / "db.sqlite", purpose="test") as db:
        await db.run(lambda conn: conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v)"))
        await db.run(lambda conn: conn.set_trace_callback(trace))
        for k in range(10):
            await db.write("INSERT INTO t VALUES (?, ?)", [(k, "x" * 5000)])
            await asyncio.sleep(0.02)
        await db.drain()
        await db.run(lambda conn: conn.set_trace_callback(None))
    loop_thread = threading.current_thread().name
    commits = [thread for thread, statement in seen if statement == "COMMIT"]
    # Every commit on the loop, those made while the checkpoint ran too: it has a connection
    # of its own and leaves the file's lock alone.
    assert commits == [loop_thread] * 10
    assert checkpoints and all(t.startswith("modelyard-sqlite") for t, _ in checkpoints)
    assert checkpoints[0][1] > 0 and committed_during[0] > 0
    # SQLite's own checkpoint, which flushes the disk, is off for commits on the loop.
    on_the_loop = [statement for thread, statement in seen if thread == loop_thread]
    for at, statement in enumerate(on_the_loop):
        if statement == "COMMIT":
            settings = [s for s in on_the_loop[:at] if s.startswith("PRAGMA wal_autocheckpoint")]
            assert settings[-1] == "PRAGMA wal_autocheckpoint=0"


async def assert_loop_goes_on_while(waiting: asyncio.Future[Any]) -> None:
    """Check that the event loop runs on while `waiting` waits for another's lock."""
    started = time.perf_counter()
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert time.perf_counter() - started < 1.0  # SQLite's busy wait would take 30 s
    assert not waiting.done()


async def test_a_write_waits_on_the_thread_while_another_process_holds_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite"
    async with open_sqlite(path, purpose="test") as db:
        await db.run(lambda conn: conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")  # the write lock, as another process would hold it
        other.execute("INSERT INTO t VALUES (1)")
        write = db.write("INSERT INTO t VALUES (?)", [(2,)])
        await assert_loop_goes_on_while(write)
        other.execute("COMMIT")
        await asyncio.wait_for(write, 10)
        other.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT k FROM t ORDER BY k").fetchall() == [(1,), (2,)]


async def test_a_stats_put_waits_on_the_thread_while_another_process_holds_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite"
    async with SharedSqliteStore.open(path) as store:
        await store.aput(("ns",), "k", {"v": 1})  # on the loop: the file is free
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        put = asyncio.create_task(store.aput(("ns",), "k", {"v": 2}))
        await assert_loop_goes_on_while(put)
        other.execute("ROLLBACK")
        await asyncio.wait_for(put, 10)
        other.close()
        item = await store.aget(("ns",), "k")
        assert item is not None and item.value == {"v": 2}
