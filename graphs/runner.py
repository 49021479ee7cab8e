"""The task runner: a priority queue feeding async workers, each task a durable LangGraph thread.

```python
async with TaskRunner(config=load_config("default")) as runner:
    task = await runner.submit("Write a binary search in Rust", priority=Priority.HIGH)
    done = await runner.wait(task.id)
```

Tasks, their statuses and the checkpoints of their threads (thread id = task id) live in the
database the config's `persistence.url` names; a runner started after a crash resumes every
unfinished task from its last checkpoint, so steps that completed are not run again.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, Self

from langchain_core.runnables import RunnableConfig
from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph

from modelyard.configs import ModelConfig, ModelyardConfig
from modelyard.configs.persistence import open_checkpointer, open_store, postgres_pool
from modelyard.configs.schema import PersistenceSettings
from modelyard.configs.server_models import check_configured_models
from modelyard.graphs.heap import frozen_heap
from modelyard.graphs.lock import hold_runner_lock
from modelyard.graphs.queue import FINISHED, QueuedTask, TaskQueue, open_task_queue
from modelyard.graphs.run import BUILDERS, recursion_limit
from modelyard.nodes import Context
from modelyard.state import ModelyardError, Task, TaskEvent, TaskStatus
from modelyard.state.task import utcnow

log = logging.getLogger("modelyard.runner")

#: Called once when a task ends (completed, failed or cancelled); may be async.
TaskCallback = Callable[[Task], Awaitable[Any] | Any]
#: A graph the runner can run: an uncompiled StateGraph over TaskState, or a builder of one.
AnyGraph = StateGraph[Any, Any, Any, Any]
GraphSource = AnyGraph | Callable[[ModelyardConfig], AnyGraph]


class RunnerClosedError(ModelyardError):
    """The runner is not running: not started yet, or shut down."""


def check_graph(graph: str, known: Iterable[str]) -> str:
    """Return `graph` if it is among the `known` graph names; else raise ValueError naming them."""
    names = list(known)
    if graph not in names:
        raise ValueError(f"unknown graph {graph!r}; known graphs: {', '.join(names)}")
    return graph


def persistence_of(
    given: PersistenceSettings | str | None, config: ModelyardConfig
) -> PersistenceSettings:
    """Return the settings a runner was given (a URL, or settings), else the config's."""
    if isinstance(given, str):
        return PersistenceSettings(url=given)
    return given or config.persistence


def compile_graphs(
    sources: Mapping[str, GraphSource],
    config: ModelyardConfig,
    checkpointer: Any,
    store: Any,
) -> dict[str, CompiledStateGraph[Any, Any, Any, Any]]:
    """Compile each graph (a StateGraph, or a builder taking the config) on the checkpointer."""
    compiled = {}
    for name, source in sources.items():
        builder = source if isinstance(source, StateGraph) else source(config)
        compiled[name] = builder.compile(checkpointer=checkpointer, store=store, name=name)
    return compiled


