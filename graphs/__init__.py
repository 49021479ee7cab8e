"""Graph builders (uncompiled StateGraphs), their compiled graphs, and helpers to run tasks."""

from modelyard.graphs.distributed import DistributedRunner, DistributedWorker
from modelyard.graphs.fan_out import build_fan_out_graph, compare_models, parallel_tasks
from modelyard.graphs.plan_and_implement import build_plan_and_implement_graph
from modelyard.graphs.post_completion import add_post_completions
from modelyard.graphs.review import (
    build_code_review_graph,
    build_plan_and_review_graph,
    build_review_graph,
)
from modelyard.graphs.route import build_route_graph
from modelyard.graphs.run import arun_task, run_task
from modelyard.graphs.run_fan_out import acompare, arun_fan_out, run_fan_out
from modelyard.graphs.runner import Runner, RunnerClosedError, TaskRunner
from modelyard.graphs.stream import (
    Finished,
    Notice,
    StepUpdate,
    StreamEvent,
    Token,
    astream_task,
    stream_events,
)
from modelyard.state.fan_out import Branch, BranchResult

__all__ = [
    "Branch",
    "BranchResult",
    "DistributedRunner",
    "DistributedWorker",
    "Finished",
    "Notice",
    "Runner",
    "RunnerClosedError",
    "StepUpdate",
    "StreamEvent",
    "TaskRunner",
    "Token",
    "acompare",
    "add_post_completions",
    "arun_fan_out",
    "arun_task",
    "astream_task",
    "build_code_review_graph",
    "build_fan_out_graph",
    "build_plan_and_implement_graph",
    "build_plan_and_review_graph",
    "build_review_graph",
    "build_route_graph",
    "compare_models",
    "parallel_tasks",
    "run_fan_out",
    "run_task",
    "stream_events",
]
