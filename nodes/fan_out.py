"""The fan-out nodes: check the branches, run each in its own graph at once, gather the results."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from langchain_core.runnables import Runnable
from langgraph.runtime import Runtime
from langgraph.types import Send
from pydantic import ValidationError

from modelyard.nodes.context import Context
from modelyard.state import InvalidTaskError, Task, TaskStatus
from modelyard.state.fan_out import Branch, BranchJob, BranchResult, FanOutState
from modelyard.state.task import utcnow


def check_branches(state: FanOutState) -> list[Branch]:
    """Return the branches to run, validated and labelled.

    The branches are one per model in `state["models"]`, each asking `state["prompt"]`, when
    the run was given models; else `state["branches"]`. A branch without a label is named
    after its model, else `branch <n>`.

    Raises:
        InvalidTaskError: no branches, a malformed branch, or two branches with one label.
    """
    given: list[Any] = list(state.get("branches") or [])
    if state.get("models"):
        task_type = state.get("task_type") or None
        given = [
            {"prompt": state.get("prompt") or "", "model": model, "task_type": task_type}
            for model in state.get("models") or []
        ]
    if not given:
        raise InvalidTaskError(
            "there is nothing to run; give `branches` (one task each), "
            "or a `prompt` and the `models` to ask it"
        )
    branches = []
    for index, item in enumerate(given):
        try:
            branch = item if isinstance(item, Branch) else Branch.model_validate(item)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidTaskError(f"branches[{index}] is malformed ({problems})") from None
        label = branch.label or branch.model or f"branch {index + 1}"
        branches.append(branch.model_copy(update={"label": label}))
    repeated = [label for label, n in Counter(b.label for b in branches).items() if n > 1]
    if repeated:
        raise InvalidTaskError(
            f"several branches are labelled {', '.join(map(repr, repeated))}; "
            "give each branch a label of its own (`label=`)"
        )
    return branches


async def fan_out(state: FanOutState) -> dict[str, Any]:
    """Check and label the branches; clear what an earlier run on the thread left behind.

    The one-prompt input (`prompt`, `models`, `task_type`) is cleared once turned into
    branches, so that the next run on the thread uses its own input.
    """
    return {
        "branches": check_branches(state),
        "prompt": None,
        "models": None,
        "task_type": None,
        "results": None,
        "failed": [],
    }


async def send_branches(state: FanOutState) -> list[Send]:
    """Send each branch to its own run of the `branch` node; they all run at once.

    Async so that LangGraph calls it on the event loop, not on a worker thread.
    """
    return [
        Send("branch", BranchJob(index=index, branch=branch))
        for index, branch in enumerate(state["branches"])
    ]


class BranchNode(Protocol):
    """A node that runs one branch through its graph."""

    async def __call__(self, state: BranchJob, runtime: Runtime[Context]) -> dict[str, Any]: ...


def branch_node(graphs: Mapping[str, Runnable[Any, Any]]) -> BranchNode:
    """Return the node that runs one branch through its compiled graph and records the result.

    The graph runs as a subgraph with the run's context, store and checkpointer, so each
    branch gets classification, selection, retries, fallback and stats of its own. A branch
    that fails ends with its error in its result; the other branches go on. An exception
    that is a bug, not a modelyard error, is raised, as in the route graph.

    Args:
        graphs: The compiled graph for each `Branch.graph` name (`route`, ...).
    """

    async def branch(state: BranchJob, runtime: Runtime[Context]) -> dict[str, Any]:
        item = state["branch"]
        task = item.to_task()
        started_at, started = utcnow(), time.perf_counter()
        final: dict[str, Any] = await graphs[item.graph].ainvoke(
            task.to_input(), context=runtime.context
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        done = task.with_state(final)
        result = branch_result(state["index"], item, done, final, started_at, elapsed_ms)
        return {"results": [result]}

    return branch


def branch_result(
    index: int,
    branch: Branch,
    task: Task,
    state: dict[str, Any],
    started_at: datetime,
    elapsed_ms: float,
) -> BranchResult:
    """Return the result of a finished branch from its task and its graph's final state."""
    calls = list(state.get("calls") or [])
    failures = state.get("failures") or []
    model = task.assigned_model or branch.model or (failures[-1].model if failures else None)
    return BranchResult(
        index=index,
        label=branch.label,
        task_id=task.id,
        prompt=branch.prompt,
        status=task.status,
        task_type=task.task_type,
        model=model,
        answer=task.result if task.status is TaskStatus.COMPLETED else None,
        plan=state.get("plan"),
        latency_ms=round(elapsed_ms, 1),
        started_at=started_at,
        finished_at=started_at + timedelta(milliseconds=elapsed_ms),
        input_tokens=sum(c.input_tokens for c in calls),
        output_tokens=sum(c.output_tokens for c in calls),
        cost=sum(c.cost for c in calls),
        attempts=task.attempts,
        calls=calls,
        error=task.error,
    )


async def gather(state: FanOutState) -> dict[str, Any]:
    """Name the branches that failed, once every branch has its result."""
    return {"failed": [r.label for r in state.get("results") or [] if not r.ok]}
