"""The distributed task runner: worker processes anywhere, one PostgreSQL database between them.

```python
async with DistributedRunner(config=load_config("cluster.yaml")) as runner:
    task = await runner.submit("Write a binary search in Rust", priority=Priority.HIGH)
    done = await runner.wait(task.id)
```

and on each machine, `modelyard worker --config cluster.yaml --concurrency 8`.

The queue is procrastinate's (jobs, priorities, locks, worker heartbeats); each job carries a
task id and the task's priority. The tasks themselves, their statuses and history, live in
the table `modelyard_distributed_tasks`; their threads (thread id = task id) in LangGraph's
PostgreSQL checkpointer; model stats and cooldowns in LangGraph's PostgreSQL store, so every
worker steers by what all of them saw. A worker that dies mid-task stops sending heartbeats;
the others then put its jobs back on the queue (procrastinate's stalled jobs), and the worker
that takes one up resumes the task's thread from its last checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from langgraph.graph.state import CompiledStateGraph

from modelyard.configs import ModelyardConfig
from modelyard.configs.persistence import (
    PersistenceError,
    open_checkpointer,
    open_store,
    poll_advisory_lock,
    postgres_pool,
)
from modelyard.configs.schema import PersistenceSettings
from modelyard.configs.server_models import check_configured_models
from modelyard.graphs.heap import frozen_heap
from modelyard.graphs.queue import (
    FINISHED,
    UNFINISHED,
    PostgresTaskQueue,
    QueuedTask,
    utc_text,
)
from modelyard.graphs.run import BUILDERS
from modelyard.graphs.runner import (
    GraphSource,
    Runner,
    RunnerClosedError,
    TaskCallback,
    call_back,
    check_graph,
    compile_graphs,
    persistence_of,
    run_thread,
    with_status,
)
from modelyard.nodes import Context
from modelyard.state import Task, TaskStatus
from modelyard.state.task import utcnow

log = logging.getLogger("modelyard.distributed")

#: The procrastinate task (job kind) that runs one modelyard task.
JOB_TASK = "modelyard.run_task"
#: The procrastinate queue modelyard's jobs wait in.
JOB_QUEUE = "modelyard"
#: The table of the distributed runner's tasks (the in-process runner keeps its own).
TASKS_TABLE = "modelyard_distributed_tasks"
#: The advisory lock held while setting up the schema, one process at a time.
_SETUP_LOCK = zlib.crc32(b"modelyard.distributed.setup")
#: The advisory lock of the recovery sweep: one worker sweeps at a time.
_RECOVERY = zlib.crc32(b"modelyard.distributed.recovery")


def _require_postgres(settings: PersistenceSettings) -> None:
    if settings.backend != "postgres":
        raise PersistenceError(
            f"the distributed runner needs PostgreSQL, and persistence.url is "
            f"{settings.url!r}; set it to a postgresql:// URL that every worker can reach "
            "(or use the in-process runner: `modelyard batch` without --distributed)"
        )


@asynccontextmanager
async def open_job_queue(settings: PersistenceSettings, pool: Any) -> AsyncIterator[Any]:
    """Open a procrastinate App on `pool`'s database, its schema set up once, idempotently.

    Raises:
        PersistenceError: procrastinate is not installed, or the schema cannot be set up.
    """
    try:
        import procrastinate
    except ImportError as exc:
        raise PersistenceError(
            f"the distributed runner needs procrastinate ({exc.name} is missing); run "
            "`pip install 'modelyard[distributed]'`"
        ) from exc
    connector = procrastinate.PsycopgConnector(conninfo=settings.url, min_size=1, max_size=6)
    app = procrastinate.App(connector=connector)
    async with app.open_async():
        async with pool.connection() as conn:
            await poll_advisory_lock(conn, _SETUP_LOCK)
            try:
                found = await conn.execute("SELECT to_regclass('procrastinate_jobs') AS found")
                row = await found.fetchone()
                if row is None or row["found"] is None:
                    await app.schema_manager.apply_schema_async()
                await DistributedTaskQueue(pool).setup()
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK,))
        yield app


class DistributedTaskQueue(PostgresTaskQueue):
    """The distributed runner's tasks: statuses, histories and results, beside the jobs."""

    def __init__(self, pool: Any) -> None:
        super().__init__(pool, TASKS_TABLE)

    async def statuses(self, task_ids: Iterable[str]) -> dict[str, TaskStatus]:
        """Return the status of each stored task among `task_ids` (cheaper than `get`)."""
        sql = self._sql("SELECT id, status FROM {table} WHERE id = ANY(?)")
        rows = await self._fetch(sql, [list(task_ids)])
        return {task_id: TaskStatus(status) for task_id, status in rows}

    async def save_unfinished(self, task: Task) -> bool:
        """Store the task only if its stored status is still pending or running.

        Returns False (nothing written) when it had ended meanwhile: cancelled by a client,
        or finished by another worker. A write never undoes an end.
        """
        sql = self._sql(
            "UPDATE {table} SET status = ?, task = ? WHERE id = ? AND status IN (?, ?) RETURNING id"
        )
        rows = await self._fetch(
            sql, [task.status.value, task.model_dump_json(), task.id, *UNFINISHED]
        )
        return bool(rows)

    async def orphans(self, created_before: str) -> list[Task]:
        """Return the unfinished tasks, created before then, that have no job waiting or running."""
        sql = self._sql(
            "SELECT task FROM {table} t WHERE t.status IN (?, ?) AND t.created_at < ? "
            "AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j "
            "WHERE j.lock = t.id AND j.status IN ('todo', 'doing'))"
        )
        rows = await self._fetch(sql, [*UNFINISHED, created_before])
        return [Task.model_validate_json(row[0]) for row in rows]


