"""The select nodes: pick the model for a step from the config, by role and capability."""

from __future__ import annotations

from typing import Any, Protocol

from langgraph.runtime import Runtime

from modelyard.nodes.context import Context
from modelyard.routers import estimate_tokens, select_model, task_type_for_step
from modelyard.state import Requirements, Step, TaskEvent, TaskState


class SelectNode(Protocol):
    """A node that selects the model for one step."""

    async def __call__(self, state: TaskState, runtime: Runtime[Context]) -> dict[str, Any]: ...


def select_model_for(step: Step) -> SelectNode:
    """Return a node that selects the model for `step` and records why."""

    async def select(state: TaskState, runtime: Runtime[Context]) -> dict[str, Any]:
        registry = runtime.context.models()
        override = (state.get("step_models") or {}).get(step.value) or state.get("model")
        selection = select_model(
            step=step,
            task_type=task_type_for_step(step, state.get("task_type")),
            models=registry.config.models,
            requirements=state.get("requirements") or Requirements(),
            prompt_tokens=estimate_tokens(state["prompt"]),
            override=override,
        )
        event = TaskEvent(
            kind="selected",
            step=step.value,
            model=selection.model,
            detail=selection.reason,
            data={"candidates": selection.candidates, "excluded": selection.excluded},
        )
        return {"selections": {step.value: selection}, "history": [event]}

    select.__name__ = select.__qualname__ = f"select_{step.value}"
    return select
