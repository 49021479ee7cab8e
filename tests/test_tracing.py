"""Tracing: every model call carries the routing in its run name, tags and metadata.

A LangChain callback handler (what LangSmith's tracer is) sees each call, over HTTP to the
local protocol server, with the task id and type, the chosen model, the attempt, and why an
earlier model was left (the fallback reason).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import RunnableLambda
from support import REASONING_MODEL

from modelyard.configs import ModelyardConfig
from modelyard.graphs import build_plan_and_implement_graph, build_route_graph
from modelyard.nodes import Context
from modelyard.nodes.classifiers import LLMClassifier
from modelyard.state import TaskStatus
from modelyard.testing.server import Fault, LocalModelServer

pytestmark = pytest.mark.protocol


class ChatStarts(BaseCallbackHandler):
    """Records what each chat-model run starts with: its name, tags and metadata."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.runs.append(
            {"name": kwargs.get("name"), "tags": tags or [], "metadata": metadata or {}}
        )


async def test_each_call_names_its_task_type_model_and_attempt(
    server: LocalModelServer, server_config: ModelyardConfig
) -> None:
    handler = ChatStarts()
    graph = build_plan_and_implement_graph(server_config).compile()
    state = await graph.ainvoke(
        {"prompt": "Write a function that parses ISO dates", "task_id": "trace-1"},
        {"callbacks": [handler]},
        context=Context(config=server_config),
    )

    assert state["status"] is TaskStatus.COMPLETED
    assert [run["name"] for run in handler.runs] == ["plan:reasoner", "implement:coder"]
    plan, implement = (run["metadata"] for run in handler.runs)
    assert plan["modelyard_task_id"] == implement["modelyard_task_id"] == "trace-1"
    assert plan["modelyard_task_type"] == "code_generation"
    assert (plan["modelyard_step"], plan["modelyard_model"]) == ("plan", "reasoner")
    assert (implement["modelyard_step"], implement["modelyard_model"]) == ("implement", "coder")
    assert plan["modelyard_attempt"] == implement["modelyard_attempt"] == 1
    assert plan["modelyard_selection_reason"] == state["selections"]["plan"].reason
    assert plan["modelyard_fallback_reason"] is None and plan["modelyard_fallback_from"] is None
    assert plan["langgraph_node"] == "plan"  # LangGraph's own metadata stays
    assert {"modelyard:plan", "model:reasoner", "task_type:code_generation"} <= set(
        handler.runs[0]["tags"]
    )
    assert "fallback" not in handler.runs[0]["tags"]


async def test_a_fallback_call_says_which_model_failed_and_why(
    server: LocalModelServer, server_config: ModelyardConfig
) -> None:
    server.inject_fault(Fault.status_code(500), model=REASONING_MODEL, times=None)
    handler = ChatStarts()
    graph = build_route_graph(server_config).compile()
    state = await graph.ainvoke(
        {"prompt": "Explain how a hash table works", "task_id": "trace-2"},
        {"callbacks": [handler], "tags": ["mine"], "metadata": {"user": "ada"}},
        context=Context(config=server_config),
    )

    assert state["status"] is TaskStatus.COMPLETED and state["assigned_model"] == "coder"
    names = [run["name"] for run in handler.runs]
    retries = server_config.retry.max_attempts
    assert names == ["answer:reasoner"] * retries + ["answer:coder"]
    attempts = [run["metadata"]["modelyard_attempt"] for run in handler.runs]
    assert attempts == [*range(1, retries + 1), 1]
    first, fallback = handler.runs[0], handler.runs[-1]
    assert first["metadata"]["modelyard_fallback_reason"] is None
    meta = fallback["metadata"]
    assert meta["modelyard_task_id"] == "trace-2"
    assert meta["modelyard_task_type"] == "explanation"
    assert meta["modelyard_fallback_from"] == "reasoner"
    assert meta["modelyard_fallback_reason"].startswith("reasoner failed: server_error")
    assert "fallback" in fallback["tags"] and "model:coder" in fallback["tags"]
    # The caller's own tags and metadata go along with modelyard's.
    assert "mine" in fallback["tags"] and meta["user"] == "ada"


async def test_the_llm_classifier_call_is_traced_as_classify(
    server: LocalModelServer, server_config: ModelyardConfig
) -> None:
    server.script(REASONING_MODEL, ['{"task_type": "planning", "confidence": 0.9}'])
    handler = ChatStarts()
    classifier = LLMClassifier(Context(config=server_config).models(), "reasoner")

    async def classify(text: str) -> str:
        return (await classifier.aclassify(text)).task_type.value

    answer = await RunnableLambda(classify).ainvoke(
        "Lay out the steps to move our database", {"callbacks": [handler]}
    )

    assert answer == "planning"
    (run,) = handler.runs
    assert run["name"] == "classify:reasoner"
    assert {"modelyard:classify", "model:reasoner"} <= set(run["tags"])
    assert run["metadata"]["modelyard_step"] == "classify"
