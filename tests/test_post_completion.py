"""Post-completion steps on scripted models (no sockets): order, tools, refused paths, failures."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from langgraph.store.memory import InMemoryStore

from modelyard.configs import ModelRegistry, ModelyardConfig, load_config
from modelyard.graphs import arun_fan_out, build_plan_and_implement_graph, build_route_graph
from modelyard.graphs.fan_out import parallel_tasks
from modelyard.nodes import Context
from modelyard.nodes.effects import EffectLedger, apply_write
from modelyard.nodes.paths import PathRefusedError, inside
from modelyard.state import (
    ConfigError,
    ModelCallError,
    ModelErrorKind,
    StagedWrite,
    Task,
    TaskStatus,
)
from modelyard.testing.scripted import ScriptedChatModel, tool_calls

CONFIG = """\
models:
  - name: main
    model: ollama:main
    roles: [chatcompletions]
  - name: first
    model: ollama:first
    supports: {{tools: true}}
    post_completions:
      - task: FIRST TASK
        tools: {{git_diff: repo, read_files: ., write_files: reports}}
  - name: second
    model: ollama:second
    roles:
      - {{postcompletions: SECOND TASK, tools: {{git_diff: repo, write_files: reports}}}}
retry: {{max_attempts: 2, initial_interval: 0, max_interval: 0, jitter: false}}
{extra}
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with a git repository holding one uncommitted change, and the config."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "app.py").write_text("print('hello')\n")
    git(repo, "add", "app.py")
    git(repo, "commit", "-q", "-m", "first")
    (repo / "app.py").write_text("print('hello, world')\n")
    (tmp_path / "notes.txt").write_text("NOTES\n")
    (tmp_path / "modelyard.yaml").write_text(CONFIG.format(extra=""))
    return tmp_path


def context(config: ModelyardConfig, **clients: ScriptedChatModel) -> Context:
    models = {name: ScriptedChatModel(name_for_echo=name) for name in config.model_names}
    return Context(registry=ModelRegistry(config, clients=models | clients))


async def run(config: ModelyardConfig, ctx: Context, prompt: str = "Explain DNS") -> Any:
    graph = build_route_graph(config).compile(store=InMemoryStore())
    return await graph.ainvoke({"prompt": prompt}, context=ctx)


async def test_steps_run_after_the_result_in_config_order_each_seeing_task_and_result(
    workdir: Path,
) -> None:
    config = load_config(workdir / "modelyard.yaml")
    first = ScriptedChatModel(replies=["first says ok"])
    second = ScriptedChatModel(replies=["second says ok"])
    main = ScriptedChatModel(replies=["THE RESULT"])
    ctx = context(config, main=main, first=first, second=second)

    state = await run(config, ctx)

    assert state["status"] is TaskStatus.COMPLETED and state["result"] == "THE RESULT"
    results = state["post_completions"]
    assert [(r.index, r.model, r.task, r.output) for r in results] == [
        (0, "first", "FIRST TASK", "first says ok"),
        (1, "second", "SECOND TASK", "second says ok"),
    ]
    for model, task in ((first, "FIRST TASK"), (second, "SECOND TASK")):
        (messages,) = model.calls
        text = str(messages[-1].content)
        assert task in text and "Explain DNS" in text and "THE RESULT" in text
    kinds = [e.kind for e in state["history"]]
    assert kinds[-3:] == ["completed", "post_completion", "post_completion"]
    assert [c.step for c in state["calls"]] == ["answer", "post_complete", "post_complete"]
    task = Task(prompt="Explain DNS").with_state(state)
    assert [p.model for p in task.post_completions] == ["first", "second"]


