"""Post-completion steps over real HTTP: tool calls in the Ollama and OpenAI formats, the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph.store.memory import InMemoryStore
from support import run_modelyard as modelyard

from modelyard.configs import load_config
from modelyard.graphs import build_route_graph
from modelyard.nodes import Context
from modelyard.state import TaskStatus
from modelyard.testing.server import Fault, LocalModelServer, ToolCallReply

pytestmark = pytest.mark.protocol

WRITE = {"name": "write_file", "arguments": {"path": "review.md", "content": "# Review\nfine\n"}}


def config_text(url: str, protocol: str) -> str:
    ref = "ollama" if protocol == "ollama" else "openai_compatible"
    base = url if protocol == "ollama" else f"{url}/v1"
    return f"""\
models:
  - name: main
    model: {ref}:main
    base_url: {base}
    roles: [chatcompletions]
  - name: tooly
    model: {ref}:tooly
    base_url: {base}
    supports: {{tools: true}}
    post_completions:
      - task: review the git diff and write review.md
        tools: {{git_diff: ., write_files: reports}}
  - name: plain
    model: {ref}:plain
    base_url: {base}
    roles: [{{postcompletions: summarise in summary.md, tools: {{write_files: reports}}}}]
retry: {{max_attempts: 1}}
persistence: {{url: memory}}
"""


@pytest.fixture
def server() -> Any:
    with LocalModelServer(["main", "tooly", "plain"]) as running:
        yield running


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "app.py").write_text("x = 1\n")
    subprocess.run(["git", "add", "app.py"], cwd=tmp_path, check=True)
    (tmp_path / "app.py").write_text("x = 2\n")
    return tmp_path


def tool_then_text(seen: list[list[dict[str, Any]]]) -> Any:
    """Call git_diff and write_file first; once the results are back, answer in text."""

    def reply(model: str, messages: list[dict[str, Any]]) -> str | ToolCallReply:
        seen.append(messages)
        if messages[-1]["role"] != "tool":
            return ToolCallReply([{"name": "git_diff", "arguments": {}}, WRITE], content="")
        return "done reviewing"

    return reply


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_tool_calls_carry_a_name_and_an_arguments_object(
    server: LocalModelServer, stream: bool
) -> None:
    server.script("tooly", [ToolCallReply([WRITE], content="Writing it.")])
    body = {"model": "tooly", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    response = httpx.post(f"{server.url}/api/chat", json=body, timeout=10)
    lines = [json.loads(line) for line in response.text.splitlines()]
    calls = [c for line in lines for c in line["message"].get("tool_calls", [])]
    assert calls == [{"function": {"name": "write_file", "arguments": WRITE["arguments"]}}]
    assert "".join(line["message"]["content"] for line in lines) == "Writing it."
    assert lines[-1]["done"] is True


def test_openai_tool_calls_have_ids_json_arguments_and_their_finish_reason(
    server: LocalModelServer,
) -> None:
    body = {"model": "tooly", "messages": [{"role": "user", "content": "hi"}]}
    server.script("tooly", [ToolCallReply([WRITE])])
    whole = httpx.post(f"{server.openai_url}/chat/completions", json=body, timeout=10).json()
    choice = whole["choices"][0]
    (call,) = choice["message"]["tool_calls"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "write_file"
    assert json.loads(call["function"]["arguments"]) == WRITE["arguments"]

    streamed = httpx.post(
        f"{server.openai_url}/chat/completions", json=body | {"stream": True}, timeout=10
    )
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in streamed.text.splitlines()
        if line.startswith("data: {")
    ]
    deltas = [c["choices"][0]["delta"].get("tool_calls") for c in chunks if c["choices"]]
    parts = [d[0] for d in deltas if d]
    assert parts[0]["id"].startswith("call_") and parts[0]["function"]["name"] == "write_file"
    arguments = "".join(p["function"]["arguments"] for p in parts)
    assert json.loads(arguments) == WRITE["arguments"] and len(parts) > 2
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("protocol", ["ollama", "openai"])
async def test_a_tool_calling_model_reads_the_diff_and_writes_through_real_tool_calls(
    server: LocalModelServer, workdir: Path, protocol: str
) -> None:
    (workdir / "modelyard.yaml").write_text(config_text(server.url, protocol))
    config = load_config(workdir / "modelyard.yaml")
    seen: list[list[dict[str, Any]]] = []
    server.script("main", ["THE RESULT"])
    server.script("tooly", tool_then_text(seen))
    server.script("plain", ["```file:summary.md\nSUMMARY\n```"])
    graph = build_route_graph(config).compile(store=InMemoryStore())

    state = await graph.ainvoke({"prompt": "Explain DNS"}, context=Context(config=config))

    assert state["status"] is TaskStatus.COMPLETED and state["result"] == "THE RESULT"
    tooly, plain = state["post_completions"]
    assert tooly.ok and tooly.output == "done reviewing", tooly.error
    assert [(c.name, c.ok) for c in tooly.tool_calls] == [("git_diff", True), ("write_file", True)]
    results = [m for m in seen[-1] if m["role"] == "tool"]
    assert "+x = 2" in results[0]["content"] and "staged review.md" in results[1]["content"]
    (request, _) = server.requests_for("tooly")
    offered = {t["function"]["name"] for t in (request.body or {})["tools"]}
    assert offered == {"git_diff", "write_file"}
    assert (workdir / "reports" / "review.md").read_text() == "# Review\nfine\n"
    assert plain.ok and (workdir / "reports" / "summary.md").read_text() == "SUMMARY\n"
    assert not (server.requests_for("plain")[0].body or {}).get("tools")  # none bound


async def test_a_step_whose_model_is_not_on_its_server_is_recorded_and_the_task_completes(
    server: LocalModelServer, workdir: Path
) -> None:
    text = config_text(server.url, "ollama").replace(
        "    roles: [{postcompletions", "    auto_pull: false\n    roles: [{postcompletions"
    )
    (workdir / "modelyard.yaml").write_text(text)
    config = load_config(workdir / "modelyard.yaml")
    server.remove_model("plain")
    server.script("tooly", ["nothing to do"])
    graph = build_route_graph(config).compile(store=InMemoryStore())

    state = await graph.ainvoke({"prompt": "Explain DNS"}, context=Context(config=config))

    assert state["status"] is TaskStatus.COMPLETED
    tooly, plain = state["post_completions"]
    assert tooly.ok and plain.error is not None and plain.error["kind"] == "not_found"
    assert "ollama pull plain" in plain.error["message"]
    assert server.requests_for("plain") == []


@pytest.mark.cli
def test_run_json_has_each_steps_output_files_and_error(
    server: LocalModelServer, workdir: Path
) -> None:
    config = workdir / "modelyard.yaml"
    config.write_text(config_text(server.url, "ollama"))
    server.script("main", ["THE RESULT"])
    server.script("tooly", tool_then_text([]))
    server.inject_fault(Fault.status_code(400), model="plain", times=None)

    done = modelyard("run", "--json", "-c", str(config), "Explain DNS")

    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["content"] == "THE RESULT"
    tooly, plain = payload["post_completions"]
    assert (tooly["model"], tooly["output"], tooly["error"]) == ("tooly", "done reviewing", None)
    assert tooly["files_written"] == [str((workdir / "reports" / "review.md").resolve())]
    assert tooly["task"] == "review the git diff and write review.md"
    assert [c["name"] for c in tooly["tool_calls"]] == ["git_diff", "write_file"]
    assert plain["model"] == "plain" and plain["error"]["kind"] == "bad_request"
    assert plain["output"] == "" and plain["files_written"] == []


@pytest.mark.cli
def test_run_shows_each_step_under_its_heading_and_a_failed_step_on_stderr(
    server: LocalModelServer, workdir: Path
) -> None:
    config = workdir / "modelyard.yaml"
    config.write_text(config_text(server.url, "ollama"))
    server.script("main", ["THE RESULT"])
    server.script("tooly", tool_then_text([]))
    server.inject_fault(Fault.status_code(400), model="plain", times=None)

    done = modelyard("run", "-c", str(config), "Explain DNS")

    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "THE RESULT"
    assert "done reviewing" in done.stdout
    err = done.stderr
    assert "── post_complete · tooly · step 1 ──" in err
    assert f"✓ tooly wrote {(workdir / 'reports' / 'review.md').resolve()}" in err
    assert "⚠ post-completion step 2 on plain failed: bad_request" in err
