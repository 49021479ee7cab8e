"""The review loop's decisions: read a reviewer's verdict, and whether to revise or finish.

Pure: text and state in, decisions out; nothing here calls a model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, Literal

from modelyard.state import DEFAULT_MAX_ROUNDS, TaskState, Verdict

#: What a review must contain, for error messages.
EXPECTED_VERDICT = (
    'a JSON object {"verdict": "approve" or "request_changes", "comments": ["<a specific '
    'change>", ...]}'
)

#: Spellings of each verdict that reviewers use, after lowercasing and turning spaces and
#: hyphens into underscores.
VERDICT_SPELLINGS: dict[str, Verdict] = {
    **dict.fromkeys(
        ("approve", "approved", "approves", "approval", "accept", "accepted", "lgtm"),
        Verdict.APPROVE,
    ),
    **dict.fromkeys(
        (
            "request_changes", "requests_changes", "request_change", "changes_requested",
            "changes_required", "changes_needed", "needs_changes", "need_changes", "reject",
            "rejected", "revise",
        ),
        Verdict.REQUEST_CHANGES,
    ),
}  # fmt: skip

#: Keys a comment given as an object may keep its text under.
_COMMENT_TEXT_KEYS = ("comment", "message", "text", "change", "issue", "description")

#: A verdict written without valid JSON around it: `"verdict": "approve"`, `verdict: approve`.
_LOOSE_VERDICT = re.compile(
    r"""["']?verdict["']?\s*[:=]\s*["']?([A-Za-z][A-Za-z _-]*)["']?""", re.IGNORECASE
)


class UnreadableVerdictError(ValueError):
    """A review whose verdict cannot be read; says what was expected."""


def parse_verdict(text: str) -> tuple[Verdict, list[str]]:
    """Return the verdict and the comments of a review.

    The verdict is the last JSON object in the text with a `verdict` key (inside code
    fences or after reasoning text too); its spelling may vary (`APPROVE`, `approved`,
    `request changes`, `changes_requested`). Comments may be a list or a single string.
    A request for changes without comments takes the text around the object as its one
    comment.

    Raises:
        UnreadableVerdictError: no verdict in the text, an unknown verdict, or a request
            for changes with nothing to change.
    """
    found = _last_verdict_object(text)
    if found is None:
        verdict = _loose_verdict(text)
        comments, rest = [], _LOOSE_VERDICT.sub("", text)
    else:
        obj, start, end = found
        verdict = _verdict(_get(obj, "verdict"))
        comments = _comments(_get(obj, "comments", "comment"))
        rest = text[:start] + text[end:]
    if verdict is Verdict.REQUEST_CHANGES and not comments:
        leftover = _strip_fences(rest)
        if not leftover:
            raise UnreadableVerdictError(
                f"the review requests changes but names none; expected {EXPECTED_VERDICT}"
            )
        comments = [leftover]
    return verdict, comments


def format_comments(comments: list[str]) -> str:
    """Return review comments as a bulleted list, for the revise prompt."""
    return "\n".join(f"- {comment}" for comment in comments) or "- (no comments)"


def rounds_allowed(state: TaskState) -> int:
    """Return the task's most review rounds (at least one)."""
    return max(1, int(state.get("max_rounds") or DEFAULT_MAX_ROUNDS))


def review_finished(verdict: Verdict | str, round_number: int, max_rounds: int) -> bool:
    """Return whether the loop ends after a round: approved, or its last round reviewed."""
    return verdict == Verdict.APPROVE or round_number >= max_rounds


def after_review(state: TaskState) -> Literal["revise", "finish"]:
    """Route after a review: finish when approved or at `max_rounds`, else revise."""
    last = state["rounds"][-1]
    done = review_finished(last.verdict, last.round, rounds_allowed(state))
    return "finish" if done else "revise"


def coder_model(state: TaskState) -> str:
    """Return the model that revises the code: the implementer, unless a revision fell back.

    After a failed revision `select_reviser` chooses another model; it writes the code from
    then on. The caller's `step_models["revise"]` wins over both.
    """
    pinned = (state.get("step_models") or {}).get("revise")
    if pinned:
        return pinned
    selections = state["selections"]
    chosen = selections.get("revise") or selections["implement"]
    return chosen.model


def _verdict(value: Any) -> Verdict:
    spelling = re.sub(r"[\s-]+", "_", str(value).strip().strip(".!").lower())
    verdict = VERDICT_SPELLINGS.get(spelling)
    if verdict is None:
        raise UnreadableVerdictError(
            f"the review's verdict {value!r} is neither approve nor request_changes; "
            f"expected {EXPECTED_VERDICT}"
        )
    return verdict


def _loose_verdict(text: str) -> Verdict:
    """Return the last `verdict: ...` written outside valid JSON that names a verdict."""
    for capture in reversed(_LOOSE_VERDICT.findall(text)):
        words = re.split(r"[\s_-]+", capture.strip())
        for length in (3, 2, 1):
            verdict = VERDICT_SPELLINGS.get("_".join(words[:length]).lower())
            if verdict is not None:
                return verdict
    raise UnreadableVerdictError(f"no verdict in the review; expected {EXPECTED_VERDICT}")


def _comments(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    comments = []
    for item in items:
        if isinstance(item, dict):
            text = next((item[k] for k in _COMMENT_TEXT_KEYS if item.get(k)), None)
            item = text if text is not None else json.dumps(item)
        text = str(item).strip()
        if text:
            comments.append(text)
    return comments


def _get(obj: dict[str, Any], *keys: str) -> Any:
    """Return the value of the first of `keys` in `obj`, in any letter case."""
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    return next((lowered[k] for k in keys if k in lowered), None)


def _last_verdict_object(text: str) -> tuple[dict[str, Any], int, int] | None:
    """Return the last JSON object with a `verdict` key, with where its outermost value is."""
    found = None
    for value, start, end in _json_values(text):
        obj = next((o for o in _dicts(value) if _get(o, "verdict") is not None), None)
        if obj is not None:
            found = (obj, start, end)
    return found


def _json_values(text: str) -> Iterator[tuple[Any, int, int]]:
    """Yield each top-level JSON object in `text`, with its start and end."""
    decoder = json.JSONDecoder()
    position = text.find("{")
    while position != -1:
        try:
            value, end = decoder.raw_decode(text, position)
        except ValueError:
            position = text.find("{", position + 1)
            continue
        yield value, position, end
        position = text.find("{", end)


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    """Yield `value` and every object nested in it, outermost first."""
    if isinstance(value, dict):
        yield value
        for inner in value.values():
            yield from _dicts(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _dicts(inner)


def _strip_fences(text: str) -> str:
    return re.sub(r"```[A-Za-z]*", "", text).strip()
