"""Tests of the task runner: priority queue, statuses, callbacks, cancel, shutdown and resume.

Most tests run in-process on scripted models (`HeldChatModel` can hold a task in its model
call until the test releases it); the durable ones use a SQLite file under `tmp_path`, one
uses the local protocol server over HTTP, and one PostgreSQL (skipped when unreachable).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from operator import add
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult
from langgraph.graph import END, START, StateGraph
from pydantic import Field
from support import CODING_MODEL, REASONING_MODEL, config_text, scripted_context, write_config

from modelyard.configs import load_config
from modelyard.configs.persistence import open_checkpointer
from modelyard.configs.schema import PersistenceSettings
from modelyard.graphs.lock import RunnerBusyError
from modelyard.graphs.queue import QueuedTask, open_task_queue
from modelyard.graphs.runner import RunnerClosedError, TaskRunner, resume_point
from modelyard.state import (
    ModelCallError,
    ModelErrorKind,
    Priority,
    Task,
    TaskContext,
    TaskInput,
    TaskState,
    TaskStatus,
)
from modelyard.testing.scripted import ScriptedChatModel
from modelyard.testing.server import Fault, LocalModelServer

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
RUNNING, PENDING = TaskStatus.RUNNING, TaskStatus.PENDING
COMPLETED, FAILED, CANCELLED = TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED


class HeldChatModel(ScriptedChatModel):
    """A scripted model that notes each call as it begins and can hold calls until released.

    A call whose last message contains a held word waits for that word's gate; `calls`
    (from ScriptedChatModel) lists only the calls that were answered.
    """

    gates: dict[str, asyncio.Event] = Field(default_factory=dict)
    """Gates by word: a call whose last message contains the word waits for the gate."""
    begun: list[str] = Field(default_factory=list)
    """The last message of every call, in the order the calls began."""

    def hold(self, word: str) -> asyncio.Event:
        """Hold every call whose last message contains `word`; set the gate to release them."""
        return self.gates.setdefault(word, asyncio.Event())

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = str(messages[-1].content)
        self.begun.append(text)
        for word, gate in self.gates.items():
            if word in text:
                await gate.wait()
        return await super()._agenerate(messages, stop, run_manager, **kwargs)


def answered(model: ScriptedChatModel) -> list[str]:
    """Return the last message of every call `model` answered, in order."""
    return [str(messages[-1].content) for messages in model.calls]


def make_runner(
    model: ScriptedChatModel | None = None,
    *,
    coder: ScriptedChatModel | None = None,
    persistence: str | Path = "memory",
    workers: int = 1,
    **kwargs: Any,
) -> TaskRunner:
    """Return a runner on scripted models: `model` plays both roles unless `coder` is given."""
    model = model or HeldChatModel(name_for_echo="model")
    context = scripted_context(reasoner=model, coder=coder or model, styles=False)
    return TaskRunner(context=context, workers=workers, persistence=str(persistence), **kwargs)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until `condition()` holds; fail the test after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def status_changes(task: Task) -> list[tuple[str | None, str]]:
    """Return the (from, to) of every status event in the task's history."""
    return [(e.data.get("from"), e.data["to"]) for e in task.history if e.kind == "status"]


def status_details(task: Task) -> list[str]:
    """Return the detail of every status event in the task's history."""
    return [e.detail for e in task.history if e.kind == "status"]


def record_starts() -> tuple[list[str], Callable[[Task], None]]:
    """Return a list, and an `on_change` callback adding each task's prompt as it starts."""
    started: list[str] = []

    def note_start(task: Task) -> None:
        if task.status is RUNNING:
            started.append(task.prompt)

    return started, note_start


def reply_to(prompt: str, name: str = "model") -> str:
    """Return the echo answer a scripted model named `name` gives to `prompt`."""
    return f"[{name}] Answer to: {prompt[:80]}"


# --- 1. priority order --------------------------------------------------------------------


async def test_queued_tasks_start_by_priority_then_oldest_then_submission_order() -> None:
    model = HeldChatModel(name_for_echo="model")
    gate = model.hold("first")
    started, note_start = record_starts()
    base = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    queued = [  # (prompt, priority, created_at), submitted in this order
        ("low oldest", Priority.LOW, base - timedelta(days=1)),
        ("normal newer", Priority.NORMAL, base + timedelta(minutes=2)),
        ("high newer", Priority.HIGH, base + timedelta(seconds=1)),
        ("normal older", Priority.NORMAL, base + timedelta(minutes=1)),
        ("urgent", Priority.URGENT, base + timedelta(hours=1)),
        ("high older", Priority.HIGH, base),
        ("normal newer twin", Priority.NORMAL, base + timedelta(minutes=2)),
        ("custom 7", 7, base + timedelta(hours=2)),
    ]
    async with make_runner(model, on_change=note_start) as runner:
        await runner.submit("first", priority=Priority.LOW)  # runs at once, holds the worker
        await until(lambda: model.begun == ["first"])
        for prompt, priority, created_at in queued:
            await runner.submit(prompt, priority=priority, created_at=created_at)
        gate.set()
        assert await runner.join(timeout=5)

    expected = ["first", "urgent", "high older", "high newer", "custom 7", "normal older",
                "normal newer", "normal newer twin", "low oldest"]  # fmt: skip
    assert started == expected
    assert model.begun == expected
    assert answered(model) == expected


