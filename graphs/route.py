"""The route graph: classify the task, select the model that suits it, answer with it."""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph

from modelyard.configs import ModelyardConfig
from modelyard.nodes import Context, classify_task, record_failure, select_model_for, work_node
from modelyard.routers import retry_policy
from modelyard.state import Step, TaskInput, TaskState


def build_route_graph(
    config: ModelyardConfig | None = None,
) -> StateGraph[TaskState, Context, TaskInput, TaskState]:
    """Return the uncompiled route graph: classify -> select -> answer.

    Args:
        config: Where the retry settings come from; the models come from the run's
            `Context`. Default: the packaged retry settings.
    """
    builder = StateGraph(TaskState, context_schema=Context, input_schema=TaskInput)
    builder.add_node("classify", classify_task, error_handler=record_failure)
    builder.add_node("select", select_model_for(Step.ANSWER), error_handler=record_failure)
    builder.add_node(
        "answer",
        work_node(Step.ANSWER, final=True),
        retry_policy=retry_policy(config.retry if config else None),
        error_handler=record_failure,
    )
    builder.add_edge(START, "classify")
    builder.add_edge("classify", "select")
    builder.add_edge("select", "answer")
    builder.add_edge("answer", END)
    return builder


graph = build_route_graph().compile(name="route")
