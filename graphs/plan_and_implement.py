"""The plan-and-implement graph: a reasoning model plans, a coding model implements the plan."""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph

from modelyard.configs import ModelyardConfig
from modelyard.graphs.post_completion import add_post_completions
from modelyard.nodes import (
    Context,
    classify_task,
    fall_back,
    record_failure,
    select_model_for,
    work_node,
)
from modelyard.routers import retry_policy
from modelyard.state import Step, TaskInput, TaskState


def build_plan_and_implement_graph(
    config: ModelyardConfig | None = None,
    *,
    post_completions: bool = True,
) -> StateGraph[TaskState, Context, TaskInput, TaskState]:
    """Return the uncompiled graph: classify -> select planner -> plan -> select coder -> implement.

    The planner is the best model for `planning`, the coder the best for `code_generation`;
    `model` in the input overrides both, `step_models` ({"plan": ..., "implement": ...})
    each one. A failed plan or implementation falls back to the next best model for it,
    as in the route graph. The config's post-completion steps run after the implementation.

    Args:
        config: Where the retry settings come from; default: the packaged ones.
        post_completions: Run the config's post-completion steps after the implementation.
    """
    policy = retry_policy(config.retry if config else None)
    builder = StateGraph(TaskState, context_schema=Context, input_schema=TaskInput)
    builder.add_node("classify", classify_task, error_handler=record_failure)
    builder.add_node("select_planner", select_model_for(Step.PLAN), error_handler=record_failure)
    builder.add_node(
        "plan",
        work_node(Step.PLAN, final=False),
        retry_policy=policy,
        error_handler=fall_back(Step.PLAN, "select_planner"),
    )
    builder.add_node("select_coder", select_model_for(Step.IMPLEMENT), error_handler=record_failure)
    builder.add_node(
        "implement",
        work_node(Step.IMPLEMENT, final=True),
        retry_policy=policy,
        error_handler=fall_back(Step.IMPLEMENT, "select_coder"),
    )
    builder.add_edge(START, "classify")
    builder.add_edge("classify", "select_planner")
    builder.add_edge("select_planner", "plan")
    builder.add_edge("plan", "select_coder")
    builder.add_edge("select_coder", "implement")
    if post_completions:
        add_post_completions(builder, after="implement", config=config)
    else:
        builder.add_edge("implement", END)
    return builder


graph = build_plan_and_implement_graph().compile(name="plan_and_implement")
