"""CLI tests: the installed `modelyard` command, against the local protocol server."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from support import CODING_MODEL, REASONING_MODEL, config_text, write_config
from support import run_modelyard as modelyard

from modelyard.testing.server import Fault, LocalModelServer

pytestmark = [pytest.mark.cli, pytest.mark.usefixtures("stats_database")]

EMAIL_PROMPT = "Write a Python function that validates email addresses"
HASH_PROMPT = "Explain how a hash table works"


def free_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    ("prompt", "task_type", "model", "model_id"),
    [
        (EMAIL_PROMPT, "code_generation", "coder", CODING_MODEL),
        (HASH_PROMPT, "explanation", "reasoner", REASONING_MODEL),
    ],
)
def test_run_json_routes_through_the_default_config(
    server: LocalModelServer, prompt: str, task_type: str, model: str, model_id: str
) -> None:
    server.script(model_id, [f"answer from {model_id}"])

    result = modelyard("run", "--json", prompt, ollama=server.url)

    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["task_type"] == task_type
    assert payload["model"] == model
    assert payload["content"] == f"answer from {model_id}"
    assert payload["latency_ms"] > 0
    assert payload["attempts"] == 1
    assert payload["status"] == "completed"
    assert [r.model for r in server.requests if r.path == "/api/chat"] == [model_id]


def test_run_json_plan_returns_both_parts_from_both_models(server: LocalModelServer) -> None:
    server.script(REASONING_MODEL, ["1. validate input\n2. write the function"])
    server.script(CODING_MODEL, ["def validate(x): ..."])

    result = modelyard("run", "--json", "--plan", EMAIL_PROMPT, ollama=server.url)

    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["plan"] == "1. validate input\n2. write the function"
    assert payload["implementation"] == "def validate(x): ..."
    assert payload["models"] == {"plan": "reasoner", "implement": "coder"}
    assert payload["attempts"] == 2


def test_run_streams_the_answer_and_ends_with_a_summary(server: LocalModelServer) -> None:
    server.script(REASONING_MODEL, ["Keys hash to buckets; collisions chain."])

    result = modelyard("run", HASH_PROMPT, ollama=server.url)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Keys hash to buckets; collisions chain."
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("task_type=explanation model=answer:reasoner latency=")
    assert "tokens=" in last and "attempts=1" in last
    assert "answer · reasoner" in result.stderr


def test_run_plan_streams_each_step_under_its_heading(server: LocalModelServer) -> None:
    server.script(REASONING_MODEL, ["PLAN TEXT"])
    server.script(CODING_MODEL, ["CODE TEXT"])
    result = modelyard("run", "--plan", "Build a todo CLI", ollama=server.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["PLAN", "TEXT", "CODE", "TEXT"]
    assert result.stderr.index("plan · reasoner") < result.stderr.index("implement · coder")


def test_model_and_task_type_options(server: LocalModelServer) -> None:
    by_model = json.loads(
        modelyard("run", "--json", "-m", "coder", HASH_PROMPT, ollama=server.url).stdout
    )
    by_type = json.loads(
        modelyard("run", "--json", "-t", "code_review", HASH_PROMPT, ollama=server.url).stdout
    )
    assert by_model["model"] == "coder"
    assert by_type["task_type"] == "code_review" and by_type["model"] == "coder"


def test_an_unknown_model_exits_2_listing_the_configured_ones(server: LocalModelServer) -> None:
    result = modelyard("run", "-m", "gpt-9", HASH_PROMPT, ollama=server.url)
    assert result.returncode == 2
    assert "unknown model 'gpt-9'" in result.stderr
    assert "reasoner, coder" in result.stderr
    assert "Traceback" not in result.stderr
    assert server.requests == []


def test_an_empty_prompt_exits_2(server: LocalModelServer) -> None:
    result = modelyard("run", "  ", ollama=server.url)
    assert result.returncode == 2
    assert "the prompt is empty" in result.stderr


def test_an_unknown_task_type_exits_2(server: LocalModelServer) -> None:
    result = modelyard("run", "-t", "cooking", HASH_PROMPT, ollama=server.url)
    assert result.returncode == 2
    assert "cooking" in result.stderr


BAD_CONFIGS = {
    "yaml-syntax": (
        "models:\n  - name: a\n    model: ollama: x: y\n",
        [":3:", "YAML syntax error: mapping values are not allowed here"],
    ),
    "field-typo": (
        "models:\n  - name: a\n    model: ollama:x\n  - name: b\n    model: ollama:y\n"
        "    capabilities: {planing: 0.5}\n",
        ["models[1].capabilities.planing", "did you mean 'planning'"],
    ),
    "unknown-provider": ("models:\n  - name: a\n    model: acme:x\n", ["no known provider"]),
    "duplicate-name": (
        "models:\n  - name: a\n    model: ollama:x\n  - name: a\n    model: ollama:y\n",
        ["models[1].name", "already used"],
    ),
    "unknown-role": (
        "models:\n  - name: a\n    model: ollama:x\n    roles: [cooking]\n",
        ["unknown role 'cooking'"],
    ),
    "unset-env": (
        "models:\n  - name: a\n    model: ollama:x\n    api_key: ${MODELYARD_TEST_UNSET}\n",
        ["MODELYARD_TEST_UNSET is not set"],
    ),
}


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_a_bad_config_exits_2_with_one_line_per_problem(tmp_path: Path, name: str) -> None:
    text, expected = BAD_CONFIGS[name]
    path = write_config(tmp_path, text)

    result = modelyard("run", "--config", str(path), "hello")

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"modelyard: config error: {path}:")
    for fragment in expected:
        assert fragment in lines[0]
    assert "Traceback" not in result.stderr


def test_several_config_problems_are_all_reported(tmp_path: Path) -> None:
    text = (
        "models:\n  - name: a\n    model: acme:x\n    roles: [cooking]\n"
        "    options: {temprature: 1}\n  - name: a\n    model: ollama:y\n"
    )
    result = modelyard("run", "--config", str(write_config(tmp_path, text)), "hello")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4
    assert all(line.startswith("modelyard: config error:") for line in lines)


def test_a_server_that_is_down_exits_1_naming_the_url() -> None:
    url = free_url()
    result = modelyard("run", HASH_PROMPT, ollama=url)
    assert result.returncode == 1
    assert url in result.stderr
    assert "ollama serve" in result.stderr
    assert "Traceback" not in result.stderr


def test_models_lists_reachability_and_availability(server: LocalModelServer) -> None:
    server.remove_model(CODING_MODEL)
    result = modelyard("models", "--json", ollama=server.url)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["reasoner"]["reachable"] is True and rows["reasoner"]["available"] is True
    assert rows["coder"]["reachable"] is True and rows["coder"]["available"] is False
    assert rows["coder"]["roles"] == ["code_generation", "code_review"]
    table = modelyard("models", ollama=server.url)
    assert "reasoner" in table.stdout and "deepseek-coder:6.7b-instruct" in table.stdout


def test_models_says_when_the_server_is_down() -> None:
    url = free_url()
    rows = json.loads(modelyard("models", "--json", ollama=url).stdout)
    assert {row["reachable"] for row in rows} == {False}
    assert all("cannot reach" in row["detail"] for row in rows)


def test_an_openai_compatible_config_through_the_cli(
    tmp_path: Path, server: LocalModelServer
) -> None:
    path = write_config(tmp_path, config_text(server.url, protocol="openai"))
    result = modelyard("run", "--json", "--config", str(path), EMAIL_PROMPT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"] == "coder"
    # The server is asked once what it has, then the model is called.
    assert [r.path for r in server.requests] == ["/v1/models", "/v1/chat/completions"]


def test_demo_runs_offline_and_says_so() -> None:
    result = modelyard("demo")
    assert result.returncode == 0, result.stderr
    assert "offline demonstration" in result.stdout
    assert "code_generation" in result.stdout and "explanation" in result.stdout
    assert "plan by reasoner" in result.stdout and "implement by coder" in result.stdout


def test_a_retried_step_is_marked_and_its_answer_not_doubled(server: LocalModelServer) -> None:
    reply = "one two three four five six seven eight"
    server.script(REASONING_MODEL, [reply])
    server.inject_fault(Fault.cut_stream(after_chunks=2), model=REASONING_MODEL, times=1)

    result = modelyard("run", HASH_PROMPT, ollama=server.url)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == reply
    assert result.stdout.count(reply) == 1
    assert "attempt 2, the earlier output was discarded" in result.stderr
    assert "attempts=2" in result.stderr.splitlines()[-1]


def test_ollama_host_without_a_scheme_works_like_ollama_does(server: LocalModelServer) -> None:
    host = server.url.removeprefix("http://")
    rows = json.loads(modelyard("models", "--json", ollama=host).stdout)
    assert {row["reachable"] for row in rows} == {True}
    assert (
        json.loads(modelyard("run", "--json", HASH_PROMPT, ollama=host).stdout)["model"]
        == "reasoner"
    )


def test_markup_in_names_and_errors_is_printed_as_text(tmp_path: Path) -> None:
    text = "models:\n  - name: '[/bold]coder'\n    model: ollama:x\n    roles: [cooking]\n"
    result = modelyard("run", "--config", str(write_config(tmp_path, text)), "hi")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "unknown role 'cooking'" in result.stderr


def test_stats_shows_the_figures_an_earlier_run_recorded(
    server: LocalModelServer, stats_database: Path
) -> None:
    server.script(CODING_MODEL, ["def validate(x): ..."])
    server.inject_fault(Fault.status_code(500), model=CODING_MODEL, times=1)
    assert modelyard("run", "--json", EMAIL_PROMPT, ollama=server.url).returncode == 0

    table = modelyard("stats")
    listing = modelyard("stats", "--json")

    assert stats_database.exists()
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if "coder" in line)
    assert row.split("│")[2:5] == ["     2 ", "  1 ", "      1 "]  # calls, ok, failed
    assert "server_error" in row and "ok" in row
    records = {r["model"]: r for r in json.loads(listing.stdout)}
    coder = records["coder"]
    assert (coder["calls"], coder["successes"], coder["failures"]) == (2, 1, 1)
    assert coder["failures_by_kind"] == {"server_error": 1}
    assert coder["output_tokens"] > 0 and coder["state"] == "ok"
    assert records["reasoner"]["calls"] == 0


def test_stats_shows_a_cooldown_after_a_model_keeps_failing(server: LocalModelServer) -> None:
    server.inject_fault(Fault.status_code(503), model=CODING_MODEL, times=None)
    result = modelyard("run", "--json", EMAIL_PROMPT, ollama=server.url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"] == "reasoner"  # fell back

    records = {r["model"]: r for r in json.loads(modelyard("stats", "--json").stdout)}
    assert records["coder"]["consecutive_failures"] == 3
    assert records["coder"]["state"].startswith("cooling 5")  # 60 s from the default config
    assert "(3 failures)" in records["coder"]["state"]

    again = modelyard("run", "--json", "--task-type", "code_generation", "Sort a list",
                      ollama=server.url)  # fmt: skip
    assert json.loads(again.stdout)["model"] == "reasoner"
    assert len([r for r in server.requests_for(CODING_MODEL)]) == 3  # rested: not called again
    reset = modelyard("stats", "--reset", "--json")
    assert all(r["calls"] == 0 for r in json.loads(reset.stdout))


def test_a_model_failing_mid_stream_is_named_and_the_answer_continues(
    server: LocalModelServer,
) -> None:
    server.script(REASONING_MODEL, ["the reasoner's answer"])
    server.inject_fault(Fault.cut_stream(after_chunks=3), model=CODING_MODEL, times=None)

    result = modelyard("run", EMAIL_PROMPT, ollama=server.url)

    assert result.returncode == 0, result.stderr
    assert "coder failed after" in result.stderr
    assert "tokens: connection; continuing on reasoner" in result.stderr
    assert result.stdout.rstrip().endswith("the reasoner's answer")
