"""The tools a post-completion step may be granted: `git_diff`, `read_file`, `write_file`.

Reads happen when the model calls them; writes are only staged here (`Workspace.staged`)
and performed after the step by `apply_effects`, once the step's output is checkpointed.
Every path is checked against its grant's folder (`nodes.paths.inside`); a refused or
failed call comes back to the model as a tool error and is recorded, it does not end the
step.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from langchain_core.messages import ToolCall, ToolMessage
from langchain_core.tools import BaseTool, StructuredTool, ToolException

from modelyard.configs.grants import ToolGrants
from modelyard.nodes.paths import PathRefusedError, inside
from modelyard.state import StagedWrite, ToolCallRecord

#: Seconds `git diff` may take.
GIT_TIMEOUT = 30.0


class Workspace:
    """What one post-completion step may read, and the writes it has staged."""

    def __init__(self, grants: ToolGrants) -> None:
        self.grants = grants
        self.staged: dict[str, StagedWrite] = {}
        """Writes by absolute target path; a second write to a path replaces the first."""

    async def git_diff(self, staged: bool = False, stat: bool = False) -> str:
        """Return `git diff` of the granted repository (cut at the grant's `max_bytes`).

        Raises:
            ToolException: git diff is not granted, git is missing, or the folder is not
                inside a git repository.
        """
        grant = self.grants.git_diff
        if grant is None:
            raise ToolException("git_diff is not granted to this step")
        # No hooks, fsmonitor, external diff or textconv commands: a repository's config
        # must not make reading its diff run anything.
        args = [
            "git", "-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null",
            "-C", grant.repo, "diff", "--no-color", "--no-ext-diff", "--no-textconv",
        ]  # fmt: skip
        if staged:
            args.append("--cached")
        if stat:
            args.append("--stat")
        try:
            process = await asyncio.create_subprocess_exec(
                *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
        except FileNotFoundError:
            raise ToolException("git is not installed (no `git` on PATH)") from None
        try:
            out, err = await asyncio.wait_for(process.communicate(), GIT_TIMEOUT)
        except TimeoutError:
            process.kill()
            raise ToolException(f"git diff in {grant.repo} took over {GIT_TIMEOUT:g} s") from None
        if process.returncode != 0:
            reason = err.decode(errors="replace").strip() or f"exit status {process.returncode}"
            if "not a git repository" in reason.lower():
                raise ToolException(
                    f"{grant.repo} is not inside a git repository; point git_diff.repo in "
                    "the config at a folder inside one (or run `git init` there)"
                )
            raise ToolException(f"git diff failed in {grant.repo}: {reason.splitlines()[0]}")
        if not out.strip():
            which = "staged" if staged else "uncommitted"
            return f"(no {which} changes in {grant.repo})"
        return _capped(out, grant.max_bytes)

    def read_file(self, path: str) -> str:
        """Return a file's text from inside the granted root; a staged write is seen as written.

        Raises:
            ToolException: reading is not granted, the path leaves the root, or no such file.
        """
        grant = self.grants.read_files
        if grant is None:
            raise ToolException("read_file is not granted to this step")
        target = inside(grant.root, path)
        staged = self.staged.get(str(target))
        if staged is not None:
            return staged.content
        if not _is(target, "file"):
            raise PathRefusedError(f"no file {path!r} in {grant.root} (looked for {target})")
        try:
            with target.open("rb") as handle:
                data = handle.read(grant.max_bytes + 1)
        except OSError as exc:
            raise ToolException(f"cannot read {target}: {exc.strerror or exc}") from None
        return _capped(data, grant.max_bytes)

    def write_file(self, path: str, content: str) -> str:
        """Stage a file to be written inside the granted folder when the step ends.

        Raises:
            ToolException: writing is not granted, the path leaves the folder or names a
                folder, or the content is larger than the grant's `max_bytes`.
        """
        grant = self.grants.write_files
        if grant is None:
            raise ToolException("write_file is not granted to this step")
        target = inside(grant.folder, path)
        if str(target) == grant.folder or _is(target, "dir"):
            raise PathRefusedError(f"refused: {path!r} names a folder; give a file path")
        try:
            data = content.encode()
        except UnicodeEncodeError as exc:
            raise ToolException(
                f"refused: the content for {path!r} is not valid text ({exc.reason} at "
                f"character {exc.start}); send it again as plain UTF-8 text"
            ) from None
        if len(data) > grant.max_bytes:
            raise ToolException(
                f"refused: {len(data)} bytes for {path!r} is over the {grant.max_bytes}-byte "
                "limit (write_files.max_bytes in the config)"
            )
        digest = hashlib.sha256(data).hexdigest()
        self.staged[str(target)] = StagedWrite(
            path=path, target=str(target), content=content, sha256=digest
        )
        return f"staged {path} ({len(data)} bytes); it is written to {target} when this step ends"


def _is(path: Path, kind: str) -> bool:
    """Return whether `path` is a file (or a folder); a path that cannot be looked at is not."""
    try:
        return path.is_file() if kind == "file" else path.is_dir()
    except OSError:
        return False


def _capped(data: bytes, limit: int) -> str:
    text = data[:limit].decode(errors="replace")
    return text if len(data) <= limit else f"{text}\n[... cut at {limit} bytes]"


def build_tools(workspace: Workspace) -> list[BaseTool]:
    """Return the LangChain tools the workspace's grants allow, for `bind_tools`."""

    async def git_diff(staged: bool = False, stat: bool = False) -> str:
        """Show `git diff` of the repository: the changes not yet committed.

        Args:
            staged: Show the staged changes (`git diff --cached`) instead.
            stat: Show only a summary of the files changed (`--stat`).
        """
        return await workspace.git_diff(staged=staged, stat=stat)

    async def read_file(path: str) -> str:
        """Read a text file.

        Args:
            path: The file's path, relative to the folder you may read.
        """
        return workspace.read_file(path)

    async def write_file(path: str, content: str) -> str:
        """Write a text file (replacing it if it exists).

        Args:
            path: The file's path, relative to the folder you may write in.
            content: The file's whole content.
        """
        return workspace.write_file(path, content)

    functions: dict[str, Callable[..., Awaitable[str]]] = {
        "git_diff": git_diff,
        "read_file": read_file,
        "write_file": write_file,
    }
    return [
        StructuredTool.from_function(
            coroutine=functions[name],
            name=name,
            parse_docstring=True,
            handle_tool_error=True,
            handle_validation_error=_bad_arguments,
        )
        for name in workspace.grants.granted
    ]


def _bad_arguments(error: Exception) -> str:
    """Return what was wrong with a tool call's arguments, for the model to fix."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in errors()
        )
        return f"bad arguments ({problems}); call the tool again with them fixed"
    return f"bad arguments ({error}); call the tool again with them fixed"


async def run_tool_call(
    tools: dict[str, BaseTool], call: ToolCall
) -> tuple[ToolMessage, ToolCallRecord]:
    """Run one tool call; return the message for the model and the record for the state.

    An unknown tool, a refused path or a failed read becomes a ToolMessage with
    `status="error"` that says why; nothing is raised.
    """
    args = dict(call.get("args") or {})
    shown = {k: (f"<{len(str(v))} chars>" if k == "content" else v) for k, v in args.items()}
    tool = tools.get(call["name"])
    if tool is None:
        known = ", ".join(tools) or "none"
        text = f"there is no tool {call['name']!r}; the tools you have: {known}"
        message = ToolMessage(text, tool_call_id=call.get("id") or "", status="error")
    else:
        try:
            result: Any = await tool.ainvoke({**call, "type": "tool_call"})
        except Exception as exc:  # a tool's own failure is the model's to hear, not a crash
            result = ToolMessage(
                f"{call['name']} failed: {type(exc).__name__}: {exc}",
                tool_call_id=call.get("id") or "",
                status="error",
            )
        message = (
            result
            if isinstance(result, ToolMessage)
            else ToolMessage(str(result), tool_call_id=call.get("id") or "")
        )
    message.name = call["name"]
    content = str(message.content)
    detail = content if len(content) <= 300 else content[:300] + " ..."
    record = ToolCallRecord(
        name=call["name"], args=shown, ok=message.status != "error", detail=detail
    )
    return message, record
