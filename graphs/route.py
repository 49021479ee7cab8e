"""The route graph: classify the task, select the model that suits it, answer with it."""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph

from modelyard.configs import ModelyardConfig
from modelyard.graphs.post_completion import add_post_completions
from modelyard.graphs.steps import add_model_step
from modelyard.nodes import Context, classify_task, record_failure, work_node
from modelyard.routers import retry_policy
from modelyard.state import Step, TaskInput, TaskState


def build_route_graph(
    config: ModelyardConfig | None = None,
    *,
    post_completions: bool = True,
) -> StateGraph[TaskState, Context, TaskInput, TaskState]:
    """Return the uncompiled route graph: classify -> select -> answer (-> post-completions).

    `answer` retries a retryable failure on the same model (the config's `retry`); when
    its retries are spent, or the failure is not worth retrying, it goes back to `select`,
    which leaves the failed model out.

    Compile it with a store (`compile(store=...)`) to keep the models' stats; see
    `modelyard.configs.persistence.open_store`.

    After the answer, the config's post-completion steps run in config order, when it has
    any (see `graphs.post_completion`).

    Args:
        config: Where the retry settings come from; the models come from the run's
            `Context`. Default: the packaged retry settings.
        post_completions: Run the config's post-completion steps after the answer.
    """
    builder = StateGraph(TaskState, context_schema=Context, input_schema=TaskInput)
    builder.add_node("classify", classify_task, error_handler=record_failure)
    add_model_step(
        builder,
        Step.ANSWER,
        work_node(Step.ANSWER, final=True),
        name="answer",
        select="select",
        policy=retry_policy(config.retry if config else None),
    )
    builder.add_edge(START, "classify")
    builder.add_edge("classify", "select")
    if post_completions:
        add_post_completions(builder, after="answer", config=config)
    else:
        builder.add_edge("answer", END)
    return builder


graph = build_route_graph().compile(name="route")