def _job(task: Task) -> Any:
    """Return the procrastinate job that runs `task`: one at a time, and one waiting."""
    from procrastinate.jobs import Job

    return Job(
        id=None,
        queue=JOB_QUEUE,
        priority=int(task.priority),
        lock=task.id,
        queueing_lock=task.id,
        task_name=JOB_TASK,
        task_kwargs={"task_id": task.id},
    )


async def _defer(app: Any, tasks: Iterable[Task]) -> None:
    """Put a job on the queue for each task, skipping those with a job already waiting."""
    from procrastinate.exceptions import AlreadyEnqueued

    jobs = [_job(task) for task in tasks]
    if not jobs:
        return
    try:
        await app.job_manager.batch_defer_jobs_async(jobs)
    except AlreadyEnqueued:  # some wait already: defer one by one, skipping those
        for job in jobs:
            try:
                await app.job_manager.batch_defer_jobs_async([job])
            except AlreadyEnqueued:
                continue


@dataclass(eq=False)
class _Watched:
    """A task this client submitted and has not seen end yet."""

    task: Task
    callback: TaskCallback | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class DistributedRunner(Runner):
    """Submit tasks to the workers of a PostgreSQL database; the in-process runner's interface.

    `submit`, `submit_many`, `get`, `cancel`, `list_tasks`, `counts`, `wait`, `join` and
    `shutdown` behave as `TaskRunner`'s; the tasks run in `modelyard worker` processes,
    on any machine that reaches the database. Callbacks run here, in the process that
    submitted, once it sees the task end (it polls the database).

    Args:
        config: The models and settings; `persistence.url` must be a `postgresql://` URL.
        context: Used for its config when given.
        graph: The graph a task runs when `submit` names none.
        graphs: Names of extra graphs the workers were started with.
        persistence: The database; default: the config's `persistence`.
        on_finish: Called once for every task this runner submitted that ends.
        on_change: Called after every status change seen of a task this runner submitted.
        poll_seconds: How often to read the statuses of the tasks waited for.
    """

    def __init__(
        self,
        *,
        config: ModelyardConfig | None = None,
        context: Context | None = None,
        graph: str = "route",
        graphs: Iterable[str] = (),
        persistence: PersistenceSettings | str | None = None,
        on_finish: TaskCallback | None = None,
        on_change: Callable[[Task], None] | None = None,
        poll_seconds: float = 0.25,
    ) -> None:
        self.config = (context or Context(config=config)).models().config
        self.persistence = persistence_of(persistence, self.config)
        _require_postgres(self.persistence)
        self.graph_names = [*BUILDERS, *graphs]
        self.default_graph = check_graph(graph, self.graph_names)
        self.on_finish = on_finish
        self.on_change = on_change
        self.poll_seconds = poll_seconds
        self.queue: DistributedTaskQueue | None = None
        self._app: Any = None
        self._watched: dict[str, _Watched] = {}
        self._poller: asyncio.Task[None] | None = None
        self._stack: AsyncExitStack | None = None
        self._state = "new"

    async def start(self) -> Self:
        """Open the database (setting up its tables on first use) and start watching.

        Raises:
            PersistenceError: the database cannot be reached or set up.
            RunnerClosedError: this runner was already started.
        """
        if self._state != "new":
            raise RunnerClosedError("this runner was already started; make a new one")
        async with AsyncExitStack() as stack:
            pool = await stack.enter_async_context(postgres_pool(self.persistence.url, size=4))
            self._app = await stack.enter_async_context(open_job_queue(self.persistence, pool))
            self.queue = DistributedTaskQueue(pool)
            self._stack = stack.pop_all()
        self._state = "running"
        self._poller = asyncio.create_task(self._poll(), name="modelyard-distributed-poller")
        return self

    async def submit_many(
        self,
        tasks: Iterable[Task],
        *,
        graph: str | None = None,
        callback: TaskCallback | None = None,
    ) -> list[Task]:
        """Put many tasks on the queue; return those added (known ids are skipped)."""
        queue = self._running_queue()
        graph = check_graph(graph or self.default_graph, self.graph_names)
        entries = [
            QueuedTask(with_status(task, TaskStatus.PENDING, "submitted"), graph) for task in tasks
        ]
        added = await queue.add(entries)
        await _defer(self._app, (entry.task for entry in added))
        for entry in added:
            self._watched[entry.task.id] = _Watched(entry.task, callback)
            self._notify(entry.task)
        return [entry.task for entry in added]

    async def cancel(self, task_id: str) -> bool:
        """Cancel a pending or running task; return False when it had already ended.

        A waiting job is taken off the queue at once; a running one is stopped by its
        worker (within a moment) and then saved as cancelled.
        """
        queue = self._running_queue()
        found = await queue.get([task_id])
        if task_id not in found or found[task_id].task.status in FINISHED:
            return False
        manager = self._app.job_manager
        jobs = await manager.list_jobs_async(queue=JOB_QUEUE, lock=task_id)
        running = False
        for job in (job for job in jobs if job.status in ("todo", "doing")):
            if job.status == "todo" and await manager.cancel_job_by_id_async(job.id):
                continue  # taken off the queue before a worker took it
            # running, or taken by a worker since it was listed: ask the worker to stop it
            running = True
            await manager.cancel_job_by_id_async(job.id, abort=True)
        if not running:  # no worker has it (its job was cancelled, or it had none)
            detail = "cancelled before it started"
            task = with_status(found[task_id].task, TaskStatus.CANCELLED, detail)
            if not await queue.save_unfinished(task.model_copy(update={"finished_at": utcnow()})):
                return False  # it ended between the first read and now
        limit = self.config.runner.stalled_after_seconds + self.config.runner.heartbeat_seconds
        try:
            await self.wait(task_id, timeout=limit)
        except TimeoutError:
            log.warning("task %s: cancel asked, its worker has not stopped it yet", task_id)
        return True

    async def get(self, task_id: str) -> Task | None:
        """Return a task as the database has it now."""
        found = await self._running_queue().get([task_id])
        return found[task_id].task if task_id in found else None

    async def wait(self, task_id: str, timeout: float | None = None) -> Task:
        """Wait for a task to end and return it.

        Raises:
            KeyError: no such task.
            TimeoutError: it did not end within `timeout` seconds.
        """
        async with asyncio.timeout(timeout):
            while True:
                watched = self._watched.get(task_id)
                if watched is not None:
                    await watched.done.wait()
                    return watched.task
                task = await self.get(task_id)
                if task is None:
                    raise KeyError(f"no task {task_id!r} in this database")
                if task.status in FINISHED:
                    return task
                await asyncio.sleep(self.poll_seconds)

    async def join(self, timeout: float | None = None) -> bool:
        """Wait until every task this runner submitted or watches has ended and its callbacks
        have run; return False on timeout. (Other clients' tasks on the queue are theirs.)"""
        waits = [asyncio.ensure_future(w.done.wait()) for w in self._watched.values()]
        if not waits:
            return True
        _, pending = await asyncio.wait(waits, timeout=timeout)
        for waiting in pending:
            waiting.cancel()
        return not pending

    def watch(self, tasks: Iterable[Task], callback: TaskCallback | None = None) -> None:
        """Follow tasks submitted elsewhere (or by an earlier run) as if submitted here:
        `on_change`, `on_finish`, `callback` and `join` then cover them too."""
        for task in tasks:
            if task.id not in self._watched and task.status not in FINISHED:
                self._watched[task.id] = _Watched(task, callback)

    async def shutdown(self, *, drain: bool = True, timeout: float | None = None) -> list[Task]:
        """Stop watching and close the database; return this runner's tasks not yet ended.

        Args:
            drain: First wait (up to `timeout`) for every task this runner submitted to end
                and its callbacks to run; else stop at once.
            timeout: Seconds to wait for; None waits for all.

        Tasks left stay on the queue: the workers run them whether or not a client watches.
        """
        if self._state != "running":
            return []
        if drain:
            await self.join(timeout)
        self._state = "closed"
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        left = [watched.task for watched in self._watched.values()]
        if self._stack is not None:
            await self._stack.aclose()
        return left

    def _running_queue(self) -> DistributedTaskQueue:
        if self._state != "running" or self.queue is None:
            raise RunnerClosedError(
                "the distributed runner is not running: use `async with DistributedRunner(...) "
                "as runner:` or `await runner.start()` first"
                if self._state == "new"
                else "the distributed runner was shut down; start a new one"
            )
        return self.queue

    async def _poll(self) -> None:
        """Read the watched tasks' statuses; report changes and call back for those that end."""
        assert self.queue is not None
        while True:
            await asyncio.sleep(self.poll_seconds)
            if not self._watched:
                continue
            try:
                statuses = await self.queue.statuses(self._watched)
                changed = [i for i, s in statuses.items() if s != self._watched[i].task.status]
                found = await self.queue.get(changed) if changed else {}
            except Exception:
                log.exception("cannot read the tasks' statuses; trying again")
                continue
            for task_id, entry in found.items():
                watched = self._watched[task_id]
                watched.task = entry.task
                self._notify(entry.task)
                if entry.task.status in FINISHED:
                    for callback in (watched.callback, self.on_finish):
                        if callback is not None:
                            await call_back(callback, entry.task)
                    watched.done.set()
                    del self._watched[task_id]