class Runner(ABC):
    """The interface of every task runner: `TaskRunner` in this process, `DistributedRunner`
    on worker processes; code written against one runs on the other."""

    #: Called (synchronously) after every status change the runner sees.
    on_change: Callable[[Task], None] | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown(drain=exc_info[0] is None)

    @abstractmethod
    async def start(self) -> Self:
        """Open the database and start taking tasks."""

    async def submit(
        self,
        task: Task | str,
        *,
        graph: str | None = None,
        callback: TaskCallback | None = None,
        **fields: Any,
    ) -> Task:
        """Put a task on the queue and return it as stored (status pending).

        Args:
            task: The task, or its prompt (then `fields` fill in the rest: `priority`,
                `task_type`, `model`, ...).
            graph: The graph to run it through; default: the runner's.
            callback: Called once with the finished task; sync or async. One that raises
                is logged and does not stop the runner.

        Raises:
            RunnerClosedError: the runner is not running.
            ValueError: a task with this id was submitted before, or the graph is unknown.
        """
        task = Task(prompt=task, **fields) if isinstance(task, str) else task
        added = await self.submit_many([task], graph=graph, callback=callback)
        if not added:
            raise ValueError(f"task {task.id} was submitted before; get it with get({task.id!r})")
        return added[0]

    @abstractmethod
    async def submit_many(
        self,
        tasks: Iterable[Task],
        *,
        graph: str | None = None,
        callback: TaskCallback | None = None,
    ) -> list[Task]:
        """Put many tasks on the queue; return those added (ids already known are skipped)."""

    @abstractmethod
    async def cancel(self, task_id: str) -> bool:
        """Cancel a pending or running task; return False when it had already ended."""

    @abstractmethod
    async def get(self, task_id: str) -> Task | None:
        """Return a task as it stands now."""

    async def list_tasks(self, status: TaskStatus | None = None) -> list[Task]:
        """Return the tasks with `status` (all when None), oldest first."""
        return await self._running_queue().list_tasks(status)

    async def counts(self) -> dict[TaskStatus, int]:
        """Return how many tasks the database holds in each status."""
        return await self._running_queue().counts()

    @abstractmethod
    def _running_queue(self) -> TaskQueue:
        """Return the queue; raise RunnerClosedError when the runner is not running."""

    def _notify(self, task: Task) -> None:
        if self.on_change is not None:
            try:
                self.on_change(task)
            except Exception:
                log.exception("on_change raised for task %s", task.id)

    @abstractmethod
    async def wait(self, task_id: str, timeout: float | None = None) -> Task:
        """Wait for a task to end and return it (KeyError: no such task)."""

    @abstractmethod
    async def join(self, timeout: float | None = None) -> bool:
        """Wait until no task is pending or running; return False on timeout."""

    @abstractmethod
    async def shutdown(self, *, drain: bool = True, timeout: float | None = None) -> list[Task]:
        """Stop, draining first unless told not to; return the tasks left unfinished."""


@dataclass(eq=False)
class _Live:
    """A task this runner has not finished yet, and what waits for it."""

    task: Task
    graph: str
    callback: TaskCallback | None = None
    run: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


