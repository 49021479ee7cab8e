"""The runner's frozen heap: full collections skip what was alive at start, until shutdown."""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Iterator

import pytest
from support import scripted_context

from modelyard.graphs import heap
from modelyard.graphs.heap import frozen_heap
from modelyard.graphs.runner import TaskRunner


class Node:
    """Something the collector tracks, to build a reference cycle of."""

    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    """Make a two-object reference cycle and return a weak reference into it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """Start and end each test with nothing frozen, whatever an earlier test left."""
    heap._holders, heap._owned = 0, False
    gc.unfreeze()
    yield
    heap._holders, heap._owned = 0, False
    gc.unfreeze()


def test_the_heap_is_frozen_inside_the_block_and_given_back_after() -> None:
    before = cycle()  # alive when the block starts, dropped inside it
    held = before()

    with frozen_heap():
        assert gc.get_freeze_count() > 1000  # the interpreter's modules and classes at least
        during = cycle()
        del held
        gc.collect()
        assert before() is not None  # frozen: full collections skip it
        assert during() is None  # made inside the block: collected as always

    assert gc.get_freeze_count() == 0
    gc.collect()
    assert before() is None  # given back, and collected


def test_runners_share_one_freeze_the_last_to_leave_ends_it() -> None:
    # Frozen objects freed by their reference counts leave the count: it can only fall.
    with frozen_heap():
        frozen = gc.get_freeze_count()
        with frozen_heap():
            assert 0 < gc.get_freeze_count() <= frozen  # not frozen again
        assert 0 < gc.get_freeze_count() <= frozen  # the first holder still runs
    assert gc.get_freeze_count() == 0


def test_a_heap_the_application_froze_is_left_frozen() -> None:
    gc.freeze()
    frozen = gc.get_freeze_count()

    with frozen_heap():
        assert 0 < gc.get_freeze_count() <= frozen

    assert 0 < gc.get_freeze_count() <= frozen  # not ours to give back


@pytest.mark.parametrize("how", ["turned off", "collector disabled"])
def test_nothing_is_frozen_when_turned_off_or_the_collector_is_disabled(how: str) -> None:
    enabled = how != "turned off"
    if how == "collector disabled":
        gc.disable()
    try:
        with frozen_heap(enabled):
            assert gc.get_freeze_count() == 0
    finally:
        gc.enable()


def test_a_forked_child_keeps_its_inherited_freeze_as_its_own() -> None:
    with frozen_heap():
        child = os.fork()
        if child == 0:  # the child: no runner of its holds the freeze
            code = 3  # whatever happens here, the child must not go on running the tests
            try:
                code = 0 if heap._holders == 0 and gc.get_freeze_count() > 0 else 1
                with frozen_heap():
                    pass
                if gc.get_freeze_count() == 0:  # it gave back a freeze it did not make
                    code = 2
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert heap._holders == 1  # the parent's runner still holds it


@pytest.mark.parametrize("freeze", [True, False])
async def test_the_runner_freezes_the_heap_while_it_runs_as_configured(freeze: bool) -> None:
    context = scripted_context()
    config = context.models().config
    runner_settings = config.runner.model_copy(update={"freeze_heap": freeze})
    context.models().config = config.model_copy(update={"runner": runner_settings})

    async with TaskRunner(context=context, persistence="memory", check_models=False) as runner:
        done = await runner.wait((await runner.submit("Explain how a hash table works")).id)
        frozen_while_running = gc.get_freeze_count()

    assert done.status.value == "completed"
    assert (frozen_while_running > 0) is freeze
    assert gc.get_freeze_count() == 0  # shutdown gave it back
