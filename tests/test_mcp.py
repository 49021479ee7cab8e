"""`modelyard mcp`: the graphs as MCP tools, driven by the official `mcp` client.

The server runs as a subprocess (`modelyard mcp`, stdio; one test over `--http`), its models
on the local protocol server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from support import CODING_MODEL, MODELYARD, REASONING_MODEL, config_text, write_config

from modelyard.testing.server import Fault, LocalModelServer

pytestmark = [pytest.mark.cli, pytest.mark.timeout(120)]

VERDICT = {"verdict": "request_changes", "comments": ["check for an empty list"]}


@pytest.fixture
def stdio(server: LocalModelServer, tmp_path: Path) -> StdioServerParameters:
    """How to start `modelyard mcp` on a config whose models live on the local server.

    Each test opens its client itself (`async with Client(stdio)`): the client's task group
    must be entered and left in the same task, which an async fixture does not promise.
    """
    config = write_config(tmp_path, config_text(server.url))
    return StdioServerParameters(
        command=MODELYARD, args=["mcp", "--config", str(config)], cwd=str(tmp_path)
    )


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call `tool`; return its structured answer (failing the test on a tool error)."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def tool_error(client: Client, tool: str, **arguments: Any) -> str:
    """Call `tool`, expecting a tool error; return its text."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    return " ".join(getattr(block, "text", "") for block in result.content)


def chat_models(server: LocalModelServer) -> list[str | None]:
    return [r.model for r in server.requests if r.path == "/api/chat"]


async def test_the_four_tools_are_listed_with_their_model_parameters(
    stdio: StdioServerParameters,
) -> None:
    async with Client(stdio) as mcp_client:
        tools = {tool.name: tool for tool in (await mcp_client.list_tools()).tools}
        assert sorted(tools) == ["list_models", "plan_and_implement", "review", "run_task"]
        assert set(tools["run_task"].input_schema["properties"]) == {"task", "model", "task_type"}
        assert tools["run_task"].input_schema["required"] == ["task"]
        plan = tools["plan_and_implement"].input_schema["properties"]
        assert set(plan) == {"task", "reasoning_model", "coding_model"}
        assert {"code", "model"} <= set(tools["review"].input_schema["properties"])
        assert "model" in (tools["run_task"].description or "")


async def test_list_models_names_what_the_model_parameters_take(
    stdio: StdioServerParameters, server: LocalModelServer
) -> None:
    async with Client(stdio) as mcp_client:
        listed = (await call(mcp_client, "list_models"))["result"]
        assert [m["name"] for m in listed] == ["reasoner", "coder"]
        assert listed[0]["model"] == REASONING_MODEL and listed[0]["base_url"] == server.url
        assert "planning" in listed[0]["roles"] and "code_generation" in listed[1]["roles"]


async def test_run_task_routes_by_task_type_unless_a_model_is_given(
    stdio: StdioServerParameters, server: LocalModelServer
) -> None:
    async with Client(stdio) as mcp_client:
        routed = await call(mcp_client, "run_task", task="Explain how a hash table works")
        assert routed["model"] == "reasoner" and routed["task_type"] == "explanation"
        assert routed["result"].startswith(f"[{REASONING_MODEL}] Answer to:")

        pinned = await call(
            mcp_client, "run_task", task="Explain how a hash table works", model="coder"
        )
        assert pinned["model"] == "coder"
        typed = await call(
            mcp_client, "run_task", task="Tell me about hashing", task_type="general"
        )
        assert typed["task_type"] == "general"
        assert chat_models(server) == [REASONING_MODEL, CODING_MODEL, REASONING_MODEL]


async def test_bad_arguments_are_tool_errors_that_say_what_to_pass(
    stdio: StdioServerParameters, server: LocalModelServer
) -> None:
    async with Client(stdio) as mcp_client:
        unknown = await tool_error(mcp_client, "run_task", task="Explain DNS", model="gpt-99")
        assert "unknown model 'gpt-99'" in unknown and "reasoner, coder" in unknown
        coder = await tool_error(
            mcp_client, "plan_and_implement", task="Write a parser", coding_model="codex"
        )
        assert "unknown model 'codex'" in coder and "reasoner, coder" in coder
        kind = await tool_error(mcp_client, "run_task", task="Explain DNS", task_type="poetry")
        assert "unknown task type 'poetry'" in kind and "code_generation" in kind
        assert "empty" in await tool_error(mcp_client, "run_task", task="   ")
        assert "empty" in await tool_error(mcp_client, "review", code="")
        assert chat_models(server) == []  # nothing was asked of a model


