"""Run several tasks, or one prompt on several models, at once and get their results back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from langgraph.store.base import BaseStore

from modelyard.configs import ModelyardConfig
from modelyard.configs.persistence import open_store
from modelyard.graphs.fan_out import build_fan_out_graph, compare_models
from modelyard.graphs.run import recursion_limit
from modelyard.nodes import Context
from modelyard.state import TaskType
from modelyard.state.fan_out import Branch, BranchResult

#: Called with each branch's result as soon as that branch finishes.
OnResult = Callable[[BranchResult], None]


async def arun_fan_out(
    branches: Sequence[Branch | str],
    *,
    context: Context | None = None,
    config: ModelyardConfig | None = None,
    store: BaseStore | None = None,
    on_result: OnResult | None = None,
) -> list[BranchResult]:
    """Run the branches at once through the fan-out graph; return their results in order.

    A branch that fails is in the results with its error; the others are not affected.
    The clients of the models that branches name are built before the branches start
    (building one takes a few hundred milliseconds), so that a branch's latency is its own.

    Args:
        branches: The branches, or just their prompts.
        context: The run's context; default: built from `config`, else the default config.
        config: A config object to run with, when no context is given.
        store: Where the models' stats live; default: the store the config's
            `persistence.url` names (opened and closed for this run).
        on_result: Called with each branch's result as soon as that branch finishes.

    Raises:
        InvalidTaskError: no branches, a malformed branch, or two branches with one label.
    """
    items = [Branch(prompt=b) if isinstance(b, str) else b for b in branches]
    context = context or Context(config=config)
    settings = context.models().config
    if store is None:
        async with open_store(settings.persistence) as opened:
            return await arun_fan_out(items, context=context, store=opened, on_result=on_result)
    registry = context.models()
    for name in dict.fromkeys(b.model for b in items if b.model in registry.names):
        registry.chat_model(name)  # built now, not inside the branch whose latency it is
    graph = build_fan_out_graph(settings).compile(store=store)
    limit = max((recursion_limit(b.to_task()) for b in items), default=25)
    final: dict[str, Any] = {}
    async for mode, chunk in graph.astream(
        {"branches": list(items)},
        {"recursion_limit": limit},
        context=context,
        stream_mode=["updates", "values"],
    ):
        update = cast(dict[str, Any], chunk)
        if mode == "values":
            final = update
        elif on_result is not None:
            for result in (update.get("branch") or {}).get("results") or []:
                on_result(result)
    return list(final.get("results") or [])


async def acompare(
    prompt: str,
    models: Iterable[str],
    *,
    task_type: TaskType | str | None = None,
    context: Context | None = None,
    config: ModelyardConfig | None = None,
    store: BaseStore | None = None,
    on_result: OnResult | None = None,
) -> list[BranchResult]:
    """Ask each model `prompt` at once; return one result per model, in the order given.

    Each model answers alone (no fallback to another model); a model that fails has its
    error in its result. The other arguments are those of `arun_fan_out`.

    Raises:
        InvalidTaskError: no models, a model named twice, or an unknown task type.
    """
    return await arun_fan_out(
        compare_models(prompt, models, task_type=task_type),
        context=context,
        config=config,
        store=store,
        on_result=on_result,
    )


def run_fan_out(
    branches: Sequence[Branch | str],
    *,
    context: Context | None = None,
    config: ModelyardConfig | None = None,
    store: BaseStore | None = None,
) -> list[BranchResult]:
    """Run the branches at once from synchronous code (not inside a running event loop)."""
    return asyncio.run(arun_fan_out(branches, context=context, config=config, store=store))
