"""Hand the requests made while one batch is being handled to the next batch, all together.

The runner's SQLite commits and its stats updates both work this way: with 64 tasks at
once, one round trip (a commit, a read and a write) serves every request of the moment
instead of each waiting behind all the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class Batches(Generic[ItemT, ResultT]):
    """Give `handle` the items submitted while it handles a batch, together, as the next one.

    `handle(items)` returns one outcome per item, in order: its result, or the exception
    that item failed with. When `handle` itself raises, every item of its batch fails with
    that. A caller cancelled while it waits does not take its item back: it is handled
    anyway. When the task handling batches is cancelled (its event loop ending), every
    waiting caller is cancelled too, so nobody waits forever. One instance serves one
    event loop.
    """

    def __init__(
        self, handle: Callable[[list[ItemT]], Awaitable[Sequence[ResultT | Exception]]]
    ) -> None:
        self._handle = handle
        self._waiting: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._handling: asyncio.Task[None] | None = None

    def submit(self, item: ItemT) -> asyncio.Future[ResultT]:
        """Put `item` in the next batch; return a future of its result, set once that batch
        is handled (awaiting the future itself costs no task of its own).

        The future raises what the item, or its whole batch, failed with.
        """
        done: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if self._handling is None:
            self._handling = asyncio.create_task(self._handle_waiting())
        return done

    async def drain(self) -> None:
        """Wait until every item submitted so far is handled."""
        while self._handling is not None:
            await asyncio.wait([self._handling])

    async def _handle_waiting(self) -> None:
        batch: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                outcomes: Sequence[ResultT | Exception]
                try:
                    outcomes = await self._handle([item for item, _ in batch])
                except Exception as exc:  # not one item's failure: every caller hears it
                    outcomes = [exc] * len(batch)
                for (_, done), outcome in zip(batch, outcomes, strict=True):
                    if done.done():  # its caller was cancelled
                        continue
                    if isinstance(outcome, Exception):
                        done.set_exception(outcome)
                    else:
                        done.set_result(outcome)
                batch = []
        finally:
            self._handling = None
            for _, done in [*batch, *self._waiting]:
                if not done.done():
                    done.cancel()
            self._waiting = []