async def test_a_tool_calling_step_reads_the_git_diff_and_a_file_and_writes_one(
    workdir: Path,
) -> None:
    config = load_config(workdir / "modelyard.yaml")
    first = ScriptedChatModel(
        replies=[
            tool_calls(("git_diff", {}), ("read_file", {"path": "notes.txt"})),
            tool_calls(("write_file", {"path": "gitdiff.md", "content": "# Findings\n"})),
            tool_calls(("read_file", {"path": "reports/gitdiff.md"})),
            "wrote the findings",
        ]
    )
    ctx = context(config, first=first)

    state = await run(config, ctx)

    result = state["post_completions"][0]
    assert result.ok and result.output == "wrote the findings"
    assert [(c.name, c.ok) for c in result.tool_calls] == [
        ("git_diff", True),
        ("read_file", True),
        ("write_file", True),
        ("read_file", True),
    ]
    tool_results = [m for m in first.calls[1] if isinstance(m, ToolMessage)]
    assert "+print('hello, world')" in str(tool_results[0].content)
    assert str(tool_results[1].content) == "NOTES\n"
    staged_read = [m for m in first.calls[3] if isinstance(m, ToolMessage)][-1]
    assert staged_read.content == "# Findings\n"  # a staged write reads as written
    written = workdir / "reports" / "gitdiff.md"
    assert written.read_text() == "# Findings\n"
    assert result.files_written == [str(written)] and result.staged == []
    assert "post_completion_wrote" in [e.kind for e in state["history"]]


@pytest.mark.parametrize("tool", ["write_file", "read_file"])
@pytest.mark.parametrize("escape", ["../outside.md", "ABSOLUTE", "link/outside.md"])
async def test_paths_that_leave_the_folder_are_refused_and_the_model_told_why(
    workdir: Path, tool: str, escape: str
) -> None:
    elsewhere = workdir.parent / f"{workdir.name}-elsewhere"
    elsewhere.mkdir()
    (workdir / "reports").mkdir()
    for folder in (workdir, workdir / "reports"):
        (folder / "link").symlink_to(elsewhere, target_is_directory=True)
    path = str(elsewhere / "outside.md") if escape == "ABSOLUTE" else escape
    (elsewhere / "outside.md").write_text("SECRET")
    args = {"path": path, "content": "x"} if tool == "write_file" else {"path": path}
    config = load_config(workdir / "modelyard.yaml")
    first = ScriptedChatModel(replies=[tool_calls((tool, args)), "done"])

    state = await run(config, context(config, first=first))

    result = state["post_completions"][0]
    (record,) = result.tool_calls
    assert not record.ok and record.detail.startswith("refused: path")
    (told,) = [m for m in first.calls[1] if isinstance(m, ToolMessage)]
    assert told.status == "error" and "outside the folder" in str(told.content)
    assert (elsewhere / "outside.md").read_text() == "SECRET"
    assert result.ok and result.files_written == [] and state["result"]


async def test_a_failing_step_keeps_the_result_records_its_error_and_the_next_runs(
    workdir: Path,
) -> None:
    config = load_config(workdir / "modelyard.yaml")
    down = ModelCallError(
        ModelErrorKind.SERVER_ERROR, model="first", url="http://test", detail="scripted 500"
    )
    first = ScriptedChatModel(replies=[down])
    second = ScriptedChatModel(replies=["```file:second.md\nSECOND\n```"])
    main = ScriptedChatModel(replies=["THE RESULT"])
    ctx = context(config, main=main, first=first, second=second)

    state = await run(config, ctx)

    assert state["status"] is TaskStatus.COMPLETED and state["result"] == "THE RESULT"
    assert state["error"] is None
    failed, ok = state["post_completions"]
    assert failed.error is not None and failed.error["kind"] == "server_error"
    assert "scripted 500" in failed.error["message"] and failed.files_written == []
    assert len(first.calls) == 2  # the config's retry: max_attempts 2
    assert ok.ok and (workdir / "reports" / "second.md").read_text() == "SECOND\n"
    events = [e for e in state["history"] if e.kind == "post_completion_failed"]
    assert len(events) == 1 and events[0].model == "first"


async def test_a_model_without_tools_gets_the_diff_in_its_prompt_and_writes_by_file_block(
    workdir: Path,
) -> None:
    config = load_config(workdir / "modelyard.yaml")
    answer = (
        "Findings below.\n"
        "````file:gitdiff.md\n# Diff review\n```py\nprint()\n```\n````\n"
        "```file:../escape.md\nnope\n```\n"
    )
    second = ScriptedChatModel(replies=[answer])

    state = await run(config, context(config, second=second))

    (messages,) = second.calls
    assert "+print('hello, world')" in str(messages[-1].content)
    assert "```file:" in str(messages[-1].content)
    result = state["post_completions"][1]
    assert [(c.name, c.via, c.ok) for c in result.tool_calls] == [
        ("git_diff", "prefetch", True),
        ("write_file", "file_block", True),
        ("write_file", "file_block", False),
    ]
    written = workdir / "reports" / "gitdiff.md"
    assert written.read_text() == "# Diff review\n```py\nprint()\n```\n"
    assert not (workdir / "escape.md").exists()