async def test_tasks_created_in_another_time_zone_still_run_oldest_first() -> None:
    """created_at is a point in time: 10:00+02:00 (08:00 UTC) is older than 09:00 UTC.

    Fails when the queue orders by the ISO text of created_at instead of the instant.
    """
    model = HeldChatModel(name_for_echo="model")
    gate = model.hold("first")
    berlin = timezone(timedelta(hours=2))
    async with make_runner(model) as runner:
        await runner.submit("first")
        await until(lambda: model.begun == ["first"])
        await runner.submit("at 09:00 UTC", created_at=datetime(2024, 5, 1, 9, 0, tzinfo=UTC))
        await runner.submit("at 08:00 UTC", created_at=datetime(2024, 5, 1, 10, 0, tzinfo=berlin))
        gate.set()
        assert await runner.join(timeout=5)
    assert model.begun == ["first", "at 08:00 UTC", "at 09:00 UTC"]


# --- 2. status history --------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_a_completed_task_has_each_status_change_in_its_history(
    backend: str, tmp_path: Path
) -> None:
    persistence = tmp_path / "db.sqlite" if backend == "sqlite" else "memory"
    prompt = "Explain how a hash table works"
    async with make_runner(persistence=persistence) as runner:
        submitted = await runner.submit(prompt)
        assert submitted.status is PENDING
        assert status_changes(submitted) == [(None, "pending")]

        done = await runner.wait(submitted.id, timeout=5)

        assert done.status is COMPLETED
        assert (done.result, done.assigned_model) == (reply_to(prompt), "reasoner")
        assert status_changes(done) == [
            (None, "pending"), ("pending", "running"), ("running", "completed"),
        ]  # fmt: skip
        assert [e.kind for e in done.history] == [
            "status", "status", "classified", "selected", "model_call", "completed", "status",
        ]  # fmt: skip
        times = [e.at for e in done.history]
        assert times == sorted(times)
        status_times = [e.at for e in done.history if e.kind == "status"]
        assert status_times[0] < status_times[1] < status_times[2]
        assert done.started_at is not None and done.finished_at is not None
        assert done.created_at <= done.started_at <= done.finished_at

        assert await runner.get(done.id) == done
        assert await runner.list_tasks(COMPLETED) == [done]
        assert await runner.list_tasks(PENDING) == []
        assert await runner.list_tasks() == [done]
        assert await runner.counts() == {
            PENDING: 0, RUNNING: 0, COMPLETED: 1, FAILED: 0, CANCELLED: 0,
        }  # fmt: skip
        assert await runner.get("no-such-task") is None
        with pytest.raises(KeyError, match="no-such-task"):
            await runner.wait("no-such-task")


async def test_on_change_sees_every_status_of_every_task_in_order() -> None:
    seen: list[tuple[str, TaskStatus]] = []
    async with make_runner(on_change=lambda t: seen.append((t.prompt, t.status))) as runner:
        await runner.submit("one")
        await runner.join(timeout=5)
        await runner.submit("two")
    assert seen == [
        ("one", PENDING), ("one", RUNNING), ("one", COMPLETED),
        ("two", PENDING), ("two", RUNNING), ("two", COMPLETED),
    ]  # fmt: skip


# --- 3. callbacks -------------------------------------------------------------------------


async def test_sync_and_async_callbacks_are_each_called_once_with_the_finished_task() -> None:
    sync_calls: list[Task] = []
    async_calls: list[Task] = []
    finished: list[Task] = []

    async def async_callback(task: Task) -> None:
        await asyncio.sleep(0)
        async_calls.append(task)

    async with make_runner(workers=2, on_finish=finished.append) as runner:
        one = await runner.submit("Explain recursion", callback=sync_calls.append)
        two = await runner.submit("Explain closures", callback=async_callback)
        three = await runner.submit("Explain generators")
        assert await runner.join(timeout=5)
        stored = {t.id: await runner.get(t.id) for t in (one, two, three)}

    assert [(t.id, t.status) for t in sync_calls] == [(one.id, COMPLETED)]
    assert [(t.id, t.status) for t in async_calls] == [(two.id, COMPLETED)]
    assert sync_calls[0] == stored[one.id] and async_calls[0] == stored[two.id]
    assert sorted(t.id for t in finished) == sorted([one.id, two.id, three.id])
    assert all(t == stored[t.id] for t in finished)