class DistributedWorker:
    """A worker process's runner: takes jobs off the queue and runs their tasks' threads.

    Args:
        config: The models and settings; `persistence.url` must be a `postgresql://` URL.
        context: The graphs' run-time context; built from `config` when absent.
        concurrency: Tasks this worker runs at once; default: the config's `runner.workers`.
        graphs: Extra graphs by name, beside `route`, `plan_and_implement`, ...
        persistence: The database; default: the config's `persistence`.
        name: The worker's name in logs and task histories; default: host and pid.
        check_models: At start, ask every model's server whether it has the model.
        signal_handlers: Stop gracefully on SIGINT and SIGTERM (running tasks finish).
    """

    def __init__(
        self,
        *,
        config: ModelyardConfig | None = None,
        context: Context | None = None,
        concurrency: int | None = None,
        graphs: Mapping[str, GraphSource] | None = None,
        persistence: PersistenceSettings | str | None = None,
        name: str | None = None,
        check_models: bool = True,
        signal_handlers: bool = False,
    ) -> None:
        self.context = context or Context(config=config)
        self.config = self.context.models().config
        self.concurrency = concurrency or self.config.runner.workers
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {self.concurrency}")
        self.persistence = persistence_of(persistence, self.config)
        _require_postgres(self.persistence)
        self._sources: dict[str, GraphSource] = {**BUILDERS, **(graphs or {})}
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.check_models = check_models
        self.signal_handlers = signal_handlers
        self.queue: DistributedTaskQueue | None = None
        self._graphs: dict[str, CompiledStateGraph[Any, Any, Any, Any]] = {}

    async def run(self) -> None:
        """Work until stopped (cancelled, or a signal with `signal_handlers`).

        A stop lets running tasks finish first. Every few seconds this worker also puts
        back on the queue the jobs of workers that stopped sending heartbeats.

        Raises:
            PersistenceError: the database cannot be reached or set up.
        """
        settings = self.config.runner
        if self.check_models:
            for found in await check_configured_models(self.context.models()):
                if found.reachable is False:
                    log.warning("cannot check model %s: %s", found.model, found.detail)
        async with AsyncExitStack() as stack:
            size = min(self.concurrency, 32) + 2
            pool = await stack.enter_async_context(postgres_pool(self.persistence.url, size=size))
            app = await stack.enter_async_context(open_job_queue(self.persistence, pool))
            saver = await stack.enter_async_context(open_checkpointer(self.persistence, pool=pool))
            store = await stack.enter_async_context(open_store(self.persistence))
            self.queue = DistributedTaskQueue(pool)
            self._graphs = compile_graphs(self._sources, self.config, saver, store)
            stack.enter_context(frozen_heap(settings.freeze_heap))
            app.task(name=JOB_TASK, queue=JOB_QUEUE, pass_context=True)(self._run_job)
            recovery = asyncio.create_task(self._recover(app), name="modelyard-recovery")
            try:
                log.info("worker %s: taking tasks, %d at once", self.name, self.concurrency)
                await app.run_worker_async(
                    queues=[JOB_QUEUE],
                    name=self.name,
                    concurrency=self.concurrency,
                    install_signal_handlers=self.signal_handlers,
                    update_heartbeat_interval=settings.heartbeat_seconds,
                    stalled_worker_timeout=settings.stalled_after_seconds,
                    abort_job_polling_interval=settings.heartbeat_seconds,
                    delete_jobs="successful",
                )
            finally:
                recovery.cancel()
                await asyncio.gather(recovery, return_exceptions=True)

    async def _run_job(self, job_context: Any, task_id: str) -> str:
        """Run one task (the job's) to its end; return its final status.

        Every write is conditional on the stored task being unfinished, so a task a client
        cancelled (or another worker finished) is never brought back.
        """
        from procrastinate.job_context import AbortReason

        assert self.queue is not None
        task: Task | None = None
        try:
            found = await self.queue.get([task_id])
            if task_id not in found:
                log.warning("job for task %s, which is not in the database; skipped", task_id)
                return "unknown"
            entry = found[task_id]
            if entry.task.status in FINISHED or job_context.should_abort():
                return entry.task.status.value  # cancelled while waiting, or ended before
            resumed = entry.task.started_at is not None
            detail = "resumed from its last checkpoint" if resumed else "started"
            task = with_status(
                entry.task,
                TaskStatus.RUNNING,
                f"{detail} on {self.name}",
                data={"worker": self.name},
                started_at=entry.task.started_at or utcnow(),
            )
            if not await self.queue.save_unfinished(task):
                return "ended elsewhere"
            ended = await run_thread(
                self._graphs[entry.graph], task, resumed=resumed, context=self.context
            )
        except asyncio.CancelledError:
            if task is not None:
                if job_context.abort_reason() == AbortReason.USER_REQUEST:
                    stop = with_status(task, TaskStatus.CANCELLED, "cancelled while running")
                    stop = stop.model_copy(update=_ended())
                else:  # the worker is going down: another resumes it (see _recover)
                    stop = with_status(task, TaskStatus.PENDING, "interrupted; resumes later")
                await asyncio.shield(self.queue.save_unfinished(stop))
            raise
        except Exception as exc:  # a bug in a graph must not kill the worker or lose the task
            if task is None:
                raise  # the database failed before the task started: procrastinate logs it
            log.exception("task %s failed in graph %s", task_id, entry.graph)
            error = {"kind": "internal", "message": f"{type(exc).__name__}: {exc}"}
            ended = task.model_copy(update={"status": TaskStatus.FAILED, "error": error})
        status = ended.status if ended.status in FINISHED else TaskStatus.COMPLETED
        final = with_status(ended, status, status.value, was=task.status, **_ended(ended))
        await self.queue.save_unfinished(final)
        return status.value

    async def _recover(self, app: Any) -> None:
        """Every heartbeat, put back on the queue the tasks no live worker has.

        Two cases: a job whose worker stopped sending heartbeats (procrastinate's stalled
        jobs; it goes back to the queue with its priority), and an unfinished task with no
        job waiting or running (its worker was stopped mid-task, or its submitter died
        between saving it and queueing its job), which gets a new job.
        """
        settings = self.config.runner
        while True:
            await asyncio.sleep(settings.heartbeat_seconds)
            try:
                await self._recover_once(app, settings.stalled_after_seconds)
            except Exception:
                log.exception("worker %s: recovering stalled tasks failed; trying again", self.name)

    async def _recover_once(self, app: Any, stalled_after: float) -> None:
        """One sweep, by one worker at a time (the others skip it while one sweeps)."""
        assert self.queue is not None
        async with self.queue.pool.connection() as conn:
            taken = await conn.execute("SELECT pg_try_advisory_lock(%s) AS taken", (_RECOVERY,))
            row = await taken.fetchone()
            if not row or not row["taken"]:
                return
            try:
                await self._sweep(app, stalled_after)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_RECOVERY,))

    async def _sweep(self, app: Any, stalled_after: float) -> None:
        assert self.queue is not None
        manager = app.job_manager
        for job in await manager.get_stalled_jobs(
            queue=JOB_QUEUE, seconds_since_heartbeat=stalled_after
        ):
            task_id = job.task_kwargs.get("task_id")
            if job.abort_requested:  # cancelled while its worker was dying: end it so
                found = await self.queue.get([task_id])
                if task_id in found:
                    stop = with_status(found[task_id].task, TaskStatus.CANCELLED, "cancelled")
                    await self.queue.save_unfinished(stop.model_copy(update=_ended()))
            try:
                await manager.retry_job(job)  # an abort-requested job is failed instead
            except Exception as exc:  # ended meanwhile
                log.debug("stalled job %s not retried: %s", job.id, exc)
                continue
            if not job.abort_requested:
                log.warning(
                    "worker %s: task %s was left by a worker that stopped; back on the queue",
                    self.name,
                    task_id,
                )
        await manager.prune_stalled_workers(stalled_after)
        before = utc_text(datetime.now(UTC) - timedelta(seconds=stalled_after))
        orphans = await self.queue.orphans(before)
        if orphans:
            log.warning("worker %s: %d task(s) had no job; queued again", self.name, len(orphans))
            await _defer(app, orphans)


def _ended(task: Task | None = None) -> dict[str, Any]:
    return {"finished_at": (task.finished_at if task else None) or utcnow()}
