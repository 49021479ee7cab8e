"""Throughput of the task runner against a bare `asyncio.Semaphore` loop on the same server.

Run: `python bench/throughput.py [--tasks 2000] [--workers 64] [--delays 0.5,0.05] [--rounds 3]
[--runs baseline,memory,sqlite]`.

The local protocol server runs in a process of its own and answers every chat request
after the given delay. For each delay, five runs in this process call it with the same
ChatOllama client: the baseline (a bare `asyncio.Semaphore(workers)` loop); two bare LangGraph
graphs on an in-memory checkpointer, one node (the answer) and three (two that only write a
key, then the answer), driven by the same loop, to show what LangGraph itself costs; the
runner with an in-memory checkpointer; and the runner with the default SQLite file. Every
run has the heap frozen as the runner freezes it (`runner.freeze_heap`), and the bare graphs
write their checkpoints before each next step as the runner does (`durability="sync"`).

The runs are made `--rounds` times, in turn, forwards then backwards, each of all the
tasks: this machine's speed drifts by as much as two to one within minutes, so a run is
compared only with the baseline of its own round, a few minutes from it at most, and a
slow spell no longer hits only the runs after it. A row's ratio is the median of its
rounds' ratios; its seconds, tasks/s and CPU milliseconds per task (this process only; the
server's CPU is not counted) are over all its rounds together, its peak memory (above the
start of a run) the highest of its rounds'. `--runs` makes some of the runs only (by the
short names baseline, graph1, graph3, memory, sqlite; the baseline always). The last lines
give the ratios at the first delay; with the SQLite run made, the very last is
`throughput_ratio_vs_baseline: X`, the SQLite runner's (target: >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from local_server import start_server
from typing_extensions import TypedDict

from modelyard.configs import ModelRegistry, load_config_text
from modelyard.graphs.heap import frozen_heap
from modelyard.graphs.runner import TaskRunner
from modelyard.nodes import Context
from modelyard.state import Task, TaskStatus, TaskType

CONFIG = """\
models:
  - name: reasoner
    model: ollama:phi3:mini
    base_url: {url}
    roles: [planning, problem_solving, explanation, general]
    context_window: 4096
    system_prompt: You are a careful reasoning assistant.
  - name: coder
    model: ollama:deepseek-coder:6.7b-instruct
    base_url: {url}
    roles: [code_generation, code_review]
    context_window: 16384
    system_prompt: You are an expert software engineer.
"""
SYSTEM = "You are a careful reasoning assistant."


@dataclass
class Result:
    name: str
    seconds: float
    cpu_seconds: float
    peak_mb: float
    tasks: int

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu_seconds / self.tasks


def prompts(count: int) -> list[str]:
    return [f"Explain how a hash map handles collisions, case {n}" for n in range(count)]


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def measure(name: str, count: int, body: Callable[[], Awaitable[None]]) -> Result:
    start_rss = peak = rss_mb()

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_mb())
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    started, cpu = time.perf_counter(), time.process_time()
    await body()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    sampler.cancel()
    peak = max(peak, rss_mb())
    return Result(name, seconds, cpu_seconds, peak - start_rss, count)


async def baseline(registry: ModelRegistry, count: int, workers: int) -> None:
    """Call the server `count` times, `workers` at a time, with the registry's client."""
    gate = asyncio.Semaphore(workers)

    async def one(prompt: str) -> None:
        async with gate:
            client = registry.chat_model("reasoner")  # as the work node gets it (cached)
            await client.ainvoke([SystemMessage(SYSTEM), HumanMessage(prompt)])

    with frozen_heap():  # as the runner runs
        await asyncio.gather(*(one(p) for p in prompts(count)))


class BareState(TypedDict, total=False):
    prompt: str
    task_type: str
    model: str
    result: str


def bare_graph(registry: ModelRegistry, nodes: int) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Return a bare LangGraph graph of `nodes` (1 to 3) on a fresh in-memory checkpointer:
    up to two that only write a key (as classify and select would), then the answer."""

    async def classify(state: BareState) -> BareState:
        return {"task_type": "explanation"}

    async def select(state: BareState) -> BareState:
        return {"model": "reasoner"}

    async def answer(state: BareState) -> BareState:
        client = registry.chat_model("reasoner")
        reply = await client.ainvoke([SystemMessage(SYSTEM), HumanMessage(state["prompt"])])
        return {"result": str(reply.content)}

    steps = [*[("classify", classify), ("select", select)][: nodes - 1], ("answer", answer)]
    builder = StateGraph(BareState)
    previous = START
    for name, node in steps:
        builder.add_node(name, node)
        builder.add_edge(previous, name)
        previous = name
    builder.add_edge(previous, END)
    return builder.compile(checkpointer=InMemorySaver())


async def through_graph(registry: ModelRegistry, nodes: int, count: int, workers: int) -> None:
    """Run `count` prompts through a bare graph, `workers` at a time, one thread each."""
    graph = bare_graph(registry, nodes)
    gate = asyncio.Semaphore(workers)

    async def one(n: int, prompt: str) -> None:
        async with gate:
            config: RunnableConfig = {"configurable": {"thread_id": f"t{n}"}}
            await graph.ainvoke({"prompt": prompt}, config, durability="sync")

    with frozen_heap():
        await asyncio.gather(*(one(n, p) for n, p in enumerate(prompts(count))))


async def through_runner(context: Context, url: str, count: int, workers: int) -> None:
    """Submit `count` tasks to a runner on `url` and wait for all of them."""
    async with TaskRunner(context=context, workers=workers, persistence=url) as runner:
        tasks = [Task(prompt=p, task_type=TaskType.EXPLANATION) for p in prompts(count)]
        await runner.submit_many(tasks)
        await runner.join()
        counts = await runner.counts()
    if counts[TaskStatus.COMPLETED] != count:
        raise SystemExit(f"runner on {url}: only {counts} of {count} tasks completed")


@dataclass
class Row:
    """One run's rounds, and its ratio to the baseline of each round."""

    name: str
    rounds: list[Result]
    ratios: list[float]

    @property
    def total(self) -> Result:
        rounds = self.rounds
        return Result(
            self.name,
            sum(r.seconds for r in rounds),
            sum(r.cpu_seconds for r in rounds),
            max(r.peak_mb for r in rounds),
            sum(r.tasks for r in rounds),
        )

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)