async def test_join_and_a_draining_shutdown_wait_for_slow_callbacks() -> None:
    """A task is the runner's until its callbacks return: join() and leaving `async with`
    (a draining shutdown) neither return early nor cancel a callback half-way."""
    joined: list[str] = []
    drained: list[str] = []

    def slow(into: list[str]) -> Callable[[Task], Any]:
        async def callback(task: Task) -> None:
            await asyncio.sleep(0.05)
            into.append(task.id)

        return callback

    async with make_runner(workers=2, on_finish=slow(joined)) as runner:
        tasks = [await runner.submit(f"Explain topic {n}") for n in range(6)]
        assert await runner.join(timeout=10)
        assert sorted(joined) == sorted(t.id for t in tasks)
        assert await runner.cancel(tasks[0].id) is False  # it had ended

    async with make_runner(workers=2, on_finish=slow(drained)) as runner:
        more = [await runner.submit(f"Explain idea {n}") for n in range(6)]
    assert sorted(drained) == sorted(t.id for t in more)


async def test_a_callback_that_raises_is_logged_and_the_worker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    finished: list[str] = []

    def broken(task: Task) -> None:
        raise RuntimeError("callback bug")

    async def broken_async(task: Task) -> None:
        raise RuntimeError("async callback bug")

    caplog.set_level(logging.ERROR, logger="modelyard.runner")
    async with make_runner(workers=1, on_finish=lambda t: finished.append(t.prompt)) as runner:
        first = await runner.submit("first", callback=broken)
        second = await runner.submit("second", callback=broken_async)
        third = await runner.submit("third")
        assert await runner.join(timeout=5)
        statuses = [(await runner.get(t.id)).status for t in (first, second, third)]  # type: ignore[union-attr]

    assert statuses == [COMPLETED, COMPLETED, COMPLETED]
    assert finished == ["first", "second", "third"]
    records = [r for r in caplog.records if r.name == "modelyard.runner"]
    assert [r.getMessage() for r in records] == [
        f"the callback for task {first.id} raised; the runner goes on",
        f"the callback for task {second.id} raised; the runner goes on",
    ]
    assert [str(r.exc_info[1]) for r in records if r.exc_info] == [
        "callback bug", "async callback bug",
    ]  # fmt: skip


async def test_a_failed_task_ends_failed_with_its_error_and_still_gets_its_callback() -> None:
    refusing = ScriptedChatModel(
        replies=[
            ModelCallError(ModelErrorKind.AUTH, model="coder", url="http://test", detail="bad key")
        ]
    )
    called: list[Task] = []
    finished: list[Task] = []
    async with make_runner(coder=refusing, on_finish=finished.append) as runner:
        task = await runner.submit("Write a sort function", model="coder", callback=called.append)
        done = await runner.wait(task.id, timeout=5)
        after = await runner.submit("Explain recursion")  # the worker is still there
        assert (await runner.wait(after.id, timeout=5)).status is COMPLETED

    assert done.status is FAILED
    assert done.result is None
    assert done.error is not None
    assert done.error["kind"] == "all_models_failed"
    assert [(a["model"], a["kind"]) for a in done.error["attempts"]] == [("coder", "auth")]
    assert status_changes(done) == [
        (None, "pending"), ("pending", "running"), ("running", "failed"),
    ]  # fmt: skip
    assert "failed" in [e.kind for e in done.history]
    assert len(refusing.calls) == 1  # auth errors are not retried
    assert called == [done]
    assert [t.id for t in finished] == [task.id, after.id]


def build_shout_graph(config: object) -> StateGraph[Any, Any, Any, Any]:
    """Return a user's graph that answers in capitals and sets no status of its own."""

    def shout(state: TaskState) -> dict[str, Any]:
        return {"result": state["prompt"].upper()}

    builder = StateGraph(TaskState, input_schema=TaskInput)
    builder.add_node("shout", shout)
    builder.add_edge(START, "shout")
    builder.add_edge("shout", END)
    return builder


def build_broken_graph(config: object) -> StateGraph[Any, Any, Any, Any]:
    """Return a user's graph whose only node has a bug."""

    def explode(state: TaskState) -> dict[str, Any]:
        raise RuntimeError("graph bug")

    builder = StateGraph(TaskState, input_schema=TaskInput)
    builder.add_node("explode", explode)
    builder.add_edge(START, "explode")
    builder.add_edge("explode", END)
    return builder


async def test_a_graph_that_raises_fails_its_task_and_the_worker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    finished: list[Task] = []
    graphs = {"shout": build_shout_graph, "broken": build_broken_graph}
    caplog.set_level(logging.ERROR, logger="modelyard.runner")
    async with make_runner(graphs=graphs, graph="shout", on_finish=finished.append) as runner:
        bad = await runner.submit("boom", graph="broken")
        good = await runner.submit("quiet please")
        assert await runner.join(timeout=5)
        bad_done, good_done = await runner.get(bad.id), await runner.get(good.id)

    assert bad_done is not None and good_done is not None
    assert (bad_done.status, bad_done.error) == (
        FAILED, {"kind": "internal", "message": "RuntimeError: graph bug"},
    )  # fmt: skip
    assert status_changes(bad_done)[-1] == ("running", "failed")
    assert (good_done.status, good_done.result) == (COMPLETED, "QUIET PLEASE")
    assert [t.id for t in finished] == [bad.id, good.id]
    assert [r.getMessage() for r in caplog.records] == [f"task {bad.id} failed in graph broken"]


