"""What a post-completion step may touch: the tools a config grants it, and where.

```yaml
post_completions:
  - task: review the git diff and write the findings to gitdiff.md
    tools:
      git_diff: {repo: .}          # `git diff` of this repository (or `git_diff: .`)
      read_files: {root: src}      # read files under src/ only
      write_files: {folder: reports}   # write files under reports/ only
```

Paths are relative to the config file's folder and resolved to absolute paths when the
config is loaded. The repository and the root must exist; the write folder is made on the
first write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

#: Tool names as models see them, in the order they are offered.
TOOL_NAMES = ("git_diff", "read_file", "write_file")


class _Grant(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _folder(value: str, info: ValidationInfo, *, must_exist: bool) -> str:
    """Return `value` as an absolute path, relative to the config file's folder."""
    base = Path((info.context or {}).get("config_dir") or Path.cwd()).resolve()
    path = (base / Path(value).expanduser()).resolve()
    if path.exists() and not path.is_dir():
        raise PydanticCustomError(
            "grant_not_a_folder",
            "{path} is a file, not a folder; give a folder (relative to the config file's "
            "folder, {base})",
            {"path": str(path), "base": str(base)},
        )
    if must_exist and not path.is_dir():
        raise PydanticCustomError(
            "grant_missing_folder",
            "folder {path} does not exist; give an existing folder, relative to the config "
            "file's folder ({base})",
            {"path": str(path), "base": str(base)},
        )
    return str(path)


class GitDiffGrant(_Grant):
    """Read `git diff` (the working tree's uncommitted changes) of one repository."""

    repo: str
    """The repository's folder (or any folder inside it)."""
    max_bytes: int = Field(default=100_000, ge=1)
    """The diff is cut at this size, saying so."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"repo": data} if isinstance(data, str) else data

    @field_validator("repo")
    @classmethod
    def _existing(cls, value: str, info: ValidationInfo) -> str:
        return _folder(value, info, must_exist=True)


class ReadFilesGrant(_Grant):
    """Read files inside one folder (and nowhere else)."""

    root: str
    """The folder files may be read from."""
    max_bytes: int = Field(default=100_000, ge=1)
    """A longer file is cut at this size, saying so."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"root": data} if isinstance(data, str) else data

    @field_validator("root")
    @classmethod
    def _existing(cls, value: str, info: ValidationInfo) -> str:
        return _folder(value, info, must_exist=True)


class WriteFilesGrant(_Grant):
    """Write files inside one folder (and nowhere else)."""

    folder: str
    """The folder files may be written in; made when missing."""
    max_bytes: int = Field(default=1_000_000, ge=1)
    """A longer file is refused."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"folder": data} if isinstance(data, str) else data

    @field_validator("folder")
    @classmethod
    def _absolute(cls, value: str, info: ValidationInfo) -> str:
        return _folder(value, info, must_exist=False)


class ToolGrants(_Grant):
    """The tools one post-completion step may use; none unless granted."""

    git_diff: GitDiffGrant | None = None
    read_files: ReadFilesGrant | None = None
    write_files: WriteFilesGrant | None = None

    @property
    def granted(self) -> list[str]:
        """Return the names of the tools granted, as models see them."""
        given = (self.git_diff, self.read_files, self.write_files)
        return [name for name, grant in zip(TOOL_NAMES, given, strict=True) if grant is not None]
