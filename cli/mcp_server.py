"""`modelyard mcp`: modelyard's graphs as MCP tools, over stdio or streamable HTTP.

The tools (the official `mcp` SDK's `MCPServer`): `run_task`, `plan_and_implement`,
`review` and `list_models`. Each call runs a graph with the server's config and stats store;
its optional model parameters pin a configured model for that call only, so two calls with
different models run side by side. An unknown model, task type or an empty task is a tool
error (`is_error`) that says what to pass instead; so is a task whose every model failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import BaseModel, Field

from modelyard.configs.persistence import open_store
from modelyard.graphs import (
    build_code_review_graph,
    build_plan_and_implement_graph,
    build_route_graph,
)
from modelyard.graphs.run import recursion_limit
from modelyard.nodes import Context
from modelyard.state import ModelyardError, Task, TaskStatus, TaskType

if TYPE_CHECKING:
    from langgraph.graph.state import CompiledStateGraph
    from langgraph.store.base import BaseStore
    from mcp.server import MCPServer

log = logging.getLogger(__name__)
T = TypeVar("T")

INSTRUCTIONS = """\
modelyard routes each task to the configured model that suits it: a reasoning model plans
and explains, a coding model writes and reviews code; a failing model is retried, then
replaced by the next best one. Call list_models to see the models; pass one by name to pin
it for a call. run_task answers anything; plan_and_implement plans with one model and
writes the code with another; review reviews code and returns a verdict with comments."""

TASK_TYPES = ", ".join(t.value for t in TaskType)


class TaskAnswer(BaseModel):
    """What `run_task` returns."""

    task_id: str
    task_type: str = Field(description=f"How the task was classified: one of {TASK_TYPES}.")
    model: str = Field(description="The configured model that answered.")
    result: str
    failed_models: list[str] = Field(
        default_factory=list, description="Models that failed the task before `model` answered."
    )
    seconds: float = Field(description="Wall time of the call.")


class PlanAndCode(BaseModel):
    """What `plan_and_implement` returns."""

    task_id: str
    plan: str
    code: str
    planner: str = Field(description="The model that wrote the plan.")
    coder: str = Field(description="The model that wrote the code.")
    failed_models: list[str] = Field(default_factory=list)
    seconds: float


class CodeReview(BaseModel):
    """What `review` returns."""

    task_id: str
    verdict: str = Field(description="approve, or request_changes.")
    comments: list[str] = Field(description="One specific change per comment.")
    reviewer: str = Field(description="The model that reviewed the code.")
    review: str = Field(description="The reviewer's whole answer.")
    seconds: float


class ModelInfo(BaseModel):
    """One configured model, as `list_models` shows it."""

    name: str = Field(description="The name to pass as a tool's model parameter.")
    model: str = Field(description="The provider's model id.")
    provider: str
    base_url: str
    roles: list[str] = Field(description="Task types it is preferred for.")
    context_window: int


class ToolRunner:
    """Runs the tools' graphs with one context and one stats store, for the server's life."""

    def __init__(self, context: Context, store: BaseStore) -> None:
        self.context = context
        self.store = store
        config = context.models().config
        self.graphs: dict[str, CompiledStateGraph[Any, Any, Any, Any]] = {
            "route": build_route_graph(config).compile(store=store),
            "plan_and_implement": build_plan_and_implement_graph(config).compile(store=store),
            "code_review": build_code_review_graph(config).compile(store=store),
        }

    async def run_task(
        self, task: str, model: str | None = None, task_type: str | None = None
    ) -> TaskAnswer:
        started = time.perf_counter()
        state = await self._run("route", task, model=model, task_type=task_type)
        return TaskAnswer(
            task_id=state["task_id"],
            task_type=_type_of(state),
            model=state["assigned_model"],
            result=state["result"],
            failed_models=_failed(state),
            seconds=round(time.perf_counter() - started, 3),
        )

    async def plan_and_implement(
        self, task: str, reasoning_model: str | None = None, coding_model: str | None = None
    ) -> PlanAndCode:
        started = time.perf_counter()
        steps = {"plan": reasoning_model, "implement": coding_model}
        state = await self._run("plan_and_implement", task, steps=steps)
        selections = state["selections"]
        return PlanAndCode(
            task_id=state["task_id"],
            plan=state["plan"],
            code=state["implementation"],
            planner=selections["plan"].model,
            coder=selections["implement"].model,
            failed_models=_failed(state),
            seconds=round(time.perf_counter() - started, 3),
        )

    async def review(self, code: str, model: str | None = None, task: str = "") -> CodeReview:
        started = time.perf_counter()
        if not code.strip():
            raise ToolProblem("the code to review is empty; pass the code as `code`")
        prompt = task.strip() or "(not given: judge the code on its own)"
        state = await self._run("code_review", prompt, steps={"review": model}, implementation=code)
        last = state["rounds"][-1]
        return CodeReview(
            task_id=state["task_id"],
            verdict=last.verdict.value,
            comments=last.comments,
            reviewer=last.reviewer,
            review=last.review,
            seconds=round(time.perf_counter() - started, 3),
        )

    def list_models(self) -> list[ModelInfo]:
        registry = self.context.models()
        return [
            ModelInfo(
                name=m.name,
                model=m.model,
                provider=m.provider,
                base_url=registry.base_url(m.name),
                roles=[role.value for role in m.roles],
                context_window=m.context_window,
            )
            for m in registry.config.models
        ]

    async def _run(
        self,
        graph: str,
        prompt: str,
        *,
        model: str | None = None,
        task_type: str | None = None,
        steps: dict[str, str | None] | None = None,
        implementation: str | None = None,
    ) -> dict[str, Any]:
        """Check the arguments, run `graph`, and return its final state (completed)."""
        if not prompt.strip():
            raise ToolProblem("the task is empty; pass what you want done as `task`")
        registry = self.context.models()
        pinned = {step: name for step, name in (steps or {}).items() if name}
        for name in [model, *pinned.values()]:
            if name:
                _check_model(registry.names, name)
        kind = _task_type(task_type)
        task = Task(prompt=prompt, model=model, task_type=kind)
        payload: dict[str, Any] = dict(task.to_input())
        if pinned:
            payload["step_models"] = pinned
        if implementation is not None:
            payload["implementation"] = implementation
        state: dict[str, Any] = await self.graphs[graph].ainvoke(
            payload,
            {"recursion_limit": recursion_limit(task, registry.config)},
            context=self.context,
        )
        if state.get("status") is not TaskStatus.COMPLETED:
            error = state.get("error") or {}
            message = error.get("message") or "it ended without a result"
            raise ToolProblem(f"the task failed: {message}")
        return state


class ToolProblem(Exception):
    """A tool call modelyard cannot carry out; the caller gets its message as a tool error."""


def build_mcp_server(runner: ToolRunner) -> MCPServer:
    """Return the MCP server whose tools call `runner`."""
    from mcp.server import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server: MCPServer = MCPServer("modelyard", instructions=INSTRUCTIONS)

    @server.tool()
    async def run_task(
        task: Annotated[str, Field(description="What to do, in plain words.")],
        model: Annotated[
            str | None,
            Field(description="A configured model (see list_models); default: the best one."),
        ] = None,
        task_type: Annotated[
            str | None,
            Field(description=f"Skip classification: one of {TASK_TYPES}."),
        ] = None,
    ) -> TaskAnswer:
        """Run a task on the model that suits it (or on `model`) and return its answer.

        The task is classified, routed to the best model for its type, retried and, if that
        model fails, handed to the next best one.
        """
        return await _answer(runner.run_task(task, model, task_type))

    @server.tool()
    async def plan_and_implement(
        task: Annotated[str, Field(description="The code to write, in plain words.")],
        reasoning_model: Annotated[
            str | None, Field(description="The model that plans; default: the best planner.")
        ] = None,
        coding_model: Annotated[
            str | None, Field(description="The model that writes the code; default: the best.")
        ] = None,
    ) -> PlanAndCode:
        """Plan the task with a reasoning model, then implement the plan with a coding model."""
        return await _answer(runner.plan_and_implement(task, reasoning_model, coding_model))

    @server.tool()
    async def review(
        code: Annotated[str, Field(description="The code to review.")],
        model: Annotated[
            str | None, Field(description="The reviewing model; default: the best reviewer.")
        ] = None,
        task: Annotated[str, Field(description="What the code should do (optional).")] = "",
    ) -> CodeReview:
        """Review code: a verdict (approve or request_changes) and specific comments."""
        return await _answer(runner.review(code, model, task))

    @server.tool()
    async def list_models() -> list[ModelInfo]:
        """List the configured models: the names the tools' model parameters take."""
        try:
            return runner.list_models()
        except ModelyardError as exc:  # the config file was edited into an invalid one
            raise ToolError(str(exc)) from exc

    return server


