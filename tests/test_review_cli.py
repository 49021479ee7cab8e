"""CLI tests of `modelyard run --review`: the installed command against the local server."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import CODING_MODEL, REASONING_MODEL
from support import run_modelyard as modelyard

from modelyard.testing.server import LocalModelServer

pytestmark = [pytest.mark.cli, pytest.mark.usefixtures("stats_database")]

PROMPT = "Write a Python function that validates email addresses"
FIRST = "def validate(address):\n    return '@' in address"
FIXED = "def validate(address: str) -> bool:\n    return address.count('@') == 1"
CHANGES = {
    "verdict": "request_changes",
    "comments": ["require exactly one @", "add type hints", "reject empty parts"],
}
APPROVE = {"verdict": "approve", "comments": []}


def coder_script(reviews: list[dict[str, Any]]) -> Callable[[str, list[dict[str, Any]]], str]:
    """Return the coder's replies: the next review for a review prompt, else code."""
    verdicts: Iterator[dict[str, Any]] = iter(reviews)
    last: list[dict[str, Any]] = [reviews[-1]]

    def reply(model: str, messages: list[dict[str, Any]]) -> str:
        prompt = messages[-1]["content"]
        if "Code (round" in prompt:
            last[0] = next(verdicts, last[0])
            return json.dumps(last[0])
        return FIXED if "review comment" in prompt else FIRST

    return reply


def test_run_review_shows_each_round_as_it_happens(server: LocalModelServer) -> None:
    server.script(CODING_MODEL, coder_script([CHANGES, APPROVE]))

    result = modelyard("run", "--review", PROMPT, ollama=server.url)

    assert result.returncode == 0, result.stderr
    err = result.stderr
    order = [
        "implement · coder",
        "review · coder",
        "round 1: coder requests changes (3 comments):",
        "  - require exactly one @",
        "round 2: coder revises after 3 comments",
        "revise · coder",
        "✓ approved in round 2 by coder",
    ]
    positions = [err.index(line) for line in order]
    assert positions == sorted(positions), err
    assert err.count("review · coder") == 2
    assert FIRST in result.stdout and FIXED in result.stdout
    summary = err.strip().splitlines()[-1]
    assert "model=implement:coder → review:coder → revise:coder → review:coder" in summary
    assert summary.endswith("rounds=2 approved")


def test_run_plan_review_json_returns_the_plan_every_round_and_the_verdicts(
    server: LocalModelServer,
) -> None:
    server.script(REASONING_MODEL, ["1. split at @\n2. check both parts"])
    server.script(CODING_MODEL, coder_script([CHANGES, APPROVE]))

    result = modelyard("run", "--plan", "--review", "--json", PROMPT, ollama=server.url)

    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["status"] == "completed"
    assert payload["plan"] == "1. split at @\n2. check both parts"
    assert payload["content"] == payload["implementation"] == FIXED
    assert payload["model"] == "coder"
    assert payload["approved"] is True
    assert payload["rounds"] == [
        {"round": 1, "code": FIRST, "coder": "coder", "reviewer": "coder",
         "verdict": "request_changes", "comments": CHANGES["comments"]},
        {"round": 2, "code": FIXED, "coder": "coder", "reviewer": "coder",
         "verdict": "approve", "comments": []},
    ]  # fmt: skip
    assert payload["models"] == {
        "plan": "reasoner", "implement": "coder", "review": "coder", "revise": "coder",
    }  # fmt: skip
    assert payload["attempts"] == 5
    assert [c["step"] for c in payload["calls"]] == [
        "plan", "implement", "review", "revise", "review",
    ]  # fmt: skip


def test_run_review_stops_at_max_rounds_and_still_succeeds(server: LocalModelServer) -> None:
    server.script(CODING_MODEL, coder_script([CHANGES]))

    as_json = modelyard("run", "--review", "--max-rounds", "2", "--json", PROMPT, ollama=server.url)
    streamed = modelyard("run", "--review", "--max-rounds", "1", PROMPT, ollama=server.url)

    assert as_json.returncode == 0, as_json.stderr
    payload = json.loads(as_json.stdout)
    assert payload["status"] == "completed" and payload["approved"] is False
    assert [r["verdict"] for r in payload["rounds"]] == ["request_changes"] * 2
    assert payload["content"] == FIXED
    assert "plan" not in payload
    assert streamed.returncode == 0, streamed.stderr
    assert "round 2: coder revises" not in streamed.stderr  # one round only: no revision
    assert "stopped after 1 round (max_rounds 1) without approval" in streamed.stderr
    assert streamed.stderr.strip().splitlines()[-1].endswith("rounds=1 unapproved")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--max-rounds", "2"], "--max-rounds applies to the review loop; add --review"),
        (["--review", "--max-rounds", "0"], "--max-rounds"),
    ],
)
def test_bad_review_options_exit_2(server: LocalModelServer, args: list[str], says: str) -> None:
    result = modelyard("run", *args, PROMPT, ollama=server.url)
    assert result.returncode == 2
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    assert server.requests == []
