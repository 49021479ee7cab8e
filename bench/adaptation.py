"""How fast modelyard moves traffic off a model that breaks, and back once it recovers.

Run: `python bench/adaptation.py [--tasks 600] [--protocol ollama|openai] [--concurrency 1]`.
Three models on the local protocol server take code-generation tasks one after another; the
best one answers HTTP 500 to every call from task 101 to task 300 (of 600). Calls are counted
from the server's log, by the phase in force when they arrived. The targets: every task
completed, and at most `allowed_fails + 1` failed calls on the broken model per cooldown (with
more than one task at a time, the calls already under way add to that). The last line is
`completed_share: X`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import openai  # noqa: F401  (modelyard imports it on the first failed call: about 0.5 s)
from langgraph.store.memory import InMemoryStore

from modelyard.configs import ModelRegistry, ModelyardConfig, load_config_text
from modelyard.graphs import build_route_graph
from modelyard.nodes import Context, StatsBook
from modelyard.state import ModelStats, TaskInput, TaskStatus
from modelyard.testing.server import Fault, LocalModelServer, RecordedRequest

ProtocolName = Literal["ollama", "openai"]

PROMPT = "Write a Python function that validates email addresses (task {index})"
#: Configured name -> (model id on the server, code_generation capability).
MODELS = {
    "best": ("best-coder:7b", 0.95),
    "second": ("second-coder:7b", 0.80),
    "third": ("third-coder:3b", 0.65),
}
BEST = "best"
ALLOWED_FAILS = 3
COOLDOWN_SECONDS = 0.3

CONFIG = """\
models:
{models}
retry: {{max_attempts: 3, initial_interval: 0.01, backoff_factor: 2.0, max_interval: 0.05,
        jitter: false}}
cooldown: {{allowed_fails: {allowed_fails}, cooldown_seconds: {cooldown}, max_wait_seconds: 5}}
persistence: {{url: memory}}
"""
MODEL_ENTRY = """\
  - name: {name}
    model: {provider}:{model_id}
    base_url: {url}
    roles: [code_generation]
    capabilities: {{code_generation: {capability}}}
    timeout: 5
    initial_stats: {{success_rate: 1.0, latency_ms: 50}}
