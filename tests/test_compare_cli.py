"""`modelyard compare`: the installed command against the local protocol server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import CODING_MODEL, REASONING_MODEL, config_text, write_config
from support import run_modelyard as modelyard

from modelyard.testing.server import Fault, LocalModelServer

pytestmark = [pytest.mark.cli, pytest.mark.usefixtures("stats_database")]

HASH_PROMPT = "Explain how a hash table works"


def test_compare_json_has_each_models_answer_and_they_ran_at_once(
    server: LocalModelServer,
) -> None:
    server.script(REASONING_MODEL, ["buckets, by the reasoner"])
    server.script(CODING_MODEL, ["buckets, by the coder"])
    for model in (REASONING_MODEL, CODING_MODEL):
        server.inject_fault(Fault.delay(0.5), model=model, times=None)

    result = modelyard("compare", "--json", HASH_PROMPT, "--models", "reasoner,coder",
                       ollama=server.url)  # fmt: skip

    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["prompt"] == HASH_PROMPT
    rows = payload["results"]
    assert [(r["model"], r["status"], r["content"]) for r in rows] == [
        ("reasoner", "completed", "buckets, by the reasoner"),
        ("coder", "completed", "buckets, by the coder"),
    ]
    assert all(r["task_type"] == "explanation" and r["tokens"]["output"] > 0 for r in rows)
    latencies = [r["latency_ms"] for r in rows]
    assert min(latencies) >= 500
    assert payload["wall_ms"] < max(latencies) + 150  # one after another: the sum, 1 s or more
    assert payload["wall_ms"] < 0.75 * sum(latencies)
    assert sorted(r.model for r in server.requests if r.fault == "delay") == sorted(
        [REASONING_MODEL, CODING_MODEL]
    )


def test_compare_prints_the_answers_side_by_side(server: LocalModelServer) -> None:
    server.script(REASONING_MODEL, ["REASONER-ANSWER"])
    server.script(CODING_MODEL, ["CODER-ANSWER"])

    result = modelyard("compare", HASH_PROMPT, "-m", "coder", "-m", "reasoner",
                       ollama=server.url)  # fmt: skip

    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if "coder" in line)
    assert header.index("coder") < header.index("reasoner")  # one column each, in order
    answers = next(line for line in result.stdout.splitlines() if "ANSWER" in line)
    assert answers.index("CODER-ANSWER") < answers.index("REASONER-ANSWER")  # side by side
    assert result.stdout.count("completed") == 2 and "tokens" in result.stdout
    assert "✓ coder answered in" in result.stderr and "✓ reasoner answered in" in result.stderr
    assert "2 models in" in result.stderr.splitlines()[-1]


def test_compare_exits_1_when_a_model_fails_and_still_shows_the_others(
    tmp_path: Path, server: LocalModelServer
) -> None:
    server.script(REASONING_MODEL, ["the reasoner's answer"])
    server.inject_fault(Fault.status_code(500), model=CODING_MODEL, times=None)
    stats = tmp_path / "stats.db"
    text = config_text(server.url) + f"persistence: {{url: '{stats}'}}\n"
    config = write_config(tmp_path, text)  # retries without waiting

    result = modelyard("compare", "--json", "-c", str(config), HASH_PROMPT, "--models",
                       "reasoner,coder", ollama=server.url)  # fmt: skip

    assert result.returncode == 1
    reasoner, coder = json.loads(result.stdout)["results"]
    assert (reasoner["status"], reasoner["content"]) == ("completed", "the reasoner's answer")
    assert (coder["status"], coder["content"]) == ("failed", None)
    assert coder["error"]["kind"] == "all_models_failed"
    assert coder["attempts"] == 3  # the config's retries, on the coder only
    assert "server_error (HTTP 500) from model 'coder'" in coder["error"]["message"]
    assert server.url in coder["error"]["message"]
    assert len(server.requests_for(REASONING_MODEL)) == 1  # no fallback for the coder's answer
    assert "1 of 2 models failed: coder" in result.stderr
    assert stats.exists()  # the stats of both models went to the config's store
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ("reasoner,gpt-9", "unknown model 'gpt-9' (--models); configured models: reasoner, coder"),
        ("coder,coder", "--models names 'coder' more than once"),
        (",", "--models names no model"),
    ],
)
def test_bad_model_lists_exit_2_saying_what_is_wrong(
    server: LocalModelServer, models: str, message: str
) -> None:
    result = modelyard("compare", HASH_PROMPT, "--models", models, ollama=server.url)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert server.requests == []
