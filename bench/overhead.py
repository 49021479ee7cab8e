"""Overhead of modelyard's routing: the route graph vs a bare LangGraph graph vs the model alone.

Run: `python bench/overhead.py [--iterations N]`. All three run in one process, interleaved,
on the same scripted chat model, so the machine's noise hits them alike. The last line is
`overhead_ratio_vs_bare_langgraph: X` (modelyard's median over the bare graph's).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from modelyard.configs import ModelRegistry, load_config
from modelyard.graphs import build_route_graph
from modelyard.nodes import Context
from modelyard.testing.scripted import ScriptedChatModel

PROMPT = "Write a Python function that validates email addresses"
REPLY = (
    "def is_valid_email(address: str) -> bool:\n"
    "    local, _, domain = address.partition('@')\n"
    "    return bool(local) and '.' in domain and not domain.startswith('.')\n"
)
SYSTEM = "You are an expert software engineer."


class BareState(TypedDict, total=False):
    prompt: str
    task_type: str
    result: str


def bare_graph(model: ScriptedChatModel) -> Any:
    """Return a plain LangGraph graph of the same shape (classify, answer), no modelyard."""

    async def classify(state: BareState) -> dict[str, Any]:
        return {"task_type": "code_generation" if "function" in state["prompt"] else "general"}

    async def answer(state: BareState) -> dict[str, Any]:
        reply = await model.ainvoke([SystemMessage(SYSTEM), HumanMessage(state["prompt"])])
        return {"result": reply.content}

    builder = StateGraph(BareState)
    builder.add_node("classify", classify)
    builder.add_node("answer", answer)
    builder.add_edge(START, "classify")
    builder.add_edge("classify", "answer")
    builder.add_edge("answer", END)
    return builder.compile()


async def measure(
    runs: dict[str, Callable[[], Awaitable[Any]]], iterations: int
) -> dict[str, list[float]]:
    """Run each callable `iterations` times, round-robin; return each one's times (ms)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(max(20, iterations // 10)):  # warm-up
        for run in runs.values():
            await run()
    for _ in range(iterations):
        for name, run in runs.items():
            started = time.perf_counter()
            await run()
            times[name].append((time.perf_counter() - started) * 1000)
    return times


async def main(iterations: int) -> float:
    model = ScriptedChatModel(replies=[REPLY])
    config = load_config("default")
    context = Context(registry=ModelRegistry(config, clients={"coder": model, "reasoner": model}))
    route = build_route_graph(config).compile()
    bare = bare_graph(model)
    messages = [SystemMessage(SYSTEM), HumanMessage(PROMPT)]

    async def routed() -> None:
        state = await route.ainvoke({"prompt": PROMPT}, context=context)
        assert state["result"] == REPLY and state["assigned_model"] == "coder"

    async def bare_run() -> None:
        state = await bare.ainvoke({"prompt": PROMPT})
        assert state["result"] == REPLY

    async def direct() -> None:
        reply = await model.ainvoke(messages)
        assert reply.content == REPLY

    times = await measure(
        {
            "modelyard route graph": routed,
            "bare LangGraph graph": bare_run,
            "model call alone": direct,
        },
        iterations,
    )
    model.calls.clear()
    baseline = statistics.median(times["bare LangGraph graph"])
    print(f"{'run':<24}{'median ms':>11}{'p90 ms':>9}{'vs bare graph':>15}")
    for name, samples in times.items():
        median = statistics.median(samples)
        p90 = statistics.quantiles(samples, n=10)[-1]
        print(f"{name:<24}{median:>11.3f}{p90:>9.3f}{median / baseline:>14.2f}x")
    ratio = statistics.median(times["modelyard route graph"]) / baseline
    print(f"iterations: {iterations} each, interleaved")
    print(f"overhead_ratio_vs_bare_langgraph: {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    asyncio.run(main(parser.parse_args().iterations))