async def test_a_task_the_route_graph_rejects_fails_with_the_reason() -> None:
    async with make_runner() as runner:
        task = await runner.submit("hi", model="gpt-9")
        done = await runner.wait(task.id, timeout=5)
    assert done.status is FAILED
    assert done.error is not None and done.error["kind"] == "UnknownModelError"
    assert "'gpt-9'" in done.error["message"]


# --- 4. cancel ----------------------------------------------------------------------------


async def test_cancelling_a_pending_task_means_it_never_runs() -> None:
    model = HeldChatModel(name_for_echo="model")
    gate = model.hold("first")
    called: list[Task] = []
    async with make_runner(model) as runner:
        await runner.submit("first")
        await until(lambda: model.begun == ["first"])
        waiting = await runner.submit("never run me", callback=called.append)
        after = await runner.submit("after")

        assert await runner.cancel(waiting.id) is True

        cancelled = await runner.get(waiting.id)
        assert cancelled is not None and cancelled.status is CANCELLED
        assert await runner.wait(waiting.id, timeout=1) == cancelled
        assert status_changes(cancelled) == [(None, "pending"), ("pending", "cancelled")]
        assert status_details(cancelled)[-1] == "cancelled before it started"
        assert cancelled.started_at is None and cancelled.finished_at is not None
        assert await runner.cancel(waiting.id) is False  # already ended
        gate.set()
        assert await runner.join(timeout=5)
        assert (await runner.wait(after.id)).status is COMPLETED
        assert (await runner.counts())[CANCELLED] == 1

    assert model.begun == ["first", "after"]
    assert called == [cancelled]


async def test_cancelling_a_running_task_stops_it_and_frees_the_worker() -> None:
    model = HeldChatModel(name_for_echo="model")
    model.hold("forever")  # never released
    called: list[Task] = []
    async with make_runner(model) as runner:
        running = await runner.submit("forever", callback=called.append)
        queued = await runner.submit("next")
        await until(lambda: model.begun == ["forever"])
        assert (await runner.get(running.id)).status is RUNNING  # type: ignore[union-attr]

        assert await runner.cancel(running.id) is True

        cancelled = await runner.get(running.id)
        assert cancelled is not None and cancelled.status is CANCELLED
        assert status_changes(cancelled) == [
            (None, "pending"), ("pending", "running"), ("running", "cancelled"),
        ]  # fmt: skip
        assert status_details(cancelled)[-1] == "cancelled while running"
        assert cancelled.result is None
        assert called == [cancelled]
        done = await runner.wait(queued.id, timeout=5)
        assert done.status is COMPLETED
        assert await runner.join(timeout=1)

    assert model.begun == ["forever", "next"]
    assert answered(model) == ["next"]
    assert called == [cancelled]


async def test_cancelling_a_finished_or_unknown_task_returns_false() -> None:
    called: list[Task] = []
    async with make_runner() as runner:
        task = await runner.submit("Explain recursion", callback=called.append)
        done = await runner.wait(task.id, timeout=5)
        assert await runner.cancel(task.id) is False
        assert await runner.cancel("no-such-task") is False
        assert await runner.get(task.id) == done
    assert done.status is COMPLETED
    assert len(called) == 1


async def test_cancelling_a_task_resumed_as_running_ends_it(tmp_path: Path) -> None:
    """A task a crashed runner left `running` is cancelled like any other queued task.

    The crash is simulated by writing the queue table directly: one task `running` (its
    runner died), one urgent `pending` task that occupies the only worker first.
    """
    db = tmp_path / "db.sqlite"
    crashed = Task(prompt="left running by a crash", started_at=datetime.now(UTC))
    crashed = crashed.model_copy(update={"status": RUNNING})
    urgent = Task(prompt="urgent", priority=Priority.URGENT)
    async with open_task_queue(PersistenceSettings(url=str(db))) as queue:
        await queue.add([QueuedTask(urgent, "route"), QueuedTask(crashed, "route")])

    model = HeldChatModel(name_for_echo="model")
    gate = model.hold("urgent")
    async with make_runner(model, persistence=db) as runner:
        await until(lambda: model.begun == ["urgent"])

        assert await runner.cancel(crashed.id) is True

        gate.set()
        idle = await runner.join(timeout=2)
        after = await runner.get(crashed.id)
        if not idle:  # do not leave the test hanging in __aexit__
            await runner.shutdown(drain=False)
    assert after is not None
    assert (after.status, idle) == (CANCELLED, True)
    assert model.begun == ["urgent"]


# --- 5. shutdown --------------------------------------------------------------------------


async def test_shutdown_with_drain_runs_every_queued_task_to_the_end() -> None:
    model = HeldChatModel(name_for_echo="model", delay=0.01)
    finished: list[Task] = []
    prompts = [f"task {n}" for n in range(6)]
    runner = await make_runner(model, workers=2, on_finish=finished.append).start()
    for prompt in prompts:
        await runner.submit(prompt)

    left = await runner.shutdown(drain=True)

    assert left == []
    assert sorted(t.prompt for t in finished) == prompts
    assert {t.status for t in finished} == {COMPLETED}
    assert sorted(answered(model)) == prompts
    assert await runner.shutdown() == []  # a second shutdown does nothing


