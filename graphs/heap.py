"""Keep CPython's full garbage collections off the objects a runner finds alive when it starts.

A loaded interpreter holds some 170,000 objects the collector tracks: modules, pydantic
schemas, LangChain and LangGraph classes, model clients. CPython's full collection walks
every one of them, about 100 ms on a slow core, and the event loop stops meanwhile, so every
task on it waits. A runner allocates enough to set one off every second or so.

`frozen_heap()` collects once, then moves everything alive into the collector's permanent
generation (`gc.freeze()`), which full collections skip; on leaving, `gc.unfreeze()` gives
those objects back to the collector. Objects made while the block runs are collected as
always. Cyclic garbage among the objects frozen (say a cycle created before the runner
started and dropped while it runs) waits until the block ends to be freed.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("modelyard.runner")

_lock = threading.Lock()
_holders = 0
_owned = False


@contextmanager
def frozen_heap(enabled: bool = True) -> Iterator[None]:
    """Freeze the objects alive now for the block, so full collections skip them.

    Runners in one process share one freeze: the first to enter freezes, the last to leave
    unfreezes. A process whose heap was frozen already (by the application, e.g. before it
    forks) or whose collector is disabled is left as it is.

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
