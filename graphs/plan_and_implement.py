"""The plan-and-implement graph: a reasoning model plans, a coding model implements the plan."""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph

from modelyard.configs import ModelyardConfig
from modelyard.graphs.post_completion import add_post_completions
from modelyard.graphs.steps import add_model_step
from modelyard.nodes import Context, classify_task, record_failure, work_node
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
    add_model_step(
        builder,
        Step.PLAN,
        work_node(Step.PLAN, final=False),
        name="plan",
        select="select_planner",
        policy=policy,
    )
    add_model_step(
        builder,
        Step.IMPLEMENT,
        work_node(Step.IMPLEMENT, final=True),
        name="implement",
        select="select_coder",
        policy=policy,
    )
    builder.add_edge(START, "classify")
    builder.add_edge("classify", "select_planner")
    builder.add_edge("plan", "select_coder")
    if post_completions:
        add_post_completions(builder, after="implement", config=config)
    else:
        builder.add_edge("implement", END)
    return builder


graph = build_plan_and_implement_graph().compile(name="plan_and_implement")
