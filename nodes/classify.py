"""The classify node: check the task and decide its type (the caller's, or by keywords)."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime
from pydantic import ValidationError

from modelyard.configs import GenerationOptions
from modelyard.nodes.context import Context
from modelyard.routers import classify_by_keywords
from modelyard.state import (
    Classification,
    InvalidTaskError,
    Requirements,
    TaskContext,
    TaskEvent,
    TaskState,
    TaskStatus,
    TaskType,
)
from modelyard.state.task import new_task_id, utcnow


async def classify_task(state: TaskState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Check the task, then set its type: the caller's if given, else the keyword classifier's.

    Raises:
        InvalidTaskError: an empty prompt, an unknown task type or malformed requirements.
    """
    prompt = state.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidTaskError("the prompt is empty; give the task's text")
    given = state.get("task_type")
    if given:
        try:
            task_type = TaskType(given)
        except ValueError:
            choices = ", ".join(t.value for t in TaskType)
            raise InvalidTaskError(
                f"unknown task type {given!r}; expected one of: {choices}"
            ) from None
        classification = Classification(
            task_type=task_type, confidence=1.0, method="caller", scores={task_type: 1.0}
        )
    else:
        classification = classify_by_keywords(prompt)
    try:
        requirements = Requirements.model_validate(state.get("requirements") or {})
        context = TaskContext.model_validate(state.get("context") or {})
    except ValidationError as exc:
        raise InvalidTaskError(f"the task's requirements or context are malformed: {exc}") from exc
    try:
        GenerationOptions.model_validate(context.options)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidTaskError(f"the task's generation options are invalid ({problems})") from None
    event = TaskEvent(
        kind="classified",
        detail=f"{classification.task_type.value} by {classification.method} "
        f"(confidence {classification.confidence:.2f})",
        data={"method": classification.method, "confidence": classification.confidence},
    )
    return {
        "task_id": state.get("task_id") or new_task_id(),
        "task_type": classification.task_type,
        "classification": classification,
        "requirements": requirements,
        "context": context,
        "status": TaskStatus.RUNNING,
        "started_at": utcnow(),
        "history": [event],
    }
