"""The distributed runner: worker processes sharing one PostgreSQL queue, checkpoints and stats.

Every test gets a PostgreSQL schema of its own (search_path in the URL), dropped at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import CODING_MODEL, MODELYARD, REASONING_MODEL, config_text, write_config
from test_batch import steps_asked

from modelyard.configs import load_config, load_config_text
from modelyard.configs.persistence import PersistenceError, open_checkpointer, open_store
from modelyard.configs.schema import PersistenceSettings
from modelyard.graphs.distributed import (
    DistributedRunner,
    DistributedTaskQueue,
    DistributedWorker,
    open_job_queue,
)
from modelyard.graphs.queue import QueuedTask
from modelyard.nodes import StatsBook
from modelyard.state import ConfigError, Task, TaskStatus, TaskType
from modelyard.testing.server import Fault, LocalModelServer

pytestmark = pytest.mark.cli

POSTGRES_URL = os.environ.get(
    "MODELYARD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL to the test database whose tables land in a schema of this test's own."""
    import psycopg

    schema = f"modelyard_test_{uuid.uuid4().hex[:10]}"
    try:
        conn = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} is unreachable: {str(exc).strip()}")
    with conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        try:
            yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
        finally:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def cluster_config(tmp_path: Path, server: LocalModelServer, url: str, extra: str = "") -> Path:
    """Write a config for the local server, the queue in `url`, with quick heartbeats."""
    text = config_text(server.url, timeout=10.0) + (
        f"persistence:\n  url: '{url}'\n"
        "runner:\n  workers: 8\n  heartbeat_seconds: 0.5\n  stalled_after_seconds: 3\n"
    )
    return write_config(tmp_path, text + extra)


