"""Throughput of the task runner against a bare `asyncio.Semaphore` loop on the same server.

Run: `python bench/throughput.py [--tasks 2000] [--workers 64] [--delays 0.5,0.05]`.

The local protocol server runs in a process of its own and answers every chat request
after the given delay. For each delay, five runs in this process call it with the same
ChatOllama client: the baseline (a bare `asyncio.Semaphore(workers)` loop); two bare LangGraph
graphs on an in-memory checkpointer, one node (the answer) and three (two that only write a
key, then the answer), driven by the same loop, to show what LangGraph itself costs; the
runner with an in-memory checkpointer; and the runner with the default SQLite file. Every
run has the heap frozen as the runner freezes it (`runner.freeze_heap`), and the bare graphs
write their checkpoints before each next step as the runner does (`durability="sync"`). Each run
prints tasks/s, CPU milliseconds per task (this process only; the server's CPU is not
counted) and peak memory above the start of the run. The last line is
`throughput_ratio_vs_baseline: X`, the SQLite runner's tasks/s over the baseline's at the
first delay (target: >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
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


async def run_delay(delay: float, count: int, workers: int, folder: Path) -> list[Result]:
    server, url = start_server(delay)
    try:
        context = Context(config=load_config_text(CONFIG.format(url=url)))
        registry = context.models()
        await baseline(registry, min(count, 2 * workers), workers)  # warm up client and server
        results = [await measure("baseline", count, lambda: baseline(registry, count, workers))]
        for nodes in (1, 3):
            results.append(
                await measure(
                    f"langgraph, {nodes} node{'s' * (nodes > 1)}",
                    count,
                    functools.partial(through_graph, registry, nodes, count, workers),
                )
            )
        results.append(
            await measure(
                "runner, memory",
                count,
                lambda: through_runner(context, "memory", count, workers),
            )
        )
        database = folder / f"bench-{delay}.db"
        results.append(
            await measure(
                "runner, sqlite",
                count,
                lambda: through_runner(context, str(database), count, workers),
            )
        )
        return results
    finally:
        server.terminate()
        server.wait()


def print_table(delay: float, workers: int, results: list[Result]) -> None:
    base = results[0]
    print(f"\nserver delay {delay * 1000:.0f} ms, {workers} workers, {base.tasks} tasks")
    print(f"{'run':<19}{'seconds':>9}{'tasks/s':>10}{'ratio':>8}{'CPU ms/task':>13}{'peak MB':>9}")
    for r in results:
        print(
            f"{r.name:<19}{r.seconds:>9.2f}{r.rate:>10.1f}{r.rate / base.rate:>8.3f}"
            f"{r.cpu_ms:>13.2f}{r.peak_mb:>9.1f}"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--delays", default="0.5,0.05", help="server delays in seconds")
    args = parser.parse_args()
    delays = [float(d) for d in args.delays.split(",")]
    first: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as folder:
        for delay in delays:
            results = await run_delay(delay, args.tasks, args.workers, Path(folder))
            print_table(delay, args.workers, results)
            first = first or results
    base, _, three_nodes, memory, sqlite = first
    print(f"\nlanggraph_3_nodes_ratio_vs_baseline: {three_nodes.rate / base.rate:.3f}")
    print(f"in_memory_ratio_vs_baseline: {memory.rate / base.rate:.3f}")
    print(f"throughput_ratio_vs_baseline: {sqlite.rate / base.rate:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
