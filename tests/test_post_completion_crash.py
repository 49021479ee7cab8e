"""Post-completion writes happen exactly once, also when a task is killed (SIGKILL) and resumed."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from modelyard.configs.persistence import open_store
from modelyard.configs.schema import PersistenceSettings
from modelyard.nodes.effects import EffectLedger
from modelyard.testing.server import Fault, LocalModelServer

pytestmark = pytest.mark.cli

WORKER = str(Path(__file__).with_name("post_completion_worker.py"))
TASK_ID = "crash-task"


def config_text(url: str) -> str:
    return f"""\
models:
  - name: main
    model: ollama:main
    base_url: {url}
    roles: [chatcompletions]
  - name: one
    model: ollama:one
    base_url: {url}
    post_completions: [{{task: write one.md, tools: {{write_files: reports}}}}]
  - name: two
    model: ollama:two
    base_url: {url}
    post_completions: [{{task: write two.md, tools: {{write_files: reports}}}}]
retry: {{max_attempts: 1}}
"""


@pytest.fixture
def server() -> Any:
    with LocalModelServer(["main", "one", "two"]) as running:
        running.script("main", ["THE RESULT"])
        running.script("one", ["```file:one.md\nONE\n```"])
        running.script("two", ["```file:two.md\nTWO\n```"])
        yield running


def worker(config: Path, db: Path, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, WORKER, str(config), str(db), TASK_ID, *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def ledger(db: Path) -> dict[str, dict[str, Any]]:
    """Return the effect ledger's records for the task, by file name."""

    async def read() -> list[dict[str, Any]]:
        async with open_store(PersistenceSettings(url=str(db))) as store:
            return await EffectLedger(store, TASK_ID).records()

    return {Path(r["target"]).name: r for r in asyncio.run(read())}


def stamp(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_ino, info.st_mtime_ns


def asked(server: LocalModelServer) -> dict[str, int]:
    return {name: len(server.requests_for(name)) for name in ("main", "one", "two")}


def test_a_task_killed_during_the_second_step_resumes_without_redoing_the_first(
    server: LocalModelServer, tmp_path: Path
) -> None:
    config, db = tmp_path / "modelyard.yaml", tmp_path / "db.sqlite"
    config.write_text(config_text(server.url))
    server.inject_fault(Fault.hang(), model="two")
    running = worker(config, db)
    deadline = time.monotonic() + 60
    while not server.requests_for("two") and time.monotonic() < deadline:
        assert running.poll() is None, running.communicate()[1]
        time.sleep(0.02)
    assert server.requests_for("two"), "the second step's model was never called"
    running.kill()
    running.wait()
    one = tmp_path / "reports" / "one.md"
    assert one.read_text() == "ONE\n" and not (tmp_path / "reports" / "two.md").exists()
    before = stamp(one)
    server.clear_faults()

    done = finish(worker(config, db, "--resume"))

    assert done["status"] == "completed"
    assert [(r["model"], r["error"]) for r in done["post_completions"]] == [
        ("one", None),
        ("two", None),
    ]
    assert stamp(one) == before  # not written again
    assert (tmp_path / "reports" / "two.md").read_text() == "TWO\n"
    assert asked(server) == {"main": 1, "one": 1, "two": 2}  # two: the killed call and again
    records = ledger(db)
    assert {name: (r["state"], r["writes"]) for name, r in records.items()} == {
        "one.md": ("done", 1),
        "two.md": ("done", 1),
    }


@pytest.mark.parametrize("moment", ["before", "after"])
def test_a_task_killed_while_writing_writes_the_file_once_on_resume(
    server: LocalModelServer, tmp_path: Path, moment: str
) -> None:
    config, db = tmp_path / "modelyard.yaml", tmp_path / "db.sqlite"
    config.write_text(config_text(server.url))
    one = tmp_path / "reports" / "one.md"

    killed = worker(config, db, f"--die-{moment}-write", "one.md")
    killed.communicate(timeout=60)
    assert killed.returncode == -9
    assert ledger(db)["one.md"]["state"] == "pending"
    assert one.exists() is (moment == "after")
    before = stamp(one) if one.exists() else None

    done = finish(worker(config, db, "--resume"))

    assert done["status"] == "completed"
    assert [r["files_written"] for r in done["post_completions"]] == [
        [str(one.resolve())],
        [str((tmp_path / "reports" / "two.md").resolve())],
    ]
    assert one.read_text() == "ONE\n"
    if before is not None:
        assert stamp(one) == before  # written before the kill, not again after it
    record = ledger(db)["one.md"]
    assert (record["state"], record["writes"]) == ("done", 1)
    assert asked(server) == {"main": 1, "one": 1, "two": 1}  # no model asked again
