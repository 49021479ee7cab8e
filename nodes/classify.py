"""The classify node: check the task and decide its type (the caller's, or the classifier's)."""

from __future__ import annotations

import logging
import time
from typing import Any

from langgraph.runtime import Runtime
from pydantic import ValidationError

from modelyard.configs import GenerationOptions
from modelyard.nodes.classifiers import KeywordClassifier, classifier_step
from modelyard.nodes.context import Context
from modelyard.state import (
    Classification,
    ClassifierStep,
    ConfigError,
    InvalidTaskError,
    Requirements,
    TaskContext,
    TaskEvent,
    TaskState,
    TaskStatus,
    TaskType,
)
from modelyard.state.task import new_task_id, utcnow

log = logging.getLogger(__name__)


async def classify_task(state: TaskState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Check the task, then set its type: the caller's if given, else the configured
    classifier's (`classifier.method`: keyword, embedding, llm or hybrid).

    The run's context may give the task type (`Context.task_type`) and a model for every
    step (`Context.model`) when the input gives none: the fields LangGraph Studio edits.

    Raises:
        InvalidTaskError: an empty prompt, an unknown task type or malformed requirements.
        UnknownModelError: `Context.model` names no configured model.
    """
    prompt = state.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidTaskError("the prompt is empty; give the task's text")
    given = state.get("task_type") or runtime.context.task_type
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
        classification = await _classify(prompt, runtime.context)
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
        f"(confidence {classification.confidence:.2f})" + _cascade(classification),
        data={
            "method": classification.method,
            "confidence": classification.confidence,
            "alternatives": [a.model_dump(mode="json") for a in classification.alternatives],
            "steps": [s.model_dump(mode="json") for s in classification.steps],
        },
    )
    pinned: dict[str, Any] = {}
    if not state.get("model") and runtime.context.model:
        runtime.context.models().get(runtime.context.model, where="context.model")
        pinned["model"] = runtime.context.model
    return {
        **pinned,
        "task_id": state.get("task_id") or new_task_id(),
        "task_type": classification.task_type,
        "classification": classification,
        "requirements": requirements,
        "context": context,
        "status": TaskStatus.RUNNING,
        "started_at": utcnow(),
        "history": [event],
    }


async def _classify(prompt: str, context: Context) -> Classification:
    """Return the configured classifier's decision; keywords when it cannot be built."""
    try:
        classifier = context.classifier()
    except (ConfigError, OSError, ValueError) as exc:  # a bad or unreadable exemplar file, ...
        log.warning("classifying by keywords: the configured classifier failed (%s)", exc)
        started = time.perf_counter()
        decision = KeywordClassifier().classify(prompt)
        failed = ClassifierStep(
            method=context.models().config.classifier.method, outcome="failed", note=str(exc)
        )
        decided = classifier_step(decision, "decided", started)
        return decision.model_copy(update={"steps": [failed, decided]})
    return await classifier.aclassify(prompt)


def _cascade(classification: Classification) -> str:
    """Return `; after keyword 0.41 (unsure)` for every method tried that did not decide."""
    others = [
        f"{s.method} {s.confidence:.2f} ({s.outcome})"
        if s.confidence is not None
        else f"{s.method} ({s.outcome}: {s.note[:200]})"
        for s in classification.steps
        if s.outcome != "decided"
    ]
    return f"; also tried {', '.join(others)}" if others else ""
