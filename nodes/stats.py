"""The stats book: every model's stats in a LangGraph store, read by selection, written per call.

Records live in the store the graph was compiled with (`graph.compile(store=...)`, or the
one `langgraph dev` provides), under the namespace `("modelyard", "model_stats")`, one item
per model. A graph compiled without a store keeps them in this process's memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from functools import partial

from langgraph.store.base import BaseStore, GetOp, Item
from langgraph.store.memory import InMemoryStore

from modelyard.configs import ModelyardConfig
from modelyard.configs.batches import Batches
from modelyard.configs.persistence import update_lock
from modelyard.routers.select import initial_stats
from modelyard.state import ModelCall, ModelCallError, ModelStats

NAMESPACE = ("modelyard", "model_stats")

#: One change asked for: the book asking, and what it does to the model's stats.
_Change = tuple["StatsBook", Callable[[ModelStats], ModelStats]]

#: Where stats go when the graph has no store of its own.
PROCESS_STORE = InMemoryStore()

#: Per event loop, store and model: the updates of that record, applied in batches.
_updates: dict[tuple[int, int, str], Batches[_Change, ModelStats]] = {}


class StatsBook:
    """Reads and updates the stats of a config's models in a store."""

    def __init__(
        self,
        store: BaseStore | None,
        config: ModelyardConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store if store is not None else PROCESS_STORE
        self.config = config
        self.clock = clock
        self._models = {m.name: m for m in config.models}

    async def snapshot(self, names: Iterable[str] | None = None) -> dict[str, ModelStats]:
        """Return the current stats of the named models (all by default), in one read."""
        names = list(self._models if names is None else names)
        items = await self.store.abatch([GetOp(NAMESPACE, name) for name in names])
        return {
            name: self._parse(name, item if isinstance(item, Item) else None)
            for name, item in zip(names, items, strict=True)
        }

    async def get(self, name: str) -> ModelStats:
        """Return one model's current stats."""
        return self._parse(name, await self.store.aget(NAMESPACE, name))

    async def record_success(self, call: ModelCall) -> ModelStats:
        """Fold a successful call into its model's averages and totals; end any cooldown."""
        model = self._models[call.model]

        def update(stats: ModelStats) -> ModelStats:
            return stats.after_success(
                latency_ms=call.latency_ms,
                first_token_ms=call.first_token_ms,
                input_tokens=call.input_tokens,
                output_tokens=call.output_tokens,
                cost=call.cost,
                alpha=self.config.selection.alpha,
                reset_success_rate=model.initial_stats.success_rate,
                now=self.clock(),
            )

        return await self._update(call.model, update)

    async def record_failure(self, error: ModelCallError) -> ModelStats:
        """Fold a failed call into its model's stats; cool the model down when it should be."""

        def update(stats: ModelStats) -> ModelStats:
            return stats.after_failure(
                kind=error.kind.value,
                message=f"{error.kind.value}: {error.detail}",
                retry_after=error.retry_after,
                alpha=self.config.selection.alpha,
                allowed_fails=self.config.cooldown.allowed_fails,
                cooldown_seconds=self.config.cooldown.cooldown_seconds,
                max_retry_after=self.config.retry.max_retry_after,
                now=self.clock(),
            )

        return await self._update(error.model, update)

    async def claim_trial(self, name: str) -> bool:
        """Mark a trial call to a model back from a cooldown as under way.

        Returns False when another task of this process claimed it first.
        """
        model = self._models[name]
        claimed = False

        def update(stats: ModelStats) -> ModelStats:
            nonlocal claimed
            now = self.clock()
            started = stats.trial_started_at
            if started is not None and now - started < model.timeout:
                return stats  # someone else's trial call is under way
            claimed = True
            return stats.claim_trial(now)

        await self._update(name, update)
        return claimed

    async def reset(self, names: Iterable[str] | None = None) -> None:
        """Forget the stats of the named models (all by default)."""
        for name in list(self._models if names is None else names):
            await self.store.adelete(NAMESPACE, name)

    async def _update(self, name: str, change: Callable[[ModelStats], ModelStats]) -> ModelStats:
        """Apply `change` to the model's stored stats; return them as changed.

        Updates of one record never interleave: the changes asked for while one is under
        way wait for it, then are applied together, in order, on one read and one write
        (under the store's `update_lock`, against other processes). With 64 tasks on one
        model, one read and one write per call queued each call behind all the others.
        """
        key = (id(asyncio.get_running_loop()), id(self.store), name)
        batches = _updates.get(key)
        if batches is None:
            batches = _updates[key] = Batches(partial(_apply_changes, name))
        return await batches.submit((self, change))

    def _parse(self, name: str, item: Item | None) -> ModelStats:
        if item is None:
            model = self._models.get(name)
            return initial_stats(model) if model else ModelStats(model=name)
        return ModelStats.model_validate(item.value)


async def _apply_changes(
    name: str, changes: list[tuple[StatsBook, Callable[[ModelStats], ModelStats]]]
) -> list[ModelStats | Exception]:
    """Read a model's stats, apply the changes in order, write the result once.

    Each change's outcome is the stats after it, or what it raised (then it is skipped).
    The books share one store (the batches are per store).
    """
    book = changes[0][0]
    async with update_lock(book.store):
        outcomes = _apply(await book.get(name), [change for _, change in changes])
        changed = [outcome for outcome in outcomes if isinstance(outcome, ModelStats)]
        if changed:
            value = changed[-1].model_dump(mode="json")
            await book.store.aput(NAMESPACE, name, value, index=False)
    return outcomes


def _apply(
    stats: ModelStats, changes: list[Callable[[ModelStats], ModelStats]]
) -> list[ModelStats | Exception]:
    """Apply the changes in order; return each one's stats, or what it raised (then skipped)."""
    outcomes: list[ModelStats | Exception] = []
    for change in changes:
        try:
            stats = change(stats)
        except Exception as exc:
            outcomes.append(exc)
        else:
            outcomes.append(stats)
    return outcomes