#: The runs by their short names (`--runs`), in the order they are made.
RUNS = {
    "baseline": "baseline",
    "graph1": "langgraph, 1 node",
    "graph3": "langgraph, 3 nodes",
    "memory": "runner, memory",
    "sqlite": "runner, sqlite",
}


async def run_delay(
    delay: float, count: int, workers: int, rounds: int, folder: Path, chosen: set[str]
) -> list[Row]:
    """Make the `chosen` runs at `delay`, `rounds` times in turn; return them by run."""
    server, url = start_server(delay)
    try:
        context = Context(config=load_config_text(CONFIG.format(url=url)))
        registry = context.models()
        databases = (folder / f"bench-{delay}-{n}.db" for n in range(rounds))
        every: dict[str, Callable[[], Awaitable[None]]] = {
            "baseline": lambda: baseline(registry, count, workers),
            "langgraph, 1 node": lambda: through_graph(registry, 1, count, workers),
            "langgraph, 3 nodes": lambda: through_graph(registry, 3, count, workers),
            "runner, memory": lambda: through_runner(context, "memory", count, workers),
            "runner, sqlite": lambda: through_runner(context, str(next(databases)), count, workers),
        }
        runs = {name: run for name, run in every.items() if name in chosen}
        await baseline(registry, min(count, 2 * workers), workers)  # warm up client and server
        results: dict[str, list[Result]] = {name: [] for name in runs}
        for n in range(rounds):
            for name in list(runs) if n % 2 == 0 else list(runs)[::-1]:
                results[name].append(await measure(name, count, runs[name]))
        base = results["baseline"]
        return [
            Row(name, done, [r.rate / b.rate for r, b in zip(done, base, strict=True)])
            for name, done in results.items()
        ]
    finally:
        server.terminate()
        server.wait()


def print_table(delay: float, workers: int, rows: list[Row]) -> None:
    count, rounds = rows[0].rounds[0].tasks, len(rows[0].rounds)
    heading = f"server delay {delay * 1000:.0f} ms, {workers} workers, {count} tasks"
    print(f"\n{heading} a run, {rounds} round{'s' * (rounds > 1)}")
    print(
        f"{'run':<19}{'seconds':>9}{'tasks/s':>10}{'ratio':>8}{'CPU ms/task':>13}"
        f"{'peak MB':>9}  ratio by round"
    )
    for row in rows:
        r = row.total
        by_round = " ".join(f"{ratio:.3f}" for ratio in row.ratios)
        print(
            f"{r.name:<19}{r.seconds:>9.2f}{r.rate:>10.1f}{row.ratio:>8.3f}"
            f"{r.cpu_ms:>13.2f}{r.peak_mb:>9.1f}  {by_round}"
        )
    if rounds > 1:
        print("(seconds, tasks/s, CPU: all rounds together; ratio: their median; peak: highest)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--delays", default="0.5,0.05", help="server delays in seconds")
    parser.add_argument("--rounds", type=int, default=3, help="times each run is made")
    parser.add_argument("--runs", default=",".join(RUNS), help="the runs to make, by short name")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    names = {name.strip() for name in args.runs.split(",") if name.strip()}
    unknown = names - set(RUNS)
    if unknown:
        parser.error(f"unknown runs {', '.join(sorted(unknown))}; known: {', '.join(RUNS)}")
    chosen = {RUNS[name] for name in names} | {"baseline"}
    delays = [float(d) for d in args.delays.split(",")]
    first: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as folder:
        for delay in delays:
            rows = await run_delay(
                delay, args.tasks, args.workers, args.rounds, Path(folder), chosen
            )
            print_table(delay, args.workers, rows)
            first = first or rows
    ratios = {row.name: row.ratio for row in first}
    print()
    for name, label in (
        ("langgraph, 3 nodes", "langgraph_3_nodes_ratio_vs_baseline"),
        ("runner, memory", "in_memory_ratio_vs_baseline"),
        ("runner, sqlite", "throughput_ratio_vs_baseline"),
    ):
        if name in ratios:
            print(f"{label}: {ratios[name]:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
