"""Graph nodes: classify, select, the work steps, and the failure handler."""

from modelyard.nodes.calls import call_model, translate_error
from modelyard.nodes.classify import classify_task
from modelyard.nodes.context import Context
from modelyard.nodes.failure import fall_back, record_failure
from modelyard.nodes.select import select_model_for
from modelyard.nodes.stats import NAMESPACE, StatsBook
from modelyard.nodes.work import work_node

__all__ = [
    "NAMESPACE",
    "Context",
    "StatsBook",
    "call_model",
    "classify_task",
    "fall_back",
    "record_failure",
    "select_model_for",
    "translate_error",
    "work_node",
]