async def test_a_task_every_model_fails_is_a_tool_error_with_the_attempts(
    stdio: StdioServerParameters, server: LocalModelServer
) -> None:
    async with Client(stdio) as mcp_client:
        server.inject_fault(Fault.status_code(500), times=None)
        message = await tool_error(mcp_client, "run_task", task="Explain DNS")
        assert "the task failed" in message and "reasoner" in message and "coder" in message
        server.clear_faults()
        # Both models are now cooled down (the stats store remembers): the next call
        # says so, and when they come back, instead of calling them.
        again = await tool_error(mcp_client, "run_task", task="Explain DNS")
        assert "cooled down" in again


async def test_plan_and_implement_takes_a_model_per_step(
    stdio: StdioServerParameters, server: LocalModelServer
) -> None:
    async with Client(stdio) as mcp_client:
        done = await call(
            mcp_client,
            "plan_and_implement",
            task="Write a function that merges two sorted lists",
            reasoning_model="coder",
            coding_model="reasoner",
        )
        assert (done["planner"], done["coder"]) == ("coder", "reasoner")
        assert done["plan"].startswith(f"[{CODING_MODEL}]")
        assert done["code"].startswith(f"[{REASONING_MODEL}]")
        assert chat_models(server) == [CODING_MODEL, REASONING_MODEL]


async def test_review_returns_the_verdict_of_the_chosen_reviewer(
    stdio: StdioServerParameters, server: LocalModelServer
) -> None:
    async with Client(stdio) as mcp_client:
        server.script(CODING_MODEL, [json.dumps(VERDICT)])
        server.script(REASONING_MODEL, ['{"verdict": "approve", "comments": []}'])
        code = "def first(xs):\n    return xs[0]\n"

        review = await call(mcp_client, "review", code=code, task="Return the first item")
        assert review["reviewer"] == "coder" and review["verdict"] == "request_changes"
        assert review["comments"] == VERDICT["comments"]
        asked = server.requests_for(CODING_MODEL)[0].body or {}
        prompt = asked["messages"][-1]["content"]
        assert code.strip() in prompt and "Return the first item" in prompt

        other = await call(mcp_client, "review", code=code, model="reasoner")
        assert other["reviewer"] == "reasoner" and other["verdict"] == "approve"


async def test_two_calls_with_different_models_run_at_the_same_time(
    stdio: StdioServerParameters, server: LocalModelServer
) -> None:
    """The coder's call finishes while the reasoner's first request still hangs."""
    async with Client(stdio) as mcp_client:
        server.inject_fault(Fault.hang(), model=REASONING_MODEL, times=1)
        slow = asyncio.create_task(
            call(mcp_client, "run_task", task="Explain DNS", model="reasoner")
        )
        deadline = time.monotonic() + 30
        while not server.requests_for(REASONING_MODEL) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert server.requests_for(REASONING_MODEL), "the reasoner was never asked"

        fast = await call(mcp_client, "run_task", task="Explain TCP", model="coder")

        assert fast["model"] == "coder"
        assert not slow.done()  # the reasoner's call is still waiting on its hung request
        server.clear_faults()  # closes the hung request; the reasoner is asked again
        answered = await slow
        assert answered["model"] == "reasoner"
        assert len(server.requests_for(REASONING_MODEL)) == 2


async def test_the_tools_are_served_over_streamable_http_too(
    server: LocalModelServer, tmp_path: Path
) -> None:
    config = write_config(tmp_path, config_text(server.url))
    port = _free_port()
    command = [MODELYARD, "mcp", "--http", "--port", str(port), "--config", str(config)]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        await _wait_for_port(port, process)
        async with Client(url) as client:
            answer = await call(client, "run_task", task="Explain DNS", model="coder")
            assert answer["model"] == "coder"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


async def test_an_invalid_config_stops_the_server_before_it_serves(tmp_path: Path) -> None:
    config = write_config(tmp_path, "models:\n  - name: x\n    model: nowhere:x\n")
    done = subprocess.run(
        [MODELYARD, "mcp", "--config", str(config)],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "config error" in done.stderr and "modelyard.yaml" in done.stderr
    assert done.stdout == ""  # nothing but MCP messages may go to stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode() if process.stderr else ""
            pytest.fail(f"modelyard mcp --http exited ({process.returncode}): {stderr}")
        try:
            async with httpx.AsyncClient() as probe:
                await probe.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
            return
        except httpx.HTTPError:
            await asyncio.sleep(0.2)
    pytest.fail("modelyard mcp --http did not listen within 60 s")
