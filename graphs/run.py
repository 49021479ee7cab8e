"""Run one task through a graph and get a Task back, from async code or from a script."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from langgraph.store.base import BaseStore

from modelyard.configs import ModelyardConfig
from modelyard.configs.persistence import open_store
from modelyard.graphs.plan_and_implement import build_plan_and_implement_graph
from modelyard.graphs.route import build_route_graph
from modelyard.nodes import Context
from modelyard.state import Task

GraphName = Literal["route", "plan_and_implement"]
BUILDERS = {"route": build_route_graph, "plan_and_implement": build_plan_and_implement_graph}


async def arun_task(
    task: Task | str,
    *,
    graph: GraphName = "route",
    context: Context | None = None,
    config: ModelyardConfig | None = None,
    store: BaseStore | None = None,
) -> Task:
    """Run a task (or a prompt) through a graph and return the finished Task.

    Args:
        task: The task, or just its prompt.
        graph: `route` or `plan_and_implement`.
        context: The run's context; default: built from `config`, else the default config.
        config: A config object to run with, when no context is given.
        store: Where the models' stats live; default: the store the config's
            `persistence.url` names (opened and closed for this task).
    """
    task = Task(prompt=task) if isinstance(task, str) else task
    context = context or Context(config=config)
    settings = context.models().config
    if store is None:
        async with open_store(settings.persistence) as opened:
            return await arun_task(task, graph=graph, context=context, store=opened)
    compiled = BUILDERS[graph](settings).compile(store=store)
    state: dict[str, Any] = await compiled.ainvoke(
        task.to_input(), {"recursion_limit": recursion_limit(task)}, context=context
    )
    return task.with_state(state)


def recursion_limit(task: Task) -> int:
    """Return a recursion limit that lets every step try `task.max_attempts` models.

    Each fallback takes three supersteps (error handler, select, work node); LangGraph's
    default limit of 25 would stop a task with a large `max_attempts` early.
    """
    return max(25, 10 + 2 * 3 * (task.max_attempts + 1))


def run_task(
    task: Task | str,
    *,
    graph: GraphName = "route",
    context: Context | None = None,
    config: ModelyardConfig | None = None,
    store: BaseStore | None = None,
) -> Task:
    """Run a task from synchronous code (not inside a running event loop)."""
    return asyncio.run(arun_task(task, graph=graph, context=context, config=config, store=store))