class TaskRunner(Runner):
    """Run tasks from a durable priority queue on N async workers.

    Higher priority runs first, then older tasks. Every status change (pending, running,
    completed, failed, cancelled) is saved and recorded in the task's history.

    Args:
        config: The models and settings; default: the context's, else the packaged default.
        context: The graphs' run-time context (registry of model clients); built from
            `config` when absent.
        workers: Tasks run at once; default: the config's `runner.workers`.
        graph: The graph a task runs when `submit` names none.
        graphs: Extra graphs by name (uncompiled StateGraphs over TaskState, or builders
            taking the config), beside `route` and `plan_and_implement`.
        persistence: Where tasks and checkpoints live; default: the config's `persistence`
            (a SQLite file under `.modelyard/`, `memory`, or a `postgresql://` URL).
        on_finish: Called once for every task that ends, after its own callback.
        on_change: Called (synchronously) after every status change, e.g. for a progress bar.
        check_models: At start, ask every model's server whether it has the model (Ollama
            `/api/tags`, OpenAI-compatible `/v1/models`).
    """

    def __init__(
        self,
        *,
        config: ModelyardConfig | None = None,
        context: Context | None = None,
        workers: int | None = None,
        graph: str = "route",
        graphs: Mapping[str, GraphSource] | None = None,
        persistence: PersistenceSettings | str | None = None,
        on_finish: TaskCallback | None = None,
        on_change: Callable[[Task], None] | None = None,
        check_models: bool = True,
    ) -> None:
        self.context = context or Context(config=config)
        self.config = self.context.models().config
        self.workers = workers if workers is not None else self.config.runner.workers
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, not {self.workers}")
        self.persistence = persistence_of(persistence, self.config)
        self._sources: dict[str, GraphSource] = {**BUILDERS, **(graphs or {})}
        self.default_graph = check_graph(graph, self._sources)
        self.on_finish = on_finish
        self.on_change = on_change
        self.check_models = check_models
        self.queue: TaskQueue | None = None
        self._graphs: dict[str, CompiledStateGraph[Any, Any, Any, Any]] = {}
        self._live: dict[str, _Live] = {}
        self._ready: asyncio.PriorityQueue[tuple[tuple[int, str, int], str]] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._stack: AsyncExitStack | None = None
        self._state: Literal["new", "running", "closed"] = "new"

    async def start(self) -> Self:
        """Open the database, resume every unfinished task, and start the workers.

        Raises:
            ModelNotOnServerError: a configured model is not on its server and cannot be
                pulled; names the server and the models it has.
            PersistenceError: the database cannot be used, or another runner holds it.
            RunnerClosedError: the runner was already started.
        """
        if self._state != "new":
            raise RunnerClosedError("this runner was already started; make a new TaskRunner")
        if self.check_models:
            for found in await check_configured_models(self.context.models()):
                if found.reachable is False:
                    log.warning("cannot check model %s: %s", found.model, found.detail)
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(hold_runner_lock(self.persistence))
            pool = None
            if self.persistence.backend == "postgres":
                pool = await stack.enter_async_context(
                    postgres_pool(self.persistence.url, size=min(self.workers, 16) + 2)
                )
            self.queue = await stack.enter_async_context(
                open_task_queue(self.persistence, pool=pool)
            )
            saver = await stack.enter_async_context(open_checkpointer(self.persistence, pool=pool))
            store = await stack.enter_async_context(open_store(self.persistence))
            self._graphs = compile_graphs(self._sources, self.config, saver, store)
            stack.enter_context(frozen_heap(self.config.runner.freeze_heap))
            self._ready = asyncio.PriorityQueue()
            for entry in await self.queue.unfinished():
                self._enqueue(entry, callback=None)
            self._stack = stack.pop_all()
        self._state = "running"
        self._update_idle()
        self._workers = [
            asyncio.create_task(self._work(), name=f"modelyard-worker-{n}")
            for n in range(self.workers)
        ]
        if self._live:
            log.info("resuming %d unfinished task(s)", len(self._live))
        return self

    async def submit_many(
        self,
        tasks: Iterable[Task],
        *,
        graph: str | None = None,
        callback: TaskCallback | None = None,
    ) -> list[Task]:
        """Put many tasks on the queue in one write; return those added.

        Tasks whose id the database already holds are skipped (not run again), so a batch
        submitted twice runs once.
        """
        queue = self._running_queue()
        graph = check_graph(graph or self.default_graph, self._graphs)
        entries = []
        for task in tasks:
            event = TaskEvent(kind="status", detail="submitted", data={"to": "pending"})
            pending = {"status": TaskStatus.PENDING, "history": [*task.history, event]}
            entries.append(QueuedTask(task.model_copy(update=pending), graph))
        added = await queue.add(entries)
        for entry in added:
            self._enqueue(entry, callback)
            self._notify(entry.task)
        self._update_idle()
        return [entry.task for entry in added]

    async def cancel(self, task_id: str) -> bool:
        """Cancel a pending or running task; return False when it had already ended."""
        self._running_queue()  # raises when the runner is not running
        live = self._live.get(task_id)
        if live is None or live.done.is_set():  # ended (its callbacks may still run)
            return False
        live.cancel_requested = True
        if live.run is not None:
            live.run.cancel()
            await asyncio.wait([live.run])
        else:  # queued: pending, or running when a crashed runner left it so
            await self._finish(live, live.task, "cancelled before it started")
        return True

    def update_model_config(self, name: str, /, **changes: Any) -> ModelConfig:
        """Change model `name`'s config for every task, from its next model call on.

        Tasks already running see the change at their next model call and selection;
        queued tasks run with it. Works whether the runner is running or not.

        Args:
            name: A configured model's name.
            **changes: What to change (see `ModelRegistry.update_model`), e.g.
                `temperature=0.1`, `timeout=30`, `weights={"code_generation": 0.9}`.

        Returns:
            The model's new config.

        Raises:
            ConfigError: every problem with the change; nothing was changed.
        """
        model = self.context.update_model_config(name, **changes)
        self.config = self.context.models().config
        return model

    async def get(self, task_id: str) -> Task | None:
        """Return a task as it stands now, from this runner or from the database."""
        live = self._live.get(task_id)
        if live is not None:
            return live.task
        found = await self._running_queue().get([task_id])
        return found[task_id].task if task_id in found else None

    async def wait(self, task_id: str, timeout: float | None = None) -> Task:
        """Wait for a task to end and return it.

        Raises:
            KeyError: no such task.
            TimeoutError: it did not end within `timeout` seconds.
        """
        live = self._live.get(task_id)
        if live is not None:
            async with asyncio.timeout(timeout):
                await live.done.wait()
            return live.task
        task = await self.get(task_id)
        if task is None:
            raise KeyError(f"no task {task_id!r} in this runner's database")
        return task

    async def join(self, timeout: float | None = None) -> bool:
        """Wait until no task is pending or running; return False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def shutdown(self, *, drain: bool = True, timeout: float | None = None) -> list[Task]:
        """Stop the runner and close its database; return the tasks left unfinished.

        Args:
            drain: Finish every queued task first (up to `timeout`); else stop at once.
            timeout: Seconds to drain for; None waits for all.

        Tasks still pending, and running tasks that were interrupted, stay in the database
        as pending: the next runner on the same database resumes them from their last
        checkpoint (with persistence `memory` they are gone with the process).
        """
        if self._state != "running":
            return []
        self._state = "closed"
        if drain:
            await self.join(timeout)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        left = [live.task for live in self._live.values()]
        if self._stack is not None:
            await self._stack.aclose()
        if left:
            log.info("%d unfinished task(s) resume when a runner starts again", len(left))
        return left

    def _running_queue(self) -> TaskQueue:
        if self._state != "running" or self.queue is None:
            raise RunnerClosedError(
                "the task runner is not running: use `async with TaskRunner(...) as runner:` "
                "or `await runner.start()` first"
                if self._state == "new"
                else "the task runner was shut down; start a new TaskRunner on the same database"
            )
        return self.queue

    def _enqueue(self, entry: QueuedTask, callback: TaskCallback | None) -> None:
        assert self._ready is not None
        self._live[entry.task.id] = _Live(entry.task, entry.graph, callback)
        self._ready.put_nowait((entry.order, entry.task.id))

    def _update_idle(self) -> None:
        if self._live:
            self._idle.clear()
        else:
            self._idle.set()

    async def _work(self) -> None:
        assert self._ready is not None
        while True:
            _, task_id = await self._ready.get()
            live = self._live.get(task_id)
            if live is None or live.cancel_requested:
                continue
            live.run = asyncio.create_task(self._run(live), name=f"modelyard-task-{task_id}")
            try:
                await asyncio.wait([live.run])
            except asyncio.CancelledError:  # shutdown: interrupt the task, keep it resumable
                live.run.cancel()
                await asyncio.wait([live.run])
                raise

    async def _run(self, live: _Live) -> None:
        assert self.queue is not None
        resumed = live.task.started_at is not None
        try:
            detail = "resumed from its last checkpoint" if resumed else "started"
            started_at = live.task.started_at or utcnow()
            await self._change(live, TaskStatus.RUNNING, detail, started_at=started_at)
            finished = await run_thread(
                self._graphs[live.graph], live.task, resumed=resumed, context=self.context
            )
        except asyncio.CancelledError:
            if live.cancel_requested:
                await self._finish(live, live.task, "cancelled while running")
                return
            await self._change(live, TaskStatus.PENDING, "interrupted by shutdown; resumes later")
            raise
        except Exception as exc:  # a bug in a graph must not kill the worker or lose the task
            log.exception("task %s failed in graph %s", live.task.id, live.graph)
            error = {"kind": "internal", "message": f"{type(exc).__name__}: {exc}"}
            finished = live.task.model_copy(update={"status": TaskStatus.FAILED, "error": error})
        await self._finish(live, finished, None)

    async def _change(
        self,
        live: _Live,
        status: TaskStatus,
        detail: str,
        *,
        base: Task | None = None,
        **fields: Any,
    ) -> None:
        """Move a task to `status`, record the change in its history, and save it."""
        base = base or live.task
        live.task = with_status(base, status, detail, was=live.task.status, **fields)
        assert self.queue is not None
        saving = self.queue.save(live.task)
        try:
            await asyncio.shield(saving)
        except asyncio.CancelledError:  # the save goes on: say if it fails, nobody else will
            saving.add_done_callback(partial(_report_failed_save, live.task))
            raise
        self._notify(live.task)

    async def _finish(self, live: _Live, task: Task, detail: str | None) -> None:
        """End a task: save its final status, wake whoever waits, call its callbacks."""
        status = TaskStatus.CANCELLED if live.cancel_requested else task.status
        if status not in FINISHED:
            status = TaskStatus.COMPLETED  # a graph of the user's that sets no status
        finished_at = task.finished_at or utcnow()
        await self._change(live, status, detail or status.value, base=task, finished_at=finished_at)
        live.done.set()  # whoever waits for this task (a callback may) sees it ended
        try:
            for callback in (live.callback, self.on_finish):
                if callback is not None:
                    await call_back(callback, live.task)
        finally:
            # Only now is the task off the runner: join() and a draining shutdown wait
            # for its callbacks too.
            del self._live[task.id]
            self._update_idle()


async def run_thread(
    compiled: CompiledStateGraph[Any, Any, Any, Any],
    task: Task,
    *,
    resumed: bool,
    context: Context,
) -> Task:
    """Run a task's thread (thread id = task id) to its end; return the task updated from it.

    Args:
        compiled: The task's graph, compiled with the checkpointer that holds its thread.
        task: The task as it stands, status running.
        resumed: It ran before (a crash or shutdown cut it off): continue its thread from
            the last checkpoint, so steps that completed are not run again.
        context: The graphs' run-time context.
    """
    settings = context.models().config
    config: RunnableConfig = {
        "configurable": {"thread_id": task.id},
        "recursion_limit": recursion_limit(task, settings),
    }
    payload, done = await resume_point(compiled, config, task, resumed=resumed)
    if done is None:
        done = await compiled.ainvoke(
            payload, config, context=context, durability=settings.runner.durability
        )
    return _finished(task, done)


async def resume_point(
    compiled: CompiledStateGraph[Any, Any, Any, Any],
    config: RunnableConfig,
    task: Task,
    *,
    resumed: bool | None = None,
) -> tuple[Any, dict[str, Any] | None]:
    """Return (input, None) to run a task, or (None, state) when its graph had ended.

    The input is the task's own when it never started (`resumed` False; by default, when
    it has no `started_at`), or when no step of it was checkpointed; None (resume from the
    last checkpoint) otherwise.
    """
    if not (task.started_at is not None if resumed is None else resumed):
        return task.to_input(), None
    snapshot = await compiled.aget_state(config)
    step = (snapshot.metadata or {}).get("step", -1)
    if step < 0:
        # No checkpoint, or only the input's: resuming that runs nothing; start again.
        return task.to_input(), None
    # `next` leaves out the nodes whose writes were saved before the crash, but the graph
    # has not ended while any task is left: resuming applies those writes and goes on.
    # Only a checkpoint with no tasks at all is the graph's end.
    if snapshot.next or snapshot.tasks:
        return None, None  # continue from the last checkpoint
    return None, dict(snapshot.values)  # ended before its status was saved


def _finished(task: Task, state: dict[str, Any]) -> Task:
    """Return the task updated from its graph's final state, runner events kept in order."""
    ended = task.with_state(state)
    runner_events = [event for event in task.history if event.kind == "status"]
    history = sorted([*runner_events, *ended.history], key=lambda event: event.at)
    return ended.model_copy(update={"history": history})