class WorkerProcess:
    """A `modelyard worker` process, its log in a file."""

    def __init__(self, config: Path, name: str, concurrency: int, log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        command = [MODELYARD, "worker", "-c", str(config), "-n", str(concurrency)]
        with self.log.open("w") as sink:
            self.process = subprocess.Popen(
                [*command, "--name", name], stdout=sink, stderr=subprocess.STDOUT
            )

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait for the worker to log that it works; fail with its log if it ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if f"worker {self.name}: taking tasks" in self.log.read_text():
                return
            if self.process.poll() is not None:
                pytest.fail(f"worker {self.name} ended: {self.log.read_text()}")
            time.sleep(0.05)
        pytest.fail(f"worker {self.name} did not start: {self.log.read_text()}")

    def stop(self, timeout: float = 60) -> int:
        """Stop it as Ctrl-C would (running tasks finish) and return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Worker processes a test starts; any still running are killed at the end."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


def start_workers(
    started: list[WorkerProcess], config: Path, names: list[str], concurrency: int, logs: Path
) -> list[WorkerProcess]:
    new = [WorkerProcess(config, name, concurrency, logs) for name in names]
    started.extend(new)
    for worker in new:
        worker.wait_ready()
    return new


def ran_on(task: Task) -> list[str]:
    """Return the workers that ran (or resumed) a task, in order."""
    return [
        str(event.data["worker"])
        for event in task.history
        if event.kind == "status" and "worker" in event.data
    ]


async def checkpointed_steps(url: str, task_ids: list[str]) -> dict[str, set[str]]:
    """Return, per task, the steps whose output its thread's last checkpoint holds."""
    steps: dict[str, set[str]] = {}
    async with open_checkpointer(PersistenceSettings(url=url)) as saver:
        for task_id in task_ids:
            config: Any = {"configurable": {"thread_id": task_id, "checkpoint_ns": ""}}
            saved = await saver.aget_tuple(config)
            values = saved.checkpoint["channel_values"] if saved else {}
            steps[task_id] = {s for s in ("plan", "implementation") if s in values}
    return steps


async def test_three_workers_share_500_tasks_and_one_killed_midway_loses_none(
    tmp_path: Path, pg_url: str, workers: list[WorkerProcess]
) -> None:
    """SIGKILL one of three workers a third of the way: the others resume its tasks from
    their checkpoints, every task completes, and no checkpointed step is asked again."""
    with LocalModelServer([REASONING_MODEL, CODING_MODEL]) as server:
        server.inject_fault(Fault.delay(0.05), times=None)
        config = cluster_config(tmp_path, server, pg_url)
        settings = load_config(config)
        ids = [f"task-{n:04d}" for n in range(500)]
        async with DistributedRunner(config=settings, graph="plan_and_implement") as runner:
            # All on the queue before any worker starts: each takes its share from the top.
            await runner.submit_many(
                Task(id=i, prompt=f"Write a function for job {i}.") for i in ids
            )
            first, second, third = await asyncio.to_thread(
                start_workers, workers, config, ["w1", "w2", "w3"], 8, tmp_path
            )
            while (await runner.counts())[TaskStatus.COMPLETED] < len(ids) // 3:
                await asyncio.sleep(0.1)
            first.process.send_signal(signal.SIGKILL)
            first.process.wait()
            # What w1 held when it died: running, last taken by w1 (none ends before the
            # others see w1 silent for stalled_after_seconds and take them up).
            running_on_first = [
                t.id
                for t in await runner.list_tasks(TaskStatus.RUNNING)
                if ran_on(t)[-1:] == ["w1"]
            ]
            done_at_kill = await checkpointed_steps(pg_url, ids)
            assert running_on_first, "w1 had no task running when it was killed"

            assert await runner.join(timeout=300), await runner.counts()
            tasks = {t.id: t for t in await runner.list_tasks()}

        assert second.stop() == 0 and third.stop() == 0
        assert sorted(tasks) == ids
        assert Counter(t.status for t in tasks.values()) == {TaskStatus.COMPLETED: len(ids)}
        assert all(t.result for t in tasks.values()), "a task completed without a result"
        finishers = Counter(ran_on(t)[-1] for t in tasks.values())
        assert set(finishers) == {"w1", "w2", "w3"}, finishers  # all three took a share
        resumed = [tasks[i] for i in running_on_first]
        for task in resumed:  # each left by w1 was taken up by another, from its checkpoint
            assert ran_on(task)[0] == "w1" and ran_on(task)[-1] in {"w2", "w3"}, ran_on(task)
            assert any("resumed from its last checkpoint" in e.detail for e in task.history)
        asked = steps_asked(server, ids)
        for task_id in ids:
            plan_calls, implement_calls = asked["plan"][task_id], asked["implement"][task_id]
            assert plan_calls >= 1 and implement_calls >= 1, task_id
            if "plan" in done_at_kill[task_id]:
                assert plan_calls == 1, f"{task_id}: its plan was checkpointed, then asked again"
            if "implementation" in done_at_kill[task_id]:
                assert implement_calls == 1, (
                    f"{task_id}: its code was checkpointed, then asked again"
                )
        repeated = [i for i in ids if (asked["plan"][i], asked["implement"][i]) != (1, 1)]
        assert set(repeated) <= set(running_on_first), "a step was repeated outside w1's tasks"
        assert any(steps == {"plan"} for steps in done_at_kill.values()), "no task was mid-way"


async def test_priorities_are_honoured_across_workers(
    tmp_path: Path, pg_url: str, workers: list[WorkerProcess]
) -> None:
    """Low-priority tasks submitted first still start after the high-priority ones."""
    with LocalModelServer([REASONING_MODEL, CODING_MODEL]) as server:
        server.inject_fault(Fault.delay(0.2), times=None)
        config = cluster_config(tmp_path, server, pg_url)
        async with DistributedRunner(config=load_config(config)) as runner:
            low = await runner.submit_many(
                Task(prompt=f"Explain topic {n}", priority=0) for n in range(40)
            )
            high = await runner.submit_many(
                Task(prompt=f"Explain urgent topic {n}", priority=3) for n in range(20)
            )
            await asyncio.to_thread(start_workers, workers, config, ["p1", "p2", "p3"], 2, tmp_path)
            assert await runner.join(timeout=120)
            tasks = {t.id: t for t in await runner.list_tasks()}
    assert {t.status for t in tasks.values()} == {TaskStatus.COMPLETED}
    assert len({ran_on(t)[-1] for t in tasks.values()}) == 3

    last_high_start = max(_started(tasks[t.id]) for t in high)
    early_low = [t for t in low if _started(tasks[t.id]) < last_high_start]
    # Only a fetch racing another worker's (at most one per other worker) may jump the line;
    # first-in-first-out would have started all 40 low ones first.
    assert len(early_low) <= 2, [ran_on(tasks[t.id]) for t in early_low]


def _started(task: Task) -> float:
    assert task.started_at is not None
    return task.started_at.timestamp()


async def test_a_cooldown_written_by_one_worker_steers_another(
    tmp_path: Path, pg_url: str, workers: list[WorkerProcess]
) -> None:
    """The coder fails on w1 until it is cooled down; w2, started later in another process,
    leaves it out (no request reaches it) and says why, from the shared stats."""
    with LocalModelServer([REASONING_MODEL, CODING_MODEL]) as server:
        server.inject_fault(Fault.status_code(500), model=CODING_MODEL, times=None)
        extra = "cooldown:\n  allowed_fails: 2\n  cooldown_seconds: 600\n"
        config = cluster_config(tmp_path, server, pg_url, extra)
        settings = load_config(config)
        code_task = {"task_type": TaskType.CODE_GENERATION}
        async with DistributedRunner(config=settings) as runner:
            (first,) = await asyncio.to_thread(start_workers, workers, config, ["c1"], 1, tmp_path)
            before = [
                await runner.wait((await runner.submit(f"Write function {n}", **code_task)).id, 30)
                for n in range(2)
            ]
            assert first.stop() == 0
            assert server.requests_for(CODING_MODEL), "the coder was never tried"
            server.clear_faults()
            server.reset_log()

            await asyncio.to_thread(start_workers, workers, config, ["c2"], 4, tmp_path)
            after = await runner.submit_many(
                Task(prompt=f"Write function {n}", **code_task) for n in range(2, 8)
            )
            assert await runner.join(timeout=60)
            ended = [await runner.get(t.id) for t in after]

        async with open_store(settings.persistence) as store:
            coder = await StatsBook(store, settings).get("coder")
    assert [t.status for t in before] == [TaskStatus.COMPLETED] * 2
    assert coder.cooldown_until is not None and coder.failures >= 2
    assert server.requests_for(CODING_MODEL) == []  # c2 never asked the cooled-down coder
    for task in ended:
        assert task is not None and task.status is TaskStatus.COMPLETED
        assert ran_on(task) == ["c2"] and task.assigned_model == "reasoner"
        (selected,) = [e for e in task.history if e.kind == "selected"]
        assert "cooled down" in selected.data["excluded"]["coder"]


async def test_the_python_interface_matches_the_in_process_runner(
    tmp_path: Path, pg_url: str
) -> None:
    """submit (with sync and async callbacks), get, list, counts, cancel waiting and running
    tasks, duplicate ids and unknown graphs; the worker runs in this process."""
    with LocalModelServer([REASONING_MODEL, CODING_MODEL]) as server:
        settings = load_config(cluster_config(tmp_path, server, pg_url))
        seen: list[tuple[str, str]] = []
        finished: list[str] = []

        async def async_callback(task: Task) -> None:
            seen.append(("async", task.id))

        async with DistributedRunner(
            config=settings, on_finish=lambda t: finished.append(t.id)
        ) as runner:
            waiting = await runner.submit("Explain DNS", callback=async_callback, id="dns")
            doomed = await runner.submit("Explain TCP", id="tcp")
            assert waiting.status is TaskStatus.PENDING
            assert (await runner.get("dns")).status is TaskStatus.PENDING  # type: ignore[union-attr]
            assert await runner.cancel("tcp") is True
            assert (await runner.get("tcp")).status is TaskStatus.CANCELLED  # type: ignore[union-attr]
            assert await runner.cancel("tcp") is False
            with pytest.raises(ValueError, match="submitted before"):
                await runner.submit("Explain DNS again", id="dns")
            with pytest.raises(ValueError, match="unknown graph 'poetry'"):
                await runner.submit("Explain UDP", graph="poetry")

            worker = DistributedWorker(config=settings, concurrency=2, name="inproc")
            working = asyncio.create_task(worker.run())
            try:
                done = await runner.wait("dns", timeout=30)
                assert done.status is TaskStatus.COMPLETED and done.result
                assert ran_on(done) == ["inproc"]

                server.inject_fault(Fault.hang(), model=REASONING_MODEL, times=1)
                held = await runner.submit(
                    "Explain BGP", callback=lambda t: seen.append(("sync", t.id)), id="bgp"
                )
                while (await runner.get("bgp")).status is not TaskStatus.RUNNING:  # type: ignore[union-attr]
                    await asyncio.sleep(0.05)
                assert await runner.cancel("bgp") is True
                stopped = await runner.get("bgp")
                assert stopped is not None and stopped.status is TaskStatus.CANCELLED
                assert "cancelled while running" in [e.detail for e in stopped.history]
                assert await runner.join(timeout=10)
            finally:
                server.clear_faults()
                working.cancel()
                await asyncio.gather(working, return_exceptions=True)
            counts = await runner.counts()
            listed = [t.id for t in await runner.list_tasks(TaskStatus.CANCELLED)]
        assert counts[TaskStatus.COMPLETED] == 1 and counts[TaskStatus.CANCELLED] == 2
        assert sorted(listed) == ["bgp", "tcp"]
        assert seen == [("async", "dns"), ("sync", "bgp")]
        assert sorted(finished) == ["bgp", "dns", "tcp"]
        assert held.id == "bgp" and doomed.id == "tcp"


async def test_a_task_saved_without_a_job_is_queued_again_by_a_worker(
    tmp_path: Path, pg_url: str
) -> None:
    """A submitter that died between saving a task and queueing its job loses nothing."""
    with LocalModelServer([REASONING_MODEL, CODING_MODEL]) as server:
        settings = load_config(cluster_config(tmp_path, server, pg_url))
        from modelyard.configs.persistence import postgres_pool

        async with postgres_pool(pg_url) as pool, open_job_queue(settings.persistence, pool):
            queue = DistributedTaskQueue(pool)
            orphan = Task(id="orphan", prompt="Explain ARP")
            aged = orphan.model_copy(update={"created_at": orphan.created_at.replace(year=2020)})
            await queue.add([QueuedTask(aged, "route")])
        worker = DistributedWorker(config=settings, concurrency=1, name="sweeper")
        working = asyncio.create_task(worker.run())
        try:
            async with DistributedRunner(config=settings) as runner:
                done = await runner.wait("orphan", timeout=30)
        finally:
            working.cancel()
            await asyncio.gather(working, return_exceptions=True)
    assert done.status is TaskStatus.COMPLETED and ran_on(done) == ["sweeper"]


def test_the_commands_submit_batch_and_work_across_processes(
    tmp_path: Path, pg_url: str, workers: list[WorkerProcess]
) -> None:
    """submit --wait; batch --distributed interrupted before any worker ran (its tasks stay
    queued), then run again with workers: every result written once; a third run asks nothing."""
    with LocalModelServer([REASONING_MODEL, CODING_MODEL]) as server:
        config = cluster_config(tmp_path, server, pg_url)
        lines = [{"prompt": f"Explain topic {n}", "id": f"b{n}"} for n in range(10)]
        lines.append(
            {"prompt": "Plan and write a parser", "graph": "plan_and_implement", "id": "p"}
        )
        tasks = tmp_path / "tasks.jsonl"
        tasks.write_text("".join(json.dumps(line) + "\n" for line in lines))
        out = tmp_path / "out.jsonl"
        batch = [MODELYARD, "batch", str(tasks), "-c", str(config), "--distributed", "-o", str(out)]
        waiting = subprocess.Popen(batch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        asyncio.run(_until_queued(load_config(config), len(lines)))
        waiting.send_signal(signal.SIGTERM)
        _, stopped = waiting.communicate(timeout=60)
        assert waiting.returncode == 130, stopped
        assert not out.exists() or out.read_text() == ""

        start_workers(workers, config, ["cli1", "cli2"], 4, tmp_path)
        submitted = subprocess.run(
            [MODELYARD, "submit", "Explain DNS", "-c", str(config), "--priority", "3", "--wait"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert submitted.returncode == 0, submitted.stderr
        task_id, record = submitted.stdout.splitlines()
        assert json.loads(record)["id"] == task_id and json.loads(record)["status"] == "completed"

        done = subprocess.run(batch, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(r["id"] for r in records) == sorted(line["id"] for line in lines)
        assert {r["status"] for r in records} == {"completed"}
        assert next(r for r in records if r["id"] == "p")["models"] == ["coder", "reasoner"]
        asked = len(server.requests)
        again = subprocess.run(batch, capture_output=True, text=True, timeout=60, check=False)
        assert again.returncode == 0, again.stderr
        assert len(server.requests) == asked  # nothing ran twice
        assert [w.stop() for w in workers] == [0, 0]

    sqlite = write_config(tmp_path, config_text("http://127.0.0.1:9"), name="local.yaml")
    refused = subprocess.run(
        [MODELYARD, "batch", str(tasks), "-c", str(sqlite), "--distributed"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert "needs PostgreSQL" in refused.stderr and "postgresql://" in refused.stderr


async def _until_queued(settings: Any, count: int) -> None:
    async with DistributedRunner(config=settings) as runner:
        async with asyncio.timeout(60):
            while (await runner.counts())[TaskStatus.PENDING] < count:
                await asyncio.sleep(0.1)


def test_a_worker_without_its_database_says_which_and_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, config_text("http://127.0.0.1:9"))
    done = subprocess.run(
        [MODELYARD, "worker", "-c", str(config), "--db", "postgresql://me:s3cret@127.0.0.1:1/q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "cannot reach the database at postgresql://me:***@127.0.0.1:1/q" in done.stderr
    assert "s3cret" not in done.stderr


def test_heartbeats_must_fit_well_inside_the_stalled_timeout() -> None:
    text = config_text("http://127.0.0.1:9") + (
        "runner:\n  heartbeat_seconds: 10\n  stalled_after_seconds: 15\n"
    )
    with pytest.raises(ConfigError, match="at least twice heartbeat_seconds"):
        load_config_text(text)


async def test_the_in_process_interface_refuses_a_database_other_than_postgres(
    tmp_path: Path,
) -> None:
    settings = load_config(write_config(tmp_path, config_text("http://127.0.0.1:9")))
    with pytest.raises(PersistenceError, match="needs PostgreSQL"):
        DistributedRunner(config=settings)
    with pytest.raises(PersistenceError, match="needs PostgreSQL"):
        DistributedWorker(config=settings, persistence="memory")
