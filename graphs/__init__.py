"""Graph builders (uncompiled StateGraphs), their compiled graphs, and helpers to run tasks."""

from modelyard.graphs.plan_and_implement import build_plan_and_implement_graph
from modelyard.graphs.route import build_route_graph
from modelyard.graphs.run import arun_task, run_task

__all__ = ["arun_task", "build_plan_and_implement_graph", "build_route_graph", "run_task"]