async def test_shutdown_without_drain_saves_unfinished_tasks_and_the_next_runner_resumes_them(
    tmp_path: Path,
) -> None:
    db = tmp_path / "db.sqlite"
    first = HeldChatModel(name_for_echo="first")
    first.hold("held")
    runner = await make_runner(first, persistence=db).start()
    early = await runner.submit("early")
    await runner.wait(early.id, timeout=5)
    held = await runner.submit("held")
    queued = [await runner.submit(p) for p in ("queued a", "queued b")]
    await until(lambda: first.begun == ["early", "held"])

    left = await asyncio.wait_for(runner.shutdown(drain=False), timeout=2)

    assert [t.prompt for t in left] == ["held", "queued a", "queued b"]
    assert {t.status for t in left} == {PENDING}
    interrupted = left[0]
    assert status_changes(interrupted)[-2:] == [("pending", "running"), ("running", "pending")]
    assert "interrupted" in status_details(interrupted)[-1]
    assert answered(first) == ["early"]
    with pytest.raises(RunnerClosedError, match="shut down"):
        await runner.counts()

    second = HeldChatModel(name_for_echo="second")
    async with make_runner(second, persistence=db) as resumed:
        assert await resumed.join(timeout=5)
        tasks = {t.prompt: t for t in await resumed.list_tasks()}
        counts = await resumed.counts()

    assert answered(second) == ["held", "queued a", "queued b"]  # each once, "early" never
    assert counts[COMPLETED] == 4 and counts[PENDING] == counts[RUNNING] == 0
    assert tasks["early"].result == reply_to("early", "first")
    assert tasks["held"].result == reply_to("held", "second")
    assert status_changes(tasks["held"]) == [
        (None, "pending"), ("pending", "running"), ("running", "pending"),
        ("pending", "running"), ("running", "completed"),
    ]  # fmt: skip
    assert status_details(tasks["held"])[3] == "resumed from its last checkpoint"
    assert [t.id for t in left] == [held.id, *(q.id for q in queued)]


async def test_shutdown_with_drain_and_a_timeout_returns_what_is_left() -> None:
    model = HeldChatModel(name_for_echo="model")
    model.hold("stuck")
    runner = await make_runner(model).start()
    stuck = await runner.submit("stuck")
    behind = await runner.submit("behind")
    await until(lambda: model.begun == ["stuck"])

    started = asyncio.get_running_loop().time()
    left = await runner.shutdown(drain=True, timeout=0.2)
    took = asyncio.get_running_loop().time() - started

    assert 0.19 <= took < 2
    assert [(t.id, t.status) for t in left] == [(stuck.id, PENDING), (behind.id, PENDING)]
    assert status_details(left[0])[-1] == "interrupted by shutdown; resumes later"
    assert model.begun == ["stuck"] and model.calls == []


# --- 6. durable queue ---------------------------------------------------------------------


