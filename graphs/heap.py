"""Keep CPython's full garbage collections off the objects a runner finds alive when it starts.

A loaded interpreter holds some 170,000 objects the collector tracks: modules, pydantic
schemas, LangChain and LangGraph classes, model clients. CPython's full collection walks
every one of them, about 100 ms on a slow core, and the event loop stops meanwhile, so every
task on it waits. A runner allocates enough to set one off every second or so.

`frozen_heap()` collects once, then moves everything alive into the collector's permanent
generation (`gc.freeze()`), which full collections skip; on leaving, `gc.unfreeze()` gives
those objects back to the collector. Objects made while the block runs are collected as
always, and full collections then come more often (CPython starts one when the objects
promoted since the last one reach a quarter of those it walked) but walk only them.

What a freeze holds: a reference cycle among the frozen objects (say one made before the
runner started and dropped while it runs), and newer objects only it refers to, are freed at
the first full collection after the block ends, not before.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("modelyard.runner")

_lock = threading.Lock()
_holders = 0
_owned = False


def _forget_in_child() -> None:
    """In a forked child no runner holds the freeze it inherited: it is the child's own."""
    global _holders, _owned
    _holders, _owned = 0, False


os.register_at_fork(after_in_child=_forget_in_child)


@contextmanager
def frozen_heap(enabled: bool = True) -> Iterator[None]:
    """Freeze the objects alive now for the block, so full collections skip them.

    Runners in one process share one freeze: the first to enter freezes, the last to leave
    unfreezes. A process whose heap was frozen already (by the application, e.g. before it
    forks) or whose collector is disabled is left as it is; but an application that freezes
    its heap while a runner holds it has that freeze undone with the runner's. A process
    forked meanwhile keeps its heap frozen, as an application's own.

    Args:
        enabled: False makes the block do nothing (the config's `runner.freeze_heap`).
    """
    global _holders, _owned
    if not enabled:
        yield
        return
    with _lock:
        if _holders == 0:
            _owned = gc.isenabled() and gc.get_freeze_count() == 0
            if _owned:
                gc.collect()
                gc.freeze()
                log.debug("froze %d objects for the runner", gc.get_freeze_count())
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _owned:
                gc.unfreeze()
                _owned = False
