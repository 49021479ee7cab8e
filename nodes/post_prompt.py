"""The `{tools}` text of a post-completion prompt, and ```file: blocks for models without tools.

A model that calls tools (`supports.tools: true`) is told which tools it has. A model that
does not gets what the read tools would give it in the prompt (the `git diff`, when
granted), and writes files by answering with fenced blocks opened by ```file:<path>:

    ```file:findings.md
    # Findings
    ...
    ```

Each block becomes a `write_file` call with the same checks as a real one. A block whose
content holds ``` fences itself is opened and closed with four backticks.
"""

from __future__ import annotations

import re

from langchain_core.tools import ToolException

from modelyard.nodes.tools import Workspace
from modelyard.state import ToolCallRecord

#: A fenced block opened by ```file:<path> (or more backticks) and closed by the same fence.
FILE_BLOCK = re.compile(
    r"^(?P<fence>`{3,})file:(?P<path>[^\n`]+?)[ \t]*\n(?P<content>.*?)^(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


def tool_list(workspace: Workspace) -> str:
    """Return the `{tools}` text for a model that calls tools."""
    grants = workspace.grants
    offered = []
    if grants.git_diff:
        offered.append(f"git_diff (the uncommitted changes in {grants.git_diff.repo})")
    if grants.read_files:
        offered.append(f"read_file (text files under {grants.read_files.root})")
    if grants.write_files:
        offered.append(
            f"write_file (files under {grants.write_files.folder}; give paths relative to "
            "it; they are written when you have finished)"
        )
    return "; ".join(offered) + ". Call them as tools." if offered else "none"


async def prefetched(workspace: Workspace) -> tuple[str, list[ToolCallRecord]]:
    """Return the `{tools}` text for a model without tool calling, and the reads made for it."""
    grants = workspace.grants
    parts: list[str] = []
    records: list[ToolCallRecord] = []
    if grants.git_diff:
        try:
            diff = await workspace.git_diff()
        except ToolException as exc:
            records.append(_record("git_diff", {}, False, str(exc)))
            parts.append(f"`git diff` could not be read: {exc}")
        else:
            records.append(_record("git_diff", {}, True, f"{len(diff)} characters"))
            repo = grants.git_diff.repo
            parts.append(f"The output of `git diff` in {repo}:\n```diff\n{diff.rstrip()}\n```")
    if grants.write_files:
        parts.append(
            f"To write a file under {grants.write_files.folder}, put its whole content in a "
            "fenced block whose first line is ```file:<path relative to that folder>, e.g.\n"
            "```file:notes.md\n# Notes\n```\n"
            "(open and close it with four backticks if the content holds ``` itself). "
            "Each such block is written when you have finished."
        )
    if not parts:
        return "none", records
    return "\n\n".join(["none you can call; what they give you is below.", *parts]), records


def stage_file_blocks(workspace: Workspace, text: str) -> list[ToolCallRecord]:
    """Stage every ```file: block of an answer as a write; return one record per block.

    A block whose path is refused is recorded as a failed call and not written.
    """
    records = []
    for match in FILE_BLOCK.finditer(text):
        path, content = match["path"].strip(), match["content"]
        try:
            detail = workspace.write_file(path, content)
        except ToolException as exc:
            records.append(_record("write_file", {"path": path}, False, str(exc)))
        else:
            records.append(_record("write_file", {"path": path}, True, detail))
    return records


def _record(name: str, args: dict[str, str], ok: bool, detail: str) -> ToolCallRecord:
    via = "file_block" if name == "write_file" else "prefetch"
    return ToolCallRecord(name=name, args=args, ok=ok, detail=detail, via=via)