async def test_tasks_queued_when_a_runner_stops_are_run_by_the_next_one(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    model = HeldChatModel(name_for_echo="model")
    model.hold("blocker")
    runner = await make_runner(model, persistence=db).start()
    blocker = await runner.submit("blocker")
    await until(lambda: model.begun == ["blocker"])
    kept = await runner.submit(
        "Write a sort function",
        priority=Priority.HIGH,
        model="coder",
        context=TaskContext(metadata={"user": "ada"}),
    )
    plain = await runner.submit("Explain recursion")
    left = await runner.shutdown(drain=False)
    assert [t.id for t in left] == [blocker.id, kept.id, plain.id]

    coder = HeldChatModel(name_for_echo="coder")
    reasoner = HeldChatModel(name_for_echo="reasoner")
    started, note_start = record_starts()
    resumed = make_runner(reasoner, coder=coder, persistence=db, on_change=note_start)
    async with resumed:
        assert await resumed.join(timeout=5)
        done = await resumed.get(kept.id)
        assert await resumed.counts() == {
            PENDING: 0, RUNNING: 0, COMPLETED: 3, FAILED: 0, CANCELLED: 0,
        }  # fmt: skip

        assert done is not None
        assert (done.priority, done.model, done.context.metadata) == (
            Priority.HIGH, "coder", {"user": "ada"},
        )  # fmt: skip
        assert (done.assigned_model, done.result) == ("coder", reply_to(kept.prompt, "coder"))
        # the HIGH task first, though it was submitted after the resumed "blocker"
        assert started == ["Write a sort function", "blocker", "Explain recursion"]
        assert (answered(coder), answered(reasoner)) == (
            ["Write a sort function"], ["blocker", "Explain recursion"],
        )  # fmt: skip

        # tasks the database knows are skipped, by submit_many, and refused by submit
        fresh = Task(prompt="fresh")
        added = await resumed.submit_many(
            [Task(id=kept.id, prompt="again"), fresh, Task(id=plain.id, prompt="again")]
        )
        assert [t.id for t in added] == [fresh.id]
        assert added[0].status is PENDING
        with pytest.raises(ValueError, match=f"task {kept.id} was submitted before"):
            await resumed.submit(Task(id=kept.id, prompt="again"))
        assert await resumed.join(timeout=5)
        assert "again" not in answered(coder) + answered(reasoner)
        assert await resumed.get(kept.id) == done
        assert (await resumed.counts())[COMPLETED] == 4


async def test_submit_many_adds_a_batch_once(tmp_path: Path) -> None:
    batch = [Task(prompt=f"item {n}") for n in range(3)]
    model = HeldChatModel(name_for_echo="model")
    async with make_runner(model, workers=2, persistence=tmp_path / "db.sqlite") as runner:
        first = await runner.submit_many(batch)
        again = await runner.submit_many([*batch, batch[0]])
        assert await runner.join(timeout=5)
        assert [t.id for t in first] == [t.id for t in batch]
        assert again == []
        assert len(await runner.list_tasks(COMPLETED)) == 3
    assert sorted(answered(model)) == ["item 0", "item 1", "item 2"]


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_a_status_save_costs_the_event_loop_no_task_of_its_own(
    backend: str, tmp_path: Path
) -> None:
    # Every task's status is saved twice on its way; a save that is a coroutine needs a task
    # of its own (the runner shields it), and each task waits turns of the busy loop.
    url = "memory" if backend == "memory" else str(tmp_path / "db.sqlite")
    async with open_task_queue(PersistenceSettings(url=url)) as queue:
        task = Task(prompt="save me")
        await queue.add([QueuedTask(task, "route")])
        created: list[str] = []
        loop = asyncio.get_running_loop()

        def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
            created.append(coro.__qualname__)
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(counting)
        try:
            saving = queue.save(task.model_copy(update={"status": TaskStatus.RUNNING}))
            assert isinstance(saving, asyncio.Future)
            assert saving.done() is (backend == "memory")  # nothing to wait for in memory
            await asyncio.shield(saving)  # as the runner waits: no task for a future
        finally:
            loop.set_task_factory(None)
        # SQLite: only the file's commit, which the saves of the moment share.
        assert created == ([] if backend == "memory" else ["Batches._handle_waiting"])
        stored = await queue.get([task.id])
        assert stored[task.id].task.status is TaskStatus.RUNNING


async def test_a_save_that_fails_after_its_task_was_cancelled_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="modelyard.runner")
    async with make_runner() as runner:
        assert runner.queue is not None
        queue_save = runner.queue.save
        running_saved: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def save(task: Task) -> asyncio.Future[None]:
            # The save of `running` hangs, as on a slow disk; the others are saved at once.
            return running_saved if task.status is RUNNING else queue_save(task)

        runner.queue.save = save  # type: ignore[method-assign]
        task = await runner.submit("cancel me while my status is saved")
        await until(lambda: (live := runner._live.get(task.id)) is not None and bool(live.run))
        await asyncio.sleep(0.01)  # the worker is waiting for the save of `running`
        assert not running_saved.done()
        assert await runner.cancel(task.id)
        assert (await runner.wait(task.id, timeout=5)).status is CANCELLED
        running_saved.set_exception(OSError("disk full"))
        await asyncio.sleep(0)  # its done callbacks run
    failures = [r.getMessage() for r in caplog.records if "failed: disk full" in r.getMessage()]
    assert failures == [f"saving task {task.id} as running failed: disk full"]


# --- 7. resume from a checkpoint ----------------------------------------------------------


async def test_plan_and_implement_resumes_at_implement_without_planning_again(
    tmp_path: Path,
) -> None:
    db = tmp_path / "db.sqlite"
    plan = "1. Loop over the halves\n2. Test the edges"
    planner = ScriptedChatModel(replies=[plan])
    coder = HeldChatModel(name_for_echo="coder")
    coder.hold("following the plan")  # the implement prompt; never released
    runner = make_runner(planner, coder=coder, persistence=db, graph="plan_and_implement")
    await runner.start()
    task = await runner.submit("Write a binary search in Python")
    await until(lambda: len(coder.begun) == 1)
    left = await runner.shutdown(drain=False)
    assert [t.id for t in left] == [task.id]
    assert len(planner.calls) == 1 and coder.calls == []

    planner_again = ScriptedChatModel(replies=["a different plan"])
    coder_again = ScriptedChatModel(replies=["def search(items, x): ..."])
    async with make_runner(planner_again, coder=coder_again, persistence=db) as resumed:
        done = await resumed.wait(task.id, timeout=5)

    assert planner_again.calls == []
    assert len(coder_again.calls) == 1
    assert plan in str(coder_again.calls[0][-1].content)
    assert "a different plan" not in str(coder_again.calls[0][-1].content)
    assert (done.status, done.result, done.assigned_model) == (
        COMPLETED, "def search(items, x): ...", "coder",
    )  # fmt: skip
    calls = [(e.step, e.model) for e in done.history if e.kind == "model_call"]
    assert calls == [("plan", "reasoner"), ("implement", "coder")]
    assert status_details(done)[3] == "resumed from its last checkpoint"


