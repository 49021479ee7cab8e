"""LangGraph Studio: `langgraph dev` serves every graph of langgraph.json, driven by langgraph-sdk.

One `langgraph dev --no-browser` (analytics off) runs for the module, in a scratch folder so
that its `.langgraph_api/` files stay out of the checkout. Each graph runs through the SDK, with
the run's context naming a config whose models live on the local protocol server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from support import CODING_MODEL, REASONING_MODEL, config_text, write_config

from modelyard.testing.server import LocalModelServer

ROOT = Path(__file__).resolve().parents[1]
LANGGRAPH = shutil.which("langgraph", path=str(Path(sys.executable).parent))
GRAPHS = ["route", "plan_and_implement", "review", "plan_and_review", "code_review", "fan_out"]
APPROVE = json.dumps({"verdict": "approve", "comments": []})
CODE = "```python\ndef parse(text: str) -> list[str]:\n    return text.split(',')\n```"

pytestmark = [
    pytest.mark.skipif(LANGGRAPH is None, reason="langgraph-cli is a dev dependency"),
    pytest.mark.timeout(180),
]


def coder(model: str, messages: list[dict[str, Any]]) -> str:
    """The coder approves any code it reviews and writes CODE otherwise."""
    return APPROVE if "Code (round" in str(messages[-1]["content"]) else CODE


@pytest.fixture(scope="module")
def models() -> Iterator[LocalModelServer]:
    with LocalModelServer([REASONING_MODEL, CODING_MODEL]) as running:
        yield running


@pytest.fixture(scope="module")
def studio(
    models: LocalModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """Start `langgraph dev` on a free port; yield its URL and the config runs should name."""
    folder = tmp_path_factory.mktemp("studio")
    config = write_config(folder, config_text(models.url))
    port = _free_port()
    log = (folder / "langgraph-dev.log").open("w")
    env = {**os.environ, "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGSMITH_TRACING": "false"}
    command = [str(LANGGRAPH), "dev", "--no-browser", "--no-reload", "--port", str(port)]
    command += ["--config", str(ROOT / "langgraph.json")]
    server = subprocess.Popen(
        command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, server, folder / "langgraph-dev.log")
        yield url, config
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    assert server.returncode is not None


@pytest.fixture
async def client(studio: tuple[str, Path]) -> AsyncIterator[LangGraphClient]:
    sdk = get_client(url=studio[0])
    yield sdk
    await sdk.http.client.aclose()


async def assistant_ids(client: LangGraphClient) -> dict[str, str]:
    return {a["graph_id"]: a["assistant_id"] for a in await client.assistants.search()}


async def run(
    client: LangGraphClient, graph: str, task: dict[str, Any], context: dict[str, Any]
) -> dict[str, Any]:
    thread = await client.threads.create()
    ids = await assistant_ids(client)
    done = await client.runs.wait(thread["thread_id"], ids[graph], input=task, context=context)
    assert isinstance(done, dict), done
    return done


def test_langgraph_json_names_every_graph_each_without_a_checkpointer() -> None:
    from importlib import import_module

    spec = json.loads((ROOT / "langgraph.json").read_text())
    assert sorted(spec["graphs"]) == sorted(GRAPHS)
    for name, target in spec["graphs"].items():
        module, variable = target.split(":")
        graph = getattr(import_module(module), variable)
        assert graph.checkpointer is None, name
        assert graph.name == name
        assert graph.get_context_jsonschema()["title"] == "Context", name


async def test_the_server_lists_every_graph_with_an_editable_context(
    client: LangGraphClient,
) -> None:
    ids = await assistant_ids(client)
    assert sorted(ids) == sorted(GRAPHS)
    for graph in GRAPHS:
        schemas = await client.assistants.get_schemas(ids[graph])
        fields = schemas["context_schema"]["properties"]
        assert sorted(fields) == ["config_file", "model", "task_type"], graph
    task_types = schemas["context_schema"]["$defs"]["TaskType"]["enum"]
    assert "code_generation" in task_types and "planning" in task_types


async def test_route_runs_on_the_config_the_context_names(
    client: LangGraphClient, studio: tuple[str, Path], models: LocalModelServer
) -> None:
    models.reset_log()
    done = await run(
        client,
        "route",
        {"prompt": "Explain how DNS resolves a name"},
        {"config_file": str(studio[1])},
    )
    assert done["status"] == "completed"
    assert done["assigned_model"] == "reasoner" and done["task_type"] == "explanation"
    assert done["result"].startswith(f"[{REASONING_MODEL}] Answer to:")
    assert [r.model for r in models.requests if r.path == "/api/chat"] == [REASONING_MODEL]


async def test_the_context_sets_the_model_and_the_task_type(
    client: LangGraphClient, studio: tuple[str, Path], models: LocalModelServer
) -> None:
    context = {"config_file": str(studio[1]), "model": "coder", "task_type": "general"}
    done = await run(client, "route", {"prompt": "Explain how DNS resolves a name"}, context)
    assert done["status"] == "completed" and done["assigned_model"] == "coder"
    assert done["task_type"] == "general"
    assert done["classification"]["method"] == "caller"


async def test_an_unknown_model_in_the_context_fails_the_task_naming_the_models(
    client: LangGraphClient, studio: tuple[str, Path]
) -> None:
    context = {"config_file": str(studio[1]), "model": "gpt-99"}
    done = await run(client, "route", {"prompt": "Explain DNS"}, context)
    assert done["status"] == "failed"
    message = json.dumps(done["error"])
    assert "gpt-99" in message and "reasoner" in message and "coder" in message


async def test_plan_and_implement_and_the_review_graphs_run(
    client: LangGraphClient, studio: tuple[str, Path], models: LocalModelServer
) -> None:
    models.script(CODING_MODEL, coder)
    context = {"config_file": str(studio[1])}
    task = {"prompt": "Write a Python function that splits a CSV line"}

    planned = await run(client, "plan_and_implement", task, context)
    assert planned["status"] == "completed" and planned["plan"]
    assert planned["implementation"] == CODE

    for graph in ("review", "plan_and_review"):
        reviewed = await run(client, graph, task, context)
        assert reviewed["status"] == "completed", graph
        (round_,) = reviewed["rounds"]
        assert round_["verdict"] == "approve" and round_["reviewer"] == "coder", graph
        assert bool(reviewed.get("plan")) is (graph == "plan_and_review")


async def test_code_review_reviews_the_code_the_input_carries(
    client: LangGraphClient, studio: tuple[str, Path], models: LocalModelServer
) -> None:
    models.script(CODING_MODEL, coder)
    task = {"prompt": "Split a CSV line", "implementation": CODE}
    done = await run(client, "code_review", task, {"config_file": str(studio[1])})
    assert done["status"] == "completed" and done["task_type"] == "code_review"
    (round_,) = done["rounds"]
    assert (round_["coder"], round_["reviewer"], round_["verdict"]) == (
        "caller",
        "coder",
        "approve",
    )
    assert done["result"] == APPROVE

    empty = await run(client, "code_review", {"prompt": "Split"}, {"config_file": str(studio[1])})
    assert empty["status"] == "failed" and "implementation" in json.dumps(empty["error"])


async def test_fan_out_asks_each_model_and_streams_its_steps(
    client: LangGraphClient, studio: tuple[str, Path]
) -> None:
    thread = await client.threads.create()
    ids = await assistant_ids(client)
    nodes: list[str] = []
    async for part in client.runs.stream(
        thread["thread_id"],
        ids["fan_out"],
        input={"prompt": "Explain recursion", "models": ["reasoner", "coder"]},
        context={"config_file": str(studio[1])},
        stream_mode="updates",
    ):
        if part.event == "updates" and isinstance(part.data, dict):
            nodes.extend(part.data)
    assert nodes[0] == "fan_out" and nodes[-1] == "gather"
    assert nodes.count("branch") == 2
    state = await client.threads.get_state(thread["thread_id"])
    results = state["values"]["results"]
    assert [r["model"] for r in results] == ["reasoner", "coder"]
    assert all(r["status"] == "completed" for r in results)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_up(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"langgraph dev exited ({server.returncode}):\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"langgraph dev did not answer within 120 s:\n{log.read_text()[-4000:]}")
