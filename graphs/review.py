"""The implement-and-review graphs: a coder implements, a reviewer reviews, the coder revises."""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph

from modelyard.configs import ModelyardConfig
from modelyard.graphs.post_completion import add_post_completions
from modelyard.graphs.steps import add_model_step
from modelyard.nodes import Context, classify_task, record_failure, work_node
from modelyard.nodes.review import (
    finish_code_review,
    finish_review,
    implement_node,
    review_node,
    review_route,
    revise_node,
)
from modelyard.routers import retry_policy
from modelyard.state import InvalidTaskError, Step, TaskInput, TaskState, TaskType


def build_review_graph(
    config: ModelyardConfig | None = None, *, plan: bool = False, post_completions: bool = True
) -> StateGraph[TaskState, Context, TaskInput, TaskState]:
    """Return the uncompiled graph: implement, then review and revise until approved.

    classify -> [select_planner -> plan ->] select_coder -> implement -> select_reviewer
    -> review -> revise -> review ... -> finish [-> the config's post-completion steps].
    The coder is the best model for `code_generation`, the reviewer the best for
    `code_review` (the coder itself when no other model has that role). Each review
    returns a verdict (approve, or request changes with comments) and adds a round to
    `rounds`; the coder revises on the comments, on the same model, until the reviewer
    approves or the task's `max_rounds` are reviewed. Either way the task completes,
    with the last code as its `result`.

    Every step retries and falls back like the route graph's: a reviewer that fails, or
    whose answer has no readable verdict, is replaced by the next best reviewer; a coder
    that fails a revision by the next best coder (`select_reviser`). The reviewer and the
    coder are chosen once and kept from round to round unless they fail.

    Args:
        config: Where the retry settings come from; default: the packaged ones.
        plan: Put a plan step first (the best model for `planning`): plan -> implement
            -> review.
        post_completions: Run the config's post-completion steps on the final code.
    """
    policy = retry_policy(config.retry if config else None)
    builder = StateGraph(TaskState, context_schema=Context, input_schema=TaskInput)
    builder.add_node("classify", classify_task, error_handler=record_failure)
    builder.add_edge(START, "classify")
    if plan:
        add_model_step(
            builder,
            Step.PLAN,
            work_node(Step.PLAN),
            name="plan",
            select="select_planner",
            policy=policy,
        )
        builder.add_edge("classify", "select_planner")
        builder.add_edge("plan", "select_coder")
    else:
        builder.add_edge("classify", "select_coder")
    steps = [
        (Step.IMPLEMENT, implement_node(), "implement", "select_coder"),
        (Step.REVIEW, review_node(), "review", "select_reviewer"),
        (Step.REVISE, revise_node(), "revise", "select_reviser"),
    ]
    for step, node, name, select in steps:
        add_model_step(builder, step, node, name=name, select=select, policy=policy)
    builder.add_node("finish", finish_review)
    builder.add_edge("implement", "select_reviewer")
    builder.add_conditional_edges("review", review_route)
    builder.add_edge("revise", "review")
    if post_completions:
        add_post_completions(builder, after="finish", config=config)
    else:
        builder.add_edge("finish", END)
    return builder


def build_plan_and_review_graph(
    config: ModelyardConfig | None = None, *, post_completions: bool = True
) -> StateGraph[TaskState, Context, TaskInput, TaskState]:
    """Return the uncompiled review graph with a plan step first (see `build_review_graph`)."""
    return build_review_graph(config, plan=True, post_completions=post_completions)


def build_code_review_graph(
    config: ModelyardConfig | None = None,
) -> StateGraph[TaskState, Context, TaskInput, TaskState]:
    """Return the uncompiled graph that reviews code the caller gives (one round, no revise).

    classify -> select_reviewer -> review -> finish. The input's `implementation` is the
    code, its `prompt` what the code is for; the task type is `code_review` unless the
    input says otherwise. The reviewer is the best model for `code_review` (or the
    input's `model`, or `step_models["review"]`), retried and replaced like any step's.
    The result is the reviewer's answer, the round in `rounds` its verdict and comments.

    Args:
        config: Where the retry settings come from; default: the packaged ones.
    """
    policy = retry_policy(config.retry if config else None)
    builder = StateGraph(TaskState, context_schema=Context, input_schema=TaskInput)
    builder.add_node("start", _as_code_review, error_handler=record_failure)
    builder.add_node("classify", classify_task, error_handler=record_failure)
    add_model_step(
        builder,
        Step.REVIEW,
        review_node(),
        name="review",
        select="select_reviewer",
        policy=policy,
    )
    builder.add_node("finish", finish_code_review)
    builder.add_edge(START, "start")
    builder.add_edge("start", "classify")
    builder.add_edge("classify", "select_reviewer")
    builder.add_edge("review", "finish")
    builder.add_edge("finish", END)
    return builder


def _as_code_review(state: TaskState) -> dict[str, Any]:
    """Check that the task carries code; make its type `code_review` unless it has one."""
    code = state.get("implementation")
    if not isinstance(code, str) or not code.strip():
        raise InvalidTaskError(
            "the code_review graph reviews the input's `implementation`, which is missing "
            "or empty; give the code to review there"
        )
    return {} if state.get("task_type") else {"task_type": TaskType.CODE_REVIEW}


graph = build_review_graph().compile(name="review")
plan_review_graph = build_plan_and_review_graph().compile(name="plan_and_review")
code_review_graph = build_code_review_graph().compile(name="code_review")
