"""Talk to a model until it answers: call it, run the tools it asks for, call it again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig

from modelyard.configs import ModelRegistry
from modelyard.nodes.calls import call_model
from modelyard.nodes.stats import StatsBook
from modelyard.nodes.tools import Workspace, build_tools, run_tool_call
from modelyard.state import ModelCall, ModelyardError, ToolCallRecord

#: Model answers with tool calls one step may give before it must answer in text.
MAX_TOOL_ROUNDS = 8


class ToolRoundsError(ModelyardError):
    """A model kept calling tools past `MAX_TOOL_ROUNDS` answers without a final answer."""

    def __init__(self, model: str, rounds: int) -> None:
        super().__init__(
            f"model {model!r} still called tools after {rounds} rounds of tool calls; its "
            "step was stopped and nothing it staged was written. Give it a narrower task, "
            "or a model that finishes with a text answer"
        )
        self.model = model

    def as_record(self) -> dict[str, Any]:
        """Return the JSON-safe record kept in the step's result."""
        return {"kind": "too_many_tool_rounds", "model": self.model, "message": str(self)}


@dataclass
class Conversation:
    """What a tool-calling exchange left: the final text, the calls made, the tools run."""

    output: str = ""
    calls: list[ModelCall] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)


async def converse(
    registry: ModelRegistry,
    name: str,
    messages: Sequence[BaseMessage],
    *,
    workspace: Workspace,
    tool_calling: bool,
    step: str,
    config: RunnableConfig,
    attempt: int,
    book: StatsBook,
    max_rounds: int = MAX_TOOL_ROUNDS,
) -> Conversation:
    """Call model `name`; while it asks for tools, run them and call it again with the results.

    With `tool_calling`, the workspace's tools are bound to the model; each call's result
    (or its error, `status="error"`) goes back as a ToolMessage. Every model call is
    recorded in the model's stats as it succeeds.

    Raises:
        ModelCallError: a model call failed.
        ToolRoundsError: the model asked for tools `max_rounds` times and again.
    """
    tools = build_tools(workspace) if tool_calling else []
    by_name = {tool.name: tool for tool in tools}
    history = list(messages)
    done = Conversation()
    for _ in range(max_rounds + 1):
        message, call = await call_model(
            registry, name, history, step=step, config=config, attempt=attempt, tools=tools
        )
        await book.record_success(call)
        done.calls.append(call)
        if not message.tool_calls:
            done.output = str(message.content)
            return done
        history.append(message)
        for tool_call in message.tool_calls:
            reply, record = await run_tool_call(by_name, tool_call)
            history.append(reply)
            done.tool_calls.append(record)
    raise ToolRoundsError(name, max_rounds)
