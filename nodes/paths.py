"""Keep a tool's file access inside the folder its grant names: no `..`, no escaping symlink."""

from __future__ import annotations

from pathlib import Path

from langchain_core.tools import ToolException

#: A repository's own folder: never read or written by a tool, whatever the grant.
GIT_DIR = ".git"


class PathRefusedError(ToolException):
    """A path leaves the folder a tool may use, or names no file there.

    The message names the path, the folder, and what to give instead; the model gets it
    back as a tool error.
    """


def inside(folder: str | Path, path: str) -> Path:
    """Return the absolute path `path` names inside `folder`, symlinks and `..` resolved.

    A relative path is taken from `folder`; an absolute one must already lie inside it.

    Raises:
        PathRefusedError: the path is empty, or it resolves outside `folder` (through
            `..`, an absolute path elsewhere, or a symlink that points out of it), or it
            lies in a `.git` folder (in any letter case).
    """
    base = Path(folder).resolve()
    if not isinstance(path, str) or not path.strip():
        raise PathRefusedError(f"refused: the path is empty; give a file path inside {base}")
    given = Path(path.strip())
    try:
        resolved = (given if given.is_absolute() else base / given).resolve()
    except (OSError, ValueError) as exc:
        raise PathRefusedError(f"refused: path {path!r} cannot be resolved ({exc})") from None
    if resolved != base and base not in resolved.parents:
        raise PathRefusedError(
            f"refused: path {path!r} is outside the folder {base} (it resolves to "
            f"{resolved}); give a path relative to {base} that stays inside it"
        )
    parts = {part.lower() for part in (*given.parts, *resolved.relative_to(base).parts)}
    if GIT_DIR in parts:
        raise PathRefusedError(
            f"refused: path {path!r} is inside a {GIT_DIR} folder; git's own files are off "
            "limits (writing them could make git run commands)"
        )
    return resolved
