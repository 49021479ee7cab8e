"""Turns of the event loop one task takes: a model call, bare LangGraph graphs, the route graph,
the task runner.

Run: `python bench/turns.py`.

Under load every turn of the event loop a task waits for costs it the time the loop takes to
run everything else that is ready, so the turns on a task's way are much of what it waits
for beyond the model. They are counts, not times: this machine's drift does not touch them.
Each run is one task at a time on a scripted model, in memory unless it says SQLite, with
`durability="sync"` as the runner has it; the third of three tasks is counted, after the
first two set up clients, tables and caches. The last line is `runner_turns_in_memory: N`.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore
from throughput import SYSTEM, bare_graph

from modelyard.configs import ModelRegistry, load_config
from modelyard.configs.persistence import open_checkpointer, open_store
from modelyard.configs.schema import PersistenceSettings
from modelyard.graphs import build_route_graph
from modelyard.graphs.runner import TaskRunner
from modelyard.nodes import Context
from modelyard.state import Task, TaskType
from modelyard.state.serde import checkpoint_serializer
from modelyard.testing.scripted import ScriptedChatModel

PROMPT = "Explain how a hash map handles collisions"


class CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts its turns (asyncio's `_run_once`: one pass over what is ready)."""

    turns = 0

    def _run_once(self) -> None:
        self.turns += 1
        super()._run_once()  # type: ignore[misc]


async def count_turns(run: Callable[[int], Awaitable[Any]]) -> int:
    """Return the turns the third of three runs of `run(n)` took."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, CountingLoop)
    for n in range(3):
        started = loop.turns
        await run(n)
    return loop.turns - started


async def main() -> dict[str, int]:
    model = ScriptedChatModel(replies=["Chaining, or open addressing."])
    config = load_config("default")
    context = Context(registry=ModelRegistry(config, clients={"coder": model, "reasoner": model}))
    messages = [SystemMessage(SYSTEM), HumanMessage(PROMPT)]
    task_input = {"prompt": PROMPT, "task_type": "explanation"}
    counts: dict[str, int] = {}

    def threaded(graph: Any, payload: dict[str, Any]) -> Callable[[int], Awaitable[Any]]:
        """Return a run of `graph` on `payload`, a thread of its own each time."""

        def run(n: int) -> Awaitable[Any]:
            config = {"configurable": {"thread_id": f"t{n}"}}
            return graph.ainvoke(  # type: ignore[no-any-return]
                payload, config, context=context, durability="sync"
            )

        return run

    counts["model call alone"] = await count_turns(lambda _: model.ainvoke(messages))
    for nodes in (1, 3):
        name = f"langgraph, {nodes} node{'s' * (nodes > 1)}"
        bare = bare_graph(context.models(), nodes)
        counts[name] = await count_turns(threaded(bare, {"prompt": PROMPT}))
    for name, post in (("route graph", True), ("route graph, no post-completion", False)):
        graph = build_route_graph(config, post_completions=post).compile(
            checkpointer=InMemorySaver(serde=checkpoint_serializer()), store=InMemoryStore()
        )
        counts[name] = await count_turns(threaded(graph, task_input))
    with tempfile.TemporaryDirectory(prefix="modelyard-turns-") as folder:
        settings = PersistenceSettings(url=str(Path(folder) / "route.db"))
        async with open_checkpointer(settings) as saver, open_store(settings) as store:
            graph = build_route_graph(config).compile(checkpointer=saver, store=store)
            counts["route graph, sqlite"] = await count_turns(threaded(graph, task_input))
        for name, url in (("runner, memory", "memory"), ("runner, sqlite", f"{folder}/q.db")):
            async with TaskRunner(
                context=context, workers=1, persistence=url, check_models=False
            ) as runner:

                async def one(_: int) -> None:
                    await runner.submit(Task(prompt=PROMPT, task_type=TaskType.EXPLANATION))
                    await runner.join()  # its callbacks too: wait() returns before them

                counts[name] = await count_turns(one)
    return counts


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=CountingLoop) as runner:
        counts = runner.run(main())
    print(f"{'run':<34}{'turns':>6}")
    for name, turns in counts.items():
        print(f"{name:<34}{turns:>6}")
    print(f"\nrunner_turns_in_memory: {counts['runner, memory']}")
