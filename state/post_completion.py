"""What post-completion steps leave in the state: their output, tool calls and file writes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ToolCallRecord(BaseModel):
    """One tool call a post-completion step made, and how it went."""

    name: str
    """`git_diff`, `read_file` or `write_file` (or an unknown name the model made up)."""
    args: dict[str, Any] = Field(default_factory=dict)
    """The arguments, `content` of a write left out (its size is in `detail`)."""
    ok: bool = True
    """False when the call was refused or failed; the model was told why."""
    detail: str = ""
    """What came back, shortened, or the error message."""
    via: str = "tool_call"
    """`tool_call` (the model called it), `prefetch` (read into the prompt for a model
    without tool calling) or `file_block` (a ```file: block in its answer)."""


class StagedWrite(BaseModel):
    """A file a post-completion step asked to write; `apply_effects` writes it."""

    path: str
    """As the model gave it, relative to the granted folder."""
    target: str
    """The absolute path inside the granted folder."""
    content: str
    sha256: str
    """Of the content encoded as UTF-8; the effect ledger compares it with the file."""


class PostCompletionResult(BaseModel):
    """One post-completion step: what it was asked, what it answered, what it wrote."""

    index: int
    """Its place in config order (0 first)."""
    model: str
    task: str
    """The step's task text from the config."""
    output: str = ""
    """The model's final answer."""
    tool_calls: list[ToolCallRecord] = Field(default_factory=list)
    staged: list[StagedWrite] = Field(default_factory=list)
    """Writes waiting for `apply_effects`; emptied once they are written."""
    files_written: list[str] = Field(default_factory=list)
    """Absolute paths written, once `apply_effects` has run."""
    error: dict[str, Any] | None = None
    """Why the step failed (`kind`, `message`, ...), or None. A failed step writes nothing."""
    latency_ms: float = 0.0
    """From the step's first model call to its answer, tool calls included."""

    @property
    def ok(self) -> bool:
        """Whether the step succeeded."""
        return self.error is None


def merge_post_completions(
    left: list[PostCompletionResult] | None, right: list[PostCompletionResult] | None
) -> list[PostCompletionResult]:
    """Merge step results by index, right winning: `apply_effects` replaces its step's entry."""
    merged = {result.index: result for result in left or []}
    merged.update({result.index: result for result in right or []})
    return [merged[index] for index in sorted(merged)]
