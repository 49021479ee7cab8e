"""Graph nodes: classify, select, the work steps, and the failure handler."""

from modelyard.nodes.calls import call_model, translate_error
from modelyard.nodes.classify import classify_task
from modelyard.nodes.context import Context, update_model_config
from modelyard.nodes.effects import apply_effects
from modelyard.nodes.failure import fall_back, record_failure
from modelyard.nodes.post_complete import post_complete, post_completion_route, record_post_failure
from modelyard.nodes.select import select_model_for
from modelyard.nodes.stats import NAMESPACE, StatsBook
from modelyard.nodes.work import work_node

__all__ = [
    "NAMESPACE",
    "Context",
    "StatsBook",
    "apply_effects",
    "call_model",
    "classify_task",
    "fall_back",
    "post_complete",
    "post_completion_route",
    "record_failure",
    "record_post_failure",
    "select_model_for",
    "translate_error",
    "update_model_config",
    "work_node",
]