def with_status(
    task: Task,
    status: TaskStatus,
    detail: str,
    *,
    was: TaskStatus | None = None,
    data: dict[str, Any] | None = None,
    **fields: Any,
) -> Task:
    """Return the task moved to `status`, the change recorded in its history.

    Args:
        task: The task.
        status: Its new status.
        detail: What happened, for the history (`started`, `cancelled while running`, ...).
        was: The status it changes from; default: the task's.
        data: More to record in the event (e.g. the worker that ran it).
        **fields: Other fields to set (`started_at`, `finished_at`, ...).
    """
    changed = {"from": (was or task.status).value, "to": status.value, **(data or {})}
    event = TaskEvent(kind="status", detail=detail, data=changed)
    return task.model_copy(update={"status": status, "history": [*task.history, event], **fields})


def _report_failed_save(task: Task, saving: asyncio.Future[None]) -> None:
    """Log the failure of a status save whose caller was cancelled while it waited."""
    if not saving.cancelled() and (error := saving.exception()) is not None:
        log.error(
            "saving task %s as %s failed: %s", task.id, task.status.value, error, exc_info=error
        )


async def call_back(callback: TaskCallback, task: Task) -> None:
    """Call a task's callback (sync or async); log, and swallow, what it raises."""
    try:
        result = callback(task)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("the callback for task %s raised; the runner goes on", task.id)
