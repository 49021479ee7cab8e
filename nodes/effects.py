"""The `apply_effects` node: write the files a post-completion step staged, exactly once.

A post-completion step never writes a file itself: `post_complete` stages its writes in
the state, and this node performs them after that state is checkpointed. Each write is
kept in an effect ledger in the graph's store, under `("modelyard", "effects", task_id)`,
one item per step and file: `pending` (with the content's SHA-256) just before the file is
written, `done` (with the number of writes made) once it is.

The guarantee, with a checkpointer and `durability="sync"` (the task runner's default): a
staged file is written once. The step's output is checkpointed before this node starts, so
once it has started a resumed task does not ask the step's model again (a crash during the
model call asks again, having written nothing), and a node that ended is not run again. A
crash inside this node reruns it on resume: a file whose ledger item is `done` is skipped,
and one left `pending` is written only if it does not already hold the staged content (the
crash came before the write). A write replaces the file atomically (a temporary file beside
it, then `os.replace`), so a crash never leaves half a file. With `durability="async"` or
`"exit"`, a crash can run the whole step again on resume (its model is asked again); the
ledger still writes each (step, file) at most once, keeping the first content. Without a
checkpointer nothing resumes: a task run again is a new task, with a ledger of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore

from modelyard.nodes import stats
from modelyard.nodes.context import Context
from modelyard.nodes.paths import PathRefusedError, inside
from modelyard.routers.post_completion import post_steps
from modelyard.state import PostCompletionResult, StagedWrite, TaskEvent, TaskState
from modelyard.state.task import utcnow

NAMESPACE = ("modelyard", "effects")


class EffectLedger:
    """The writes made for one task, in a LangGraph store."""

    def __init__(self, store: BaseStore, task_id: str) -> None:
        self.store = store
        self.namespace = (*NAMESPACE, task_id)

    async def get(self, index: int, target: str) -> dict[str, Any] | None:
        """Return the record of step `index`'s write to `target`, or None."""
        item = await self.store.aget(self.namespace, _key(index, target))
        return dict(item.value) if item is not None else None

    async def put(self, index: int, write: StagedWrite, state: str, writes: int) -> None:
        """Record step `index`'s write as `pending` or `done`, with the writes made so far."""
        value = {
            "step": index,
            "path": write.path,
            "target": write.target,
            "sha256": write.sha256,
            "bytes": len(write.content.encode()),
            "state": state,
            "writes": writes,
            "at": utcnow().isoformat(),
        }
        await self.store.aput(self.namespace, _key(index, write.target), value, index=False)

    async def records(self) -> list[dict[str, Any]]:
        """Return every write recorded for the task."""
        found = await self.store.asearch(self.namespace, limit=10_000)
        return [dict(item.value) for item in found]


def _key(index: int, target: str) -> str:
    return f"{index}:{target}"


async def apply_write(ledger: EffectLedger, index: int, write: StagedWrite) -> bool:
    """Write one staged file unless the ledger shows it written; return whether it wrote."""
    record = await ledger.get(index, write.target)
    if record is not None and record["state"] == "done":
        return False
    if record is not None and _digest(Path(write.target)) == record["sha256"]:
        await ledger.put(index, write, "done", 1)  # written just before a crash
        return False
    await ledger.put(index, write, "pending", 0)
    await asyncio.to_thread(write_atomically, Path(write.target), write.content, write.sha256)
    await ledger.put(index, write, "done", 1)
    return True


def write_atomically(target: Path, content: str, sha256: str) -> None:
    """Replace `target` with `content` at once: a reader sees the old file or the new one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name made with O_EXCL: never a file (or symlink) that was already there, and
    # never shared by two tasks writing the same file at once.
    fd, name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.{sha256[:12]}.", suffix=".modelyard-tmp"
    )
    try:
        os.fchmod(fd, _mode_of(target))  # mkstemp makes it 0600: keep the file's own mode
        with os.fdopen(fd, "wb") as handle:
            handle.write(content.encode())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


def _mode_of(target: Path) -> int:
    """Return the permission bits `target` has, or 0o644 (rw-r--r--) for a new file."""
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        return 0o644


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


async def apply_effects(state: TaskState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Write the files the last post-completion step staged; record them in its result.

    Each path is checked again against the step's `write_files` folder (a symlink may
    have appeared since it was staged). A write that is refused or fails is recorded as
    the step's error; the other files are still written, and the task stays completed.
    """
    results = state.get("post_completions") or []
    if not results or not results[-1].staged:
        return {}
    result = results[-1]
    ledger = EffectLedger(runtime.store or stats.PROCESS_STORE, state.get("task_id") or "")
    steps = post_steps(runtime.context.models().config)
    grant = steps[result.index].step.tools.write_files if result.index < len(steps) else None
    written: list[str] = []
    problems: list[str] = []
    for write in result.staged:
        try:
            if grant is None:
                raise PathRefusedError("the config no longer grants this step write_files")
            if str(inside(grant.folder, write.path)) != write.target:
                raise PathRefusedError(f"refused: {write.path!r} now resolves elsewhere")
            await apply_write(ledger, result.index, write)
        except (PathRefusedError, OSError) as exc:
            problems.append(f"{write.target}: {exc}")
        else:
            written.append(write.target)
    update: dict[str, Any] = {"staged": [], "files_written": [*result.files_written, *written]}
    events: list[TaskEvent] = []
    if written:
        events.append(
            TaskEvent(
                kind="post_completion_wrote",
                step="post_complete",
                model=result.model,
                detail=f"wrote {', '.join(written)}",
                data={"index": result.index, "files": written},
            )
        )
    if problems:
        error = {"kind": "write_failed", "message": "; ".join(problems)}
        update["error"] = result.error or error
        events.append(
            TaskEvent(
                kind="post_completion_failed",
                step="post_complete",
                model=result.model,
                detail=f"post-completion step {result.index + 1} could not write: "
                f"{error['message']}",
                data={"index": result.index, **error},
            )
        )
    done: PostCompletionResult = result.model_copy(update=update)
    return {"post_completions": [done], "history": events}