# --- 8. one runner per database -----------------------------------------------------------


async def test_a_second_runner_on_the_same_database_is_refused_naming_the_first(
    tmp_path: Path,
) -> None:
    db = tmp_path / "db.sqlite"
    first = await make_runner(persistence=db).start()
    try:
        for _ in range(2):  # a refused attempt must not release the first runner's lock
            with pytest.raises(RunnerBusyError, match=f"pid {os.getpid()}") as refused:
                await make_runner(persistence=db).start()
            assert str(db) in str(refused.value)
        task = await first.submit("still working")
        assert (await first.wait(task.id, timeout=5)).status is COMPLETED
    finally:
        await first.shutdown()

    async with make_runner(persistence=db) as next_runner:
        assert (await next_runner.counts())[COMPLETED] == 1


# --- 9. PostgreSQL ------------------------------------------------------------------------


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """The test PostgreSQL database, or a skip saying why it cannot be used."""
    import psycopg

    try:
        conn = await psycopg.AsyncConnection.connect(POSTGRES_URL, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} is unreachable: {str(exc).strip()}")
    await conn.close()
    yield POSTGRES_URL


async def start_on_postgres(runner: TaskRunner) -> TaskRunner:
    """Start `runner`, waiting a little if another test's runner holds the database."""
    for _ in range(40):
        try:
            return await runner.start()
        except RunnerBusyError:
            await asyncio.sleep(0.25)
    pytest.skip("another runner has held the PostgreSQL queue for 10 s")