"""


@dataclass(frozen=True)
class Phase:
    """A stretch of the run: tasks `first` to `last` (1-based); `best` fails in `broken`."""

    name: str
    first: int
    last: int


@dataclass(frozen=True)
class Outcome:
    """What became of one task."""

    index: int
    """1-based position in the run."""
    completed: bool
    model: str | None
    """The model that answered, if any."""
    finished_at: float
    """Epoch seconds (the server's clock) when the task ended."""


def bench_config(server: LocalModelServer, protocol: ProtocolName) -> ModelyardConfig:
    """Return a config of the three models, all served by `server` over `protocol`."""
    if protocol == "ollama":
        provider, url = "ollama", server.url
    else:
        provider, url = "openai_compatible", server.openai_url
    entries = "".join(
        MODEL_ENTRY.format(
            name=name, provider=provider, model_id=model_id, url=url, capability=capability
        )
        for name, (model_id, capability) in MODELS.items()
    )
    text = CONFIG.format(models=entries, allowed_fails=ALLOWED_FAILS, cooldown=COOLDOWN_SECONDS)
    return load_config_text(text, name="bench/adaptation.py")


async def run_tasks(
    server: LocalModelServer,
    config: ModelyardConfig,
    phases: Sequence[Phase],
    concurrency: int,
) -> tuple[list[Outcome], dict[str, float], InMemoryStore]:
    """Run every phase's tasks in order, breaking `best` in the `broken` phase.

    Returns the outcomes in task order, when each phase began (epoch seconds) and the store.
    """
    store = InMemoryStore()
    graph = build_route_graph(config).compile(store=store)
    context = Context(registry=ModelRegistry(config))
    gate = asyncio.Semaphore(concurrency)
    began: dict[str, float] = {}

    async def one(index: int) -> Outcome:
        task: TaskInput = {"prompt": PROMPT.format(index=index), "task_type": "code_generation"}
        try:
            state: dict[str, Any] = await graph.ainvoke(task, context=context)
        except Exception as exc:  # a task that raises counts as not completed
            print(f"task {index} raised {type(exc).__name__}: {exc}")
            return Outcome(index, False, None, time.time())
        finally:
            gate.release()
        completed = state.get("status") is TaskStatus.COMPLETED
        return Outcome(index, completed, state.get("assigned_model"), time.time())

    running: list[asyncio.Task[Outcome]] = []
    for phase in phases:
        for index in range(phase.first, phase.last + 1):
            await gate.acquire()
            if index == phase.first:
                switch_phase(server, phase)
                began[phase.name] = time.time()
            running.append(asyncio.create_task(one(index)))
    return list(await asyncio.gather(*running)), began, store


def switch_phase(server: LocalModelServer, phase: Phase) -> None:
    """Make `best` fail every call in the broken phase, and answer again otherwise."""
    server.clear_faults()
    if phase.name == "broken":
        server.inject_fault(Fault.status_code(500), model=MODELS[BEST][0], times=None)


def phase_of(at: float, began: dict[str, float]) -> str:
    """Return the phase in force at epoch second `at`."""
    current = next(iter(began))
    for name, start in began.items():
        if at >= start:
            current = name
    return current


def failed_before_moving(
    outcomes: Sequence[Outcome], failures: Sequence[float], broken: Phase, broke_at: float
) -> int:
    """Return the failed calls on `best` after the break, up to the end of the first task
    of the broken phase that another model answered."""
    moved = next(
        (o for o in outcomes if o.index >= broken.first and o.model not in (None, BEST)), None
    )
    end = moved.finished_at if moved else float("inf")
    return sum(1 for at in failures if broke_at <= at <= end)


def most_in_window(times: Sequence[float], window: float) -> int:
    """Return the most of `times` that fall in any half-open span of `window` seconds."""
    ordered, most, start = sorted(times), 0, 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most


def tasks_until_back(outcomes: Sequence[Outcome], after: Phase) -> int | None:
    """Return how many tasks of the `after` phase ran until `best` answered one (itself too)."""
    back = next((o for o in outcomes if o.index >= after.first and o.model == BEST), None)
    return None if back is None else back.index - after.first + 1


def chat_calls(server: LocalModelServer) -> list[tuple[str, RecordedRequest]]:
    """Return every chat request the server logged, with the configured name of its model."""
    return [
        (name, request)
        for name, (model_id, _) in MODELS.items()
        for request in server.requests_for(model_id)
    ]


def print_phases(
    outcomes: Sequence[Outcome],
    calls: Sequence[tuple[str, RecordedRequest]],
    began: dict[str, float],
    phases: Sequence[Phase],
) -> None:
    """Print one row per phase: tasks, completed, calls to each model, failed calls on best."""
    names = list(MODELS)
    header = f"{'phase':<8}{'tasks':>10}{'completed':>11}"
    header += "".join(f"{'calls ' + n:>13}" for n in names) + f"{'failed on ' + BEST:>16}"
    print(header)
    for phase in phases:
        done = sum(o.completed for o in outcomes if phase.first <= o.index <= phase.last)
        mine = [(n, r) for n, r in calls if phase_of(r.received_at, began) == phase.name]
        counts = "".join(f"{sum(m == n for m, _ in mine):>13}" for n in names)
        failed = sum(1 for n, r in mine if n == BEST and r.fault)
        span = f"{phase.first}-{phase.last}"
        print(f"{phase.name:<8}{span:>10}{done:>11}{counts}{failed:>16}")


def report(
    server: LocalModelServer,
    outcomes: Sequence[Outcome],
    began: dict[str, float],
    phases: Sequence[Phase],
    stats: dict[str, ModelStats],
) -> float:
    """Print the table and the figures; return the share of tasks completed."""
    calls = chat_calls(server)
    failures = [r.received_at for n, r in calls if n == BEST and r.fault]
    print_phases(outcomes, calls, began, phases)
    broken, after = phases[1], phases[2]
    moved = failed_before_moving(outcomes, failures, broken, began[broken.name])
    most = most_in_window(failures, COOLDOWN_SECONDS)
    back = tasks_until_back(outcomes, after)
    completed = sum(o.completed for o in outcomes)
    share = completed / len(outcomes)
    print()
    print(f"failed calls on {BEST} before traffic moved away: {moved}")
    target = ALLOWED_FAILS + 1
    print(
        f"most failed calls on {BEST} in one cooldown ({COOLDOWN_SECONDS:g} s): {most}"
        f"  (target <= allowed_fails + 1 = {target}: {'met' if most <= target else 'NOT met'})"
    )
    print(
        f"tasks completed: {completed}/{len(outcomes)}"
        f"  (target 1.0: {'met' if share == 1.0 else 'NOT met'})"
    )
    after_text = "never" if back is None else f"{back} (task {after.first + back - 1})"
    print(f"tasks after recovery until {BEST} answered again: {after_text}")
    best = stats[BEST]
    print(
        f"{BEST} stats: {best.calls} calls, {best.failures} failed, "
        f"success rate {best.success_rate:.2f}"
    )
    print(f"completed_share: {share}")
    return share


async def main(tasks: int, protocol: ProtocolName, concurrency: int) -> float:
    broken_from, broken_to = tasks // 6 + 1, tasks // 2
    phases = [
        Phase("before", 1, broken_from - 1),
        Phase("broken", broken_from, broken_to),
        Phase("after", broken_to + 1, tasks),
    ]
    with LocalModelServer([model_id for model_id, _ in MODELS.values()]) as server:
        config = bench_config(server, protocol)
        started = time.perf_counter()
        outcomes, began, store = await run_tasks(server, config, phases, concurrency)
        wall = time.perf_counter() - started
        stats = await StatsBook(store, config).snapshot()
        print(
            f"{tasks} tasks, {protocol} protocol, concurrency {concurrency}, "
            f"allowed_fails {ALLOWED_FAILS}, cooldown {COOLDOWN_SECONDS:g} s, "
            f"wall {wall:.1f} s"
        )
        return report(server, outcomes, began, phases, stats)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=600, help="tasks; best breaks for 1/3")
    parser.add_argument("--protocol", choices=["ollama", "openai"], default="ollama")
    parser.add_argument("--concurrency", type=int, default=1, help="tasks running at once")
    args = parser.parse_args()
    asyncio.run(main(args.tasks, args.protocol, args.concurrency))
