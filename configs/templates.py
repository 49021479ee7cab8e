"""Prompt templates per step, read once from `configs/prompts/<step>.md`."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"


@functools.cache
def prompt_template(step: str) -> str:
    """Return the template for a step (`answer`, `plan`, `implement`)."""
    return (PROMPTS_DIR / f"{step}.md").read_text(encoding="utf-8").strip("\n")


def render_prompt(step: str, **values: Any) -> str:
    """Return a step's prompt with `{prompt}`, `{plan}`, ... filled in."""
    return prompt_template(step).format(**values)