async def delete_tasks(url: str, ids: list[str]) -> None:
    """Remove this test's tasks and their checkpoints from the shared PostgreSQL database."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("DELETE FROM modelyard_tasks WHERE id = ANY(%s)", (ids,))
        for table in ("checkpoint_writes", "checkpoint_blobs", "checkpoints"):
            await conn.execute(f"DELETE FROM {table} WHERE thread_id = ANY(%s)", (ids,))


async def test_postgres_runner_completes_tasks_and_the_next_one_resumes_the_rest(
    postgres_url: str,
) -> None:
    tag = uuid.uuid4().hex[:12]
    tasks = [Task(id=f"runner-test-{tag}-{n}", prompt=f"pg task {n} {tag}") for n in range(4)]
    ids = [t.id for t in tasks]
    model = HeldChatModel(name_for_echo="model")
    model.hold(f"pg task 2 {tag}")
    try:
        runner = await start_on_postgres(make_runner(model, persistence=postgres_url))
        await runner.submit_many(tasks)
        await until(lambda: f"pg task 2 {tag}" in model.begun)
        left = await runner.shutdown(drain=False)
        assert [t.id for t in left if t.id in ids] == ids[2:]  # the table is shared
        assert [p for p in answered(model) if tag in p] == [t.prompt for t in tasks[:2]]

        again = HeldChatModel(name_for_echo="again")
        resumed = await start_on_postgres(make_runner(again, persistence=postgres_url))
        try:
            done = [await resumed.wait(i, timeout=10) for i in ids]
        finally:
            await resumed.shutdown()
        assert [(t.status, t.error) for t in done] == [(COMPLETED, None)] * 4
        assert [t.result for t in done] == [
            reply_to(tasks[0].prompt), reply_to(tasks[1].prompt),
            reply_to(tasks[2].prompt, "again"), reply_to(tasks[3].prompt, "again"),
        ]  # fmt: skip
        mine = [p for p in answered(again) if tag in p]
        assert mine == [t.prompt for t in tasks[2:]]
        assert status_details(done[2])[3] == "resumed from its last checkpoint"
    finally:
        await delete_tasks(postgres_url, ids)


# --- over HTTP ----------------------------------------------------------------------------


async def test_a_runner_on_real_clients_resumes_a_call_cut_by_shutdown(tmp_path: Path) -> None:
    """Real Ollama clients against the local server: a slow call is interrupted, then redone."""
    db = tmp_path / "db.sqlite"
    with LocalModelServer([REASONING_MODEL, CODING_MODEL]) as server:
        server.script(REASONING_MODEL, ["the explanation"])
        server.script(CODING_MODEL, ["def sort(xs): ..."])
        config = load_config(write_config(tmp_path, config_text(server.url)))
        server.inject_fault(Fault.delay(30), model=REASONING_MODEL, times=1)

        runner = await TaskRunner(config=config, persistence=str(db), workers=2).start()
        slow = await runner.submit("Explain how a hash table works")
        code = await runner.submit("Write a sort function in Python")
        assert (await runner.wait(code.id, timeout=10)).result == "def sort(xs): ..."
        await until(lambda: len(server.requests_for(REASONING_MODEL)) >= 1)
        left = await asyncio.wait_for(runner.shutdown(drain=False), timeout=5)
        assert [t.id for t in left] == [slow.id]

        async with TaskRunner(config=config, persistence=str(db), workers=2) as resumed:
            done = await resumed.wait(slow.id, timeout=10)
    assert (done.status, done.result, done.assigned_model) == (
        COMPLETED, "the explanation", "reasoner",
    )  # fmt: skip
    assert len(server.requests_for(CODING_MODEL)) == 1


# --- 10. errors a caller can act on -------------------------------------------------------


async def test_submit_before_start_and_after_shutdown_says_what_to_do() -> None:
    runner = make_runner()
    with pytest.raises(RunnerClosedError, match=r"await runner.start\(\)"):
        await runner.submit("too early")
    await runner.start()
    with pytest.raises(RunnerClosedError, match="already started; make a new TaskRunner"):
        await runner.start()
    await runner.shutdown()
    with pytest.raises(RunnerClosedError, match="shut down; start a new TaskRunner"):
        await runner.submit("too late")
    with pytest.raises(RunnerClosedError, match="shut down"):
        await runner.submit_many([Task(prompt="too late")])
    with pytest.raises(RunnerClosedError, match="shut down"):
        await runner.counts()


async def test_an_unknown_graph_is_refused_listing_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown graph 'nope'; known graphs: route, plan_and_"):
        make_runner(graph="nope")
    async with make_runner() as runner:
        with pytest.raises(ValueError, match="unknown graph 'nope'; known graphs: route, plan"):
            await runner.submit("hi", graph="nope")
        assert await runner.list_tasks() == []


@pytest.mark.parametrize("workers", [0, -1])
def test_fewer_than_one_worker_is_refused(workers: int) -> None:
    with pytest.raises(ValueError, match=f"workers must be at least 1, not {workers}"):
        make_runner(workers=workers)


def test_a_default_worker_count_comes_from_the_config() -> None:
    runner = TaskRunner(context=scripted_context(), persistence="memory")
    assert runner.workers == 4


async def test_cancel_after_shutdown_does_not_claim_to_cancel_a_task_that_will_resume(
    tmp_path: Path,
) -> None:
    """After shutdown, cancel must either refuse or really cancel; never report a false True."""
    db = tmp_path / "db.sqlite"
    model = HeldChatModel(name_for_echo="model")
    model.hold("held")
    runner = await make_runner(model, persistence=db).start()
    held = await runner.submit("held")
    await until(lambda: model.begun == ["held"])
    await runner.shutdown(drain=False)

    try:
        claimed = await runner.cancel(held.id)
    except RunnerClosedError:
        claimed = False

    async with make_runner(persistence=db) as next_runner:
        done = await next_runner.wait(held.id, timeout=5)
    if claimed:
        assert done.status is CANCELLED, "cancel() said True, yet the next runner ran the task"
    else:
        assert done.status is COMPLETED


class Steps(TypedDict, total=False):
    prompt: str
    ran: Annotated[list[str], add]


async def test_a_task_killed_after_a_step_saved_its_writes_resumes_instead_of_ending(
    tmp_path: Path,
) -> None:
    """The crash between a node's saved writes and the next checkpoint: LangGraph's `next`
    is empty then (it leaves out nodes whose writes are saved), yet the graph has not
    ended. Resuming must go on from there, not take the half-done state as the end."""
    ran: list[str] = []

    def step(name: str) -> Callable[[Steps], dict[str, Any]]:
        def node(state: Steps) -> dict[str, Any]:
            ran.append(name)
            return {"ran": [name]}

        return node

    builder = StateGraph(Steps)
    for name in ("plan", "select_coder", "implement"):
        builder.add_node(name, step(name))
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "select_coder")
    builder.add_edge("select_coder", "implement")
    builder.add_edge("implement", END)
    task = Task(prompt="Write a parser").model_copy(update={"started_at": datetime.now(UTC)})
    config: Any = {"configurable": {"thread_id": task.id}}

    async with open_checkpointer(PersistenceSettings(url=str(tmp_path / "db.sqlite"))) as saver:
        graph = builder.compile(checkpointer=saver, interrupt_before=["select_coder"])
        await graph.ainvoke({"prompt": task.prompt}, config)
        # What the Pregel loop does when select_coder finishes: save its writes (its
        # output, and the edge's trigger of the next node) under its task id. The process
        # dies before the checkpoint that applies them.
        (pending,) = (await graph.aget_state(config)).tasks
        saved = (await graph.aget_state(config)).config
        writes = [("ran", ["select_coder"]), ("branch:to:implement", None)]
        await saver.aput_writes(saved, writes, pending.id)
        snapshot = await graph.aget_state(config)
        assert snapshot.next == () and snapshot.tasks  # the trap

        resumed = builder.compile(checkpointer=saver)
        payload, done = await resume_point(resumed, config, task)
        assert (payload, done) == (None, None)  # go on, not "ended"
        final = await resumed.ainvoke(payload, config)

    assert final["ran"] == ["plan", "select_coder", "implement"]
    assert ran == ["plan", "implement"]  # select_coder's saved writes were not redone