async def serve(
    config_file: str | None, *, http: bool = False, host: str = "127.0.0.1", port: int = 8000
) -> None:
    """Serve the tools until the client hangs up (stdio) or the process is stopped (HTTP).

    Raises:
        ConfigError: the config is invalid (before anything is served).
    """
    context = Context(config_file=config_file)
    settings = context.models().config
    async with open_store(settings.persistence) as store:
        server = build_mcp_server(ToolRunner(context, store))
        if http:
            await server.run_streamable_http_async(host=host, port=port)
        else:
            await server.run_stdio_async()


def run_server(
    config_file: str | None, *, http: bool = False, host: str = "127.0.0.1", port: int = 8000
) -> None:
    """Run `serve` in a fresh event loop (the `modelyard mcp` command)."""
    asyncio.run(serve(config_file, http=http, host=host, port=port))


async def _answer(call: Awaitable[T]) -> T:
    """Await a tool's work; modelyard's errors become tool errors the caller can read."""
    from mcp.server.mcpserver.exceptions import ToolError

    try:
        return await call
    except (ToolProblem, ModelyardError) as exc:
        raise ToolError(str(exc)) from exc


def _check_model(names: list[str], name: str) -> None:
    if name not in names:
        raise ToolProblem(
            f"unknown model {name!r}; the configured models are: {', '.join(names)} "
            f"(list_models shows them)"
        )


def _task_type(value: str | None) -> TaskType | None:
    if not value:
        return None
    try:
        return TaskType(value.strip().lower())
    except ValueError:
        raise ToolProblem(f"unknown task type {value!r}; expected one of: {TASK_TYPES}") from None


def _type_of(state: dict[str, Any]) -> str:
    kind = state.get("task_type")
    return str(kind.value if isinstance(kind, TaskType) else kind)


def _failed(state: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(f.model for f in state.get("failures") or []))