async def test_no_step_runs_when_the_main_completion_failed(workdir: Path) -> None:
    config = load_config(workdir / "modelyard.yaml")
    bad = ModelCallError(ModelErrorKind.BAD_REQUEST, model="main", url="http://t", detail="no")
    first = ScriptedChatModel(replies=["never"])
    graph = build_route_graph(config).compile()

    state = await graph.ainvoke(
        {"prompt": "Explain DNS", "model": "main"},
        context=context(config, main=ScriptedChatModel(replies=[bad]), first=first),
    )

    assert state["status"] is TaskStatus.FAILED
    assert not state.get("post_completions") and first.calls == []


async def test_a_step_that_keeps_calling_tools_is_stopped_and_writes_nothing(
    workdir: Path,
) -> None:
    config = load_config(workdir / "modelyard.yaml")
    looping = tool_calls(("write_file", {"path": "loop.md", "content": "again"}))
    first = ScriptedChatModel(replies=[looping])

    state = await run(config, context(config, first=first))

    result = state["post_completions"][0]
    assert result.error is not None and result.error["kind"] == "too_many_tool_rounds"
    assert len(first.calls) == 9  # 8 rounds of tool calls, then the answer that is one more
    assert not (workdir / "reports" / "loop.md").exists()
    assert state["status"] is TaskStatus.COMPLETED


async def test_plan_and_implement_runs_the_steps_after_the_implementation(
    workdir: Path,
) -> None:
    config = load_config(workdir / "modelyard.yaml")
    first = ScriptedChatModel(replies=["checked"])
    main = ScriptedChatModel(replies=["PLAN", "CODE"])
    graph = build_plan_and_implement_graph(config).compile()

    state = await graph.ainvoke(
        {"prompt": "Build a parser"}, context=context(config, main=main, first=first)
    )

    assert state["result"] == "CODE" and len(state["post_completions"]) == 2
    assert "CODE" in str(first.calls[0][-1].content)


async def test_fan_out_branches_run_no_post_completion_steps(workdir: Path) -> None:
    config = load_config(workdir / "modelyard.yaml")
    first = ScriptedChatModel(replies=["never"])

    results = await arun_fan_out(
        parallel_tasks(["Explain DNS", "Explain TCP"]),
        context=context(config, first=first),
        store=InMemoryStore(),
    )

    assert [r.status for r in results] == [TaskStatus.COMPLETED] * 2
    assert first.calls == []


async def test_post_completion_tokens_stream_under_their_own_step(workdir: Path) -> None:
    config = load_config(workdir / "modelyard.yaml")
    ctx = context(config, first=ScriptedChatModel(replies=["from first"]))
    graph = build_route_graph(config).compile()
    seen: list[tuple[Any, Any, Any]] = []
    async for _message, metadata in graph.astream(
        {"prompt": "Explain DNS"}, context=ctx, stream_mode="messages"
    ):
        step = metadata.get("modelyard_step")
        seen.append((step, metadata.get("modelyard_model"), metadata.get("modelyard_post_index")))
    steps = list(dict.fromkeys(seen))
    assert steps == [("answer", "main", None), ("post_complete", "first", 0),
                     ("post_complete", "second", 1)]  # fmt: skip


def test_inside_resolves_relative_paths_and_refuses_escapes(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "up").symlink_to(tmp_path)
    assert inside(tmp_path / "out", "a/b.md") == (tmp_path / "out" / "a" / "b.md").resolve()
    assert inside(tmp_path / "out", str(tmp_path / "out" / "x")) == (tmp_path / "out" / "x")
    for bad in ("../x", "a/../../x", str(tmp_path / "x"), "up/x", "", "  "):
        with pytest.raises(PathRefusedError) as caught:
            inside(tmp_path / "out", bad)
        assert "refused" in str(caught.value)
        if bad.strip():
            assert repr(bad) in str(caught.value) and str(tmp_path / "out") in str(caught.value)


