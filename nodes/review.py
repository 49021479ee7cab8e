"""The review loop's nodes: review the code, revise it on the comments, finish the task."""

from __future__ import annotations

from typing import Any, Literal

from modelyard.nodes.work import StepReply, WorkNode, work_node
from modelyard.routers.review import (
    EXPECTED_VERDICT,
    UnreadableVerdictError,
    after_review,
    coder_model,
    format_comments,
    parse_verdict,
    rounds_allowed,
)
from modelyard.state import (
    ModelCallError,
    ModelErrorKind,
    ReviewRound,
    Step,
    TaskEvent,
    TaskState,
    TaskStatus,
)
from modelyard.state.task import utcnow

#: How much of an unreadable review its error quotes.
QUOTED_CHARS = 200

#: The author of code that came with the task, in its review rounds.
CALLER = "caller"

#: The plan the implement template shows when the graph has no plan step.
NO_PLAN = "(none: choose the approach yourself)"


def implement_node() -> WorkNode:
    """Return the node that writes round 1's code on the model selected for `implement`.

    The implement template shows the plan; without a plan step it says there is none.
    """
    return work_node(Step.IMPLEMENT, values=_implement_values)


def review_node() -> WorkNode:
    """Return the node that reviews the latest code on the reviewer selected for `review`.

    It appends a `ReviewRound` (code, coder, reviewer, verdict, comments) to `rounds`. A
    review without a readable verdict is a `malformed_response` failure of the reviewer:
    retried, then the step falls back to another reviewer.
    """
    return work_node(Step.REVIEW, values=_review_values, finish=_record_review)


def revise_node() -> WorkNode:
    """Return the node that revises the code on the last round's comments.

    It runs on the model that wrote the code (see `routers.review.coder_model`) and
    writes the new code to `implementation`, for the next round's review.
    """
    return work_node(Step.REVISE, values=_revise_values, model=coder_model, finish=_record_revision)


async def review_route(state: TaskState) -> Literal["revise", "finish"]:
    """Route after a review (`routers.review.after_review`): finish, or revise.

    Async only so that LangGraph calls it on the event loop: LangGraph runs a plain edge
    function on a worker thread, two hand-offs through the loop per round for a comparison.
    """
    return after_review(state)


async def finish_review(state: TaskState) -> dict[str, Any]:
    """Complete the task with the last round's code, approved or not.

    A loop that reached `max_rounds` without approval still completes, with a
    `review_stopped` event that gives the last verdict and its comments.
    """
    last = state["rounds"][-1]
    events = []
    if not last.approved:
        events.append(
            TaskEvent(
                kind="review_stopped",
                step=Step.REVIEW.value,
                model=last.reviewer,
                detail=(
                    f"stopped after {last.round} round{'s' if last.round != 1 else ''} "
                    f"(max_rounds {rounds_allowed(state)}) without approval; the last "
                    f"verdict, {last.verdict}, had {_count(last.comments)}"
                ),
                data={
                    "round": last.round,
                    "max_rounds": rounds_allowed(state),
                    "verdict": str(last.verdict),
                    "comments": last.comments,
                },
            )
        )
    approval = "approved" if last.approved else "not approved"
    events.append(
        TaskEvent(
            kind="completed",
            step=Step.REVIEW.value,
            model=last.coder,
            detail=f"code by {last.coder}, {approval} in round {last.round}",
            data={"approved": last.approved, "rounds": last.round},
        )
    )
    return {
        "implementation": last.code,
        "result": last.code,
        "assigned_model": last.coder,
        "status": TaskStatus.COMPLETED,
        "finished_at": utcnow(),
        "error": None,
        "history": events,
    }


async def finish_code_review(state: TaskState) -> dict[str, Any]:
    """Complete a review of the caller's code (the `code_review` graph) with its verdict.

    The result is the reviewer's answer; the task's last round holds the verdict and the
    comments.
    """
    last = state["rounds"][-1]
    event = TaskEvent(
        kind="completed",
        step=Step.REVIEW.value,
        model=last.reviewer,
        detail=f"{last.reviewer}: {last.verdict.value}, {_count(last.comments)}",
        data={"verdict": last.verdict.value, "comments": last.comments},
    )
    return {
        "result": last.review,
        "assigned_model": last.reviewer,
        "status": TaskStatus.COMPLETED,
        "finished_at": utcnow(),
        "error": None,
        "history": [event],
    }


def _implement_values(state: TaskState) -> dict[str, Any]:
    return {"prompt": state["prompt"], "plan": state.get("plan") or NO_PLAN}


def _review_values(state: TaskState) -> dict[str, Any]:
    return {
        "prompt": state["prompt"],
        "plan": state.get("plan", ""),
        "code": state["implementation"],
        "round": len(state.get("rounds") or []) + 1,
    }


def _revise_values(state: TaskState) -> dict[str, Any]:
    rounds = state["rounds"]
    return {
        "prompt": state["prompt"],
        "plan": state.get("plan", ""),
        "code": state["implementation"],
        "comments": format_comments(rounds[-1].comments),
        "round": len(rounds) + 1,
    }


def _record_review(state: TaskState, reply: StepReply) -> dict[str, Any]:
    try:
        verdict, comments = parse_verdict(reply.text)
    except UnreadableVerdictError as exc:
        quoted = reply.text.strip()
        if len(quoted) > QUOTED_CHARS:
            quoted = quoted[:QUOTED_CHARS] + "..."
        raise ModelCallError(
            ModelErrorKind.MALFORMED_RESPONSE,
            model=reply.model,
            url=reply.url,
            detail=f"{exc}; it answered: {quoted!r}",
            hint=(
                f"If {reply.model!r} keeps answering so, give it a review prompt of its own "
                f"(models.{reply.model}.prompts.review in the config, asking for "
                f"{EXPECTED_VERDICT}) or take code_review out of its roles"
            ),
        ) from exc
    number = len(state.get("rounds") or []) + 1
    entry = ReviewRound(
        round=number,
        code=state["implementation"],
        coder=_author(state),
        reviewer=reply.model,
        verdict=verdict,
        comments=comments,
        review=reply.text,
    )
    if entry.approved:
        detail = f"{reply.model} approves the code of round {number}"
    else:
        detail = f"{reply.model} requests changes in round {number}: {_count(comments)}"
    event = TaskEvent(
        kind="review",
        step=Step.REVIEW.value,
        model=reply.model,
        detail=detail,
        data={
            "round": number,
            "verdict": verdict.value,
            "comments": comments,
            "coder": entry.coder,
            "reviewer": reply.model,
        },
    )
    return {"rounds": [entry], "history": [event]}


def _record_revision(state: TaskState, reply: StepReply) -> dict[str, Any]:
    return {"implementation": reply.text}


def _author(state: TaskState) -> str:
    """Return the model that wrote the latest code: the last implement or revise call's."""
    calls = [c for c in state.get("calls") or [] if c.step in ("implement", "revise")]
    if calls:
        return calls[-1].model
    if "implement" not in (state.get("selections") or {}):
        return CALLER  # the code came with the task (the code_review graph)
    return coder_model(state)


def _count(comments: list[str]) -> str:
    return f"{len(comments)} comment{'s' if len(comments) != 1 else ''}"
