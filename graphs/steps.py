"""Wire a model step into a graph: select its model, run it, fall back to the next one."""

from __future__ import annotations

from typing import Any

from langgraph.graph import StateGraph
from langgraph.types import RetryPolicy

from modelyard.nodes import Context, fall_back, record_failure, select_model_for
from modelyard.nodes.work import WorkNode
from modelyard.state import Step, TaskInput, TaskState


def add_model_step(
    builder: StateGraph[TaskState, Context, TaskInput, TaskState],
    step: Step,
    node: WorkNode,
    *,
    name: str,
    select: str,
    policy: RetryPolicy,
) -> None:
    """Add `select -> name`: pick the best model for `step`, then run `node` on it.

    `name` retries a retryable failure on the same model (`policy`); when its retries are
    spent, or the failure is not worth retrying, it goes back to `select`, which leaves the
    failed model out and picks the next best one. A selection that finds no model fails
    the task (`record_failure`). The edges into `select` and out of `name` are the
    caller's.
    """
    # LangGraph calls `record_failure(state, error)` as it does in the graph modules, but
    # mypy finds no `add_node` overload for it in this module (it does in those).
    no_model: Any = record_failure
    builder.add_node(select, select_model_for(step), error_handler=no_model)
    builder.add_node(name, node, retry_policy=policy, error_handler=fall_back(step, select))
    builder.add_edge(select, name)