def test_git_s_own_files_are_refused_in_any_letter_case(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    for bad in (".git/config", ".GIT/hooks/pre-commit", "sub/.Git/config", "./.git"):
        with pytest.raises(PathRefusedError) as caught:
            inside(tmp_path, bad)
        assert "git's own files are off limits" in str(caught.value)


async def test_a_write_into_the_repository_s_git_folder_is_refused(workdir: Path) -> None:
    text = CONFIG.format(extra="").replace("write_files: reports", "write_files: repo")
    (workdir / "modelyard.yaml").write_text(text)
    config = load_config(workdir / "modelyard.yaml")
    hook = '[core]\n\tfsmonitor = "touch pwned; false"\n'
    first = ScriptedChatModel(
        replies=[tool_calls(("write_file", {"path": ".git/config", "content": hook})), "done"]
    )
    before = (workdir / "repo" / ".git" / "config").read_text()

    state = await run(config, context(config, first=first))

    (record,) = state["post_completions"][0].tool_calls
    assert not record.ok and "off limits" in record.detail
    assert (workdir / "repo" / ".git" / "config").read_text() == before


async def test_a_tool_that_fails_unexpectedly_is_the_model_s_error_not_a_crash(
    workdir: Path,
) -> None:
    config = load_config(workdir / "modelyard.yaml")
    bad_text = "half an emoji: \ud83d"  # valid JSON, not encodable text
    first = ScriptedChatModel(
        replies=[tool_calls(("write_file", {"path": "x.md", "content": bad_text})), "done"]
    )
    main = ScriptedChatModel(replies=["THE RESULT"])

    state = await run(config, context(config, main=main, first=first))

    assert state["status"] is TaskStatus.COMPLETED and state["result"] == "THE RESULT"
    (record,) = state["post_completions"][0].tool_calls
    assert not record.ok and "not valid text" in record.detail
    assert not (workdir / "reports" / "x.md").exists()


async def test_the_ledger_skips_a_write_already_made_and_finishes_one_left_pending(
    tmp_path: Path,
) -> None:
    target = tmp_path / "out" / "a.md"
    write = StagedWrite(
        path="a.md",
        target=str(target),
        content="A",
        sha256="559aead08264d5795d3909718cdd05abd49572e84fe55590eef31a88a08fdffd",
    )
    ledger = EffectLedger(InMemoryStore(), "task-1")

    assert await apply_write(ledger, 0, write) is True
    before = os.stat(target)
    assert await apply_write(ledger, 0, write) is False  # done: skipped
    await ledger.put(0, write, "pending", 0)  # a crash after the write, before `done`
    assert await apply_write(ledger, 0, write) is False
    after = os.stat(target)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    target.unlink()
    await ledger.put(0, write, "pending", 0)  # a crash before the write
    assert await apply_write(ledger, 0, write) is True and target.read_text() == "A"
    (record,) = await ledger.records()
    assert (record["state"], record["writes"], record["sha256"]) == ("done", 1, write.sha256)


def test_grants_resolve_from_the_config_folder_and_legacy_roles_carry_them(
    workdir: Path,
) -> None:
    config = load_config(workdir / "modelyard.yaml")
    first, second = config.models[1].post_completions[0], config.models[2].post_completions[0]
    assert first.tools.granted == ["git_diff", "read_file", "write_file"]
    assert first.tools.git_diff and first.tools.git_diff.repo == str((workdir / "repo").resolve())
    assert second.task == "SECOND TASK" and second.tools.granted == ["git_diff", "write_file"]
    assert config.models[2].roles == []


def test_bad_grants_are_config_errors_with_their_field_paths(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    path = tmp_path / "bad.yaml"
    path.write_text(
        "models:\n"
        "  - name: m\n"
        "    model: ollama:m\n"
        "    post_completions:\n"
        "      - task: t\n"
        "        tools: {git_diff: {repo: nowhere}, read_files: afile, write_files: afile,"
        " shell: {}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    prefix = "models[0].post_completions[0].tools"
    assert f"{prefix}.git_diff.repo: folder {tmp_path / 'nowhere'} does not exist" in text
    assert f"{prefix}.read_files.root: {tmp_path / 'afile'} is a file, not a folder" in text
    assert f"{prefix}.write_files.folder" in text
    assert f"{prefix}.shell: unknown field 'shell'" in text
