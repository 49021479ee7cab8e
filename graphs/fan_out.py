"""The fan-out graph: several tasks, or one task on several models, at once (LangGraph `Send`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from langgraph.graph import END, START, StateGraph

from modelyard.configs import ModelyardConfig
from modelyard.graphs.plan_and_implement import build_plan_and_implement_graph
from modelyard.graphs.route import build_route_graph
from modelyard.nodes import Context
from modelyard.nodes.fan_out import branch_node, fan_out, gather, send_branches
from modelyard.state import InvalidTaskError, TaskType
from modelyard.state.fan_out import Branch, FanOutInput, FanOutState


def build_fan_out_graph(
    config: ModelyardConfig | None = None,
) -> StateGraph[FanOutState, Context, FanOutInput, FanOutState]:
    """Return the uncompiled fan-out graph: fan_out -> branch (one per branch, at once) -> gather.

    Each branch runs the `route` graph (or `plan_and_implement`, per `Branch.graph`) as a
    subgraph, with the run's context, store and checkpointer: its own classification,
    selection, retries, fallback and stats, but no post-completion steps (branches would
    write the same files at once). `results` holds one `BranchResult` per branch,
    in branch order, failed branches included; `failed` names the branches that failed.

    Input: `{"branches": [Branch, ...]}`, or `{"prompt": ..., "models": [...]}` to ask
    each model the same question.

    Args:
        config: Where the retry settings come from; default: the packaged ones.
    """
    # Branches run no post-completion steps: several branches would write the same files.
    graphs = {
        "route": build_route_graph(config, post_completions=False).compile(name="route"),
        "plan_and_implement": build_plan_and_implement_graph(
            config, post_completions=False
        ).compile(name="plan_and_implement"),
    }
    builder = StateGraph(FanOutState, context_schema=Context, input_schema=FanOutInput)
    builder.add_node("fan_out", fan_out)
    builder.add_node("branch", branch_node(graphs))
    builder.add_node("gather", gather)
    builder.add_edge(START, "fan_out")
    builder.add_conditional_edges("fan_out", send_branches, ["branch"])
    builder.add_edge("branch", "gather")
    builder.add_edge("gather", END)
    return builder


def compare_models(
    prompt: str, models: Iterable[str], *, task_type: TaskType | str | None = None
) -> list[Branch]:
    """Return one branch per model, each asking `prompt` of that model only (no fallback).

    Raises:
        InvalidTaskError: no models, a model named twice, or an unknown task type.
    """
    names = list(models)
    if not names:
        raise InvalidTaskError("no models to compare; name at least one configured model")
    repeated = [name for name, n in Counter(names).items() if n > 1]
    if repeated:
        raise InvalidTaskError(f"{', '.join(map(repr, repeated))} is named more than once")
    try:
        kind = TaskType(task_type) if task_type else None
    except ValueError:
        choices = ", ".join(t.value for t in TaskType)
        raise InvalidTaskError(
            f"unknown task type {task_type!r}; expected one of: {choices}"
        ) from None
    return [Branch(prompt=prompt, model=name, task_type=kind) for name in names]


def parallel_tasks(tasks: Mapping[str, str] | Iterable[str]) -> list[Branch]:
    """Return one branch per prompt, each classified and routed on its own.

    Args:
        tasks: Prompts, or a mapping of label to prompt (e.g. `{"analysis": ...,
            "tests": ...}`).
    """
    if isinstance(tasks, Mapping):
        return [Branch(label=label, prompt=prompt) for label, prompt in tasks.items()]
    return [Branch(prompt=prompt) for prompt in tasks]


graph = build_fan_out_graph().compile(name="fan_out")
