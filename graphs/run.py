"""Run one task through a graph and get a Task back, from async code or from a script."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from langgraph.store.base import BaseStore

from modelyard.configs import ModelyardConfig
from modelyard.configs.persistence import open_store
from modelyard.graphs.plan_and_implement import build_plan_and_implement_graph
from modelyard.graphs.review import build_plan_and_review_graph, build_review_graph
from modelyard.graphs.route import build_route_graph
from modelyard.nodes import Context
from modelyard.routers.post_completion import post_steps
from modelyard.state import Task

GraphName = Literal["route", "plan_and_implement", "review", "plan_and_review"]
BUILDERS = {
    "route": build_route_graph,
    "plan_and_implement": build_plan_and_implement_graph,
    "review": build_review_graph,
    "plan_and_review": build_plan_and_review_graph,
}


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
        graph: `route`, `plan_and_implement`, `review` or `plan_and_review`.
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
        task.to_input(), {"recursion_limit": recursion_limit(task, settings)}, context=context
    )
    return task.with_state(state)


def recursion_limit(task: Task, config: ModelyardConfig | None = None) -> int:
    """Return a recursion limit that lets every step try `task.max_attempts` models.

    Each fallback takes three supersteps (error handler, select, work node), for each of
    the up to four steps that call models (plan, implement, review, revise); each review
    round takes two more (revise, review), and each post-completion step in `config` up
    to three (post_complete, its error handler or apply_effects). LangGraph's default limit
    of 25 would stop a task with a large `max_attempts` or `max_rounds` early.
    """
    fallbacks = 4 * 3 * (task.max_attempts + 1)
    post = 3 * len(post_steps(config)) if config is not None else 0
    return max(25, 10 + fallbacks + 2 * task.max_rounds + post)


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
