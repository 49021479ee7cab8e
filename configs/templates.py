"""Prompts per step and model: packaged files under `configs/prompts/`, overridable per model.

A step's template is looked up in this order: the model's `prompts.<step>` in the config,
then `prompts/<style>/<step>.md` for the model's `prompts.style`, then `prompts/<step>.md`.
The system prompt: the model's `prompts.system`, its `system_prompt`, then
`prompts/<style>/system.md`; none when all are missing.
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_core.messages import BaseMessage

    from modelyard.configs.schema import ModelConfig

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"

#: The values each step's template may use, as `{name}`.
STEP_FIELDS: dict[str, frozenset[str]] = {
    "answer": frozenset({"prompt"}),
    "plan": frozenset({"prompt"}),
    "implement": frozenset({"prompt", "plan"}),
    "review": frozenset({"prompt", "plan", "code", "round"}),
    "revise": frozenset({"prompt", "plan", "code", "comments", "round"}),
    "classify": frozenset({"prompt", "task_types"}),
    "post_complete": frozenset({"prompt", "result", "task", "tools"}),
}


@dataclass(frozen=True)
class PromptTemplate:
    """A template's text and where it came from (a packaged file or the config)."""

    text: str
    source: str
    """`prompts/terse/implement.md`, or `models.coder.prompts.implement` for the config's own."""

    def render(self, **values: Any) -> str:
        """Return the text with `{prompt}`, `{plan}`, ... filled in.

        Raises:
            ConfigError: the template uses a value it is not given, or is not a valid
                template (a file edited after the config was loaded).
        """
        try:
            return self.text.format(**values)
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            from modelyard.state import ConfigError, ConfigProblem

            given = ", ".join(f"{{{name}}}" for name in sorted(values))
            raise ConfigError(
                [
                    ConfigProblem(
                        self.source,
                        "",
                        f"the template cannot be filled in ({type(exc).__name__}: {exc}); it "
                        f"may use {given}, and a literal brace is written {{{{ or }}}}",
                    )
                ]
            ) from None


def template_fields(text: str) -> set[str]:
    """Return the names a template uses: `{name}`, also inside a format spec (`{a:{b}}`).

    A field such as `{prompt.upper}` or `{plan[0]}` counts as its whole text, so that it
    is refused as a name the step does not give.

    Raises:
        ValueError: the text is not a valid template (a lone `{` or `}`).
    """
    names: set[str] = set()
    for _, name, spec, _ in string.Formatter().parse(text):
        if name is not None:
            names.add(name)
        if spec and "{" in spec:
            names |= template_fields(spec)
    return names


def template_problem(step: str, text: str) -> str | None:
    """Return what is wrong with a template for `step`, or None when it is fine."""
    try:
        used = template_fields(text)
    except ValueError as exc:
        return f"not a valid template ({exc}); write a literal brace as {{{{ or }}}}"
    unknown = sorted(used - STEP_FIELDS[step])
    if not unknown:
        return None
    return (
        f"the {step} template uses {', '.join(f'{{{n}}}' for n in unknown)}, which it is "
        f"not given; it may use {', '.join(f'{{{n}}}' for n in sorted(STEP_FIELDS[step]))} "
        "(write a literal brace as {{ or }})"
    )


def prompt_styles() -> list[str]:
    """Return the packaged prompt styles (folders under `configs/prompts/`)."""
    return sorted(p.name for p in PROMPTS_DIR.iterdir() if p.is_dir())


def _read(path: Path) -> str | None:
    """Return a template file's text, read again when the file changes; None when missing."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return None
    return _read_version(path, mtime)


@functools.lru_cache(maxsize=256)
def _read_version(path: Path, mtime: int) -> str | None:
    del mtime  # part of the cache key: an edited file is read again
    try:
        return path.read_text(encoding="utf-8").strip("\n")
    except OSError:
        return None


def _styled(style: str, name: str) -> PromptTemplate | None:
    """Return `<style>/<name>.md`: a packaged style, or a folder of the user's (absolute)."""
    folder = Path(style) if Path(style).is_absolute() else PROMPTS_DIR / style
    text = _read(folder / f"{name}.md")
    if text is None:
        return None
    packaged = folder.parent == PROMPTS_DIR
    source = f"prompts/{style}/{name}.md" if packaged else str(folder / f"{name}.md")
    return PromptTemplate(text, source)


def packaged_template(step: str, style: str | None = None) -> PromptTemplate:
    """Return the packaged template for a step, in a style when it has its own.

    Raises:
        KeyError: no packaged template for the step.
    """
    styled = _styled(style, step) if style else None
    if styled is not None:
        return styled
    text = _read(PROMPTS_DIR / f"{step}.md")
    if text is None:
        raise KeyError(f"no prompt template for step {step!r}; steps: {', '.join(STEP_FIELDS)}")
    return PromptTemplate(text, f"prompts/{step}.md")


def step_template(model: ModelConfig, step: str) -> PromptTemplate:
    """Return the template `model` gets for `step`."""
    own = getattr(model.prompts, step, None)
    if own:
        return PromptTemplate(own, f"models.{model.name}.prompts.{step}")
    return packaged_template(step, model.prompts.style)


def system_template(model: ModelConfig) -> PromptTemplate | None:
    """Return the system prompt `model` gets, or None when it gets none."""
    if model.prompts.system:
        return PromptTemplate(model.prompts.system, f"models.{model.name}.prompts.system")
    if model.system_prompt:
        return PromptTemplate(model.system_prompt, f"models.{model.name}.system_prompt")
    return _styled(model.prompts.style, "system") if model.prompts.style else None


def render_messages(
    model: ModelConfig, step: str, **values: Any
) -> tuple[list[BaseMessage], dict[str, Any]]:
    """Return the messages for one call of `step` on `model`, and a record of the prompt.

    The record (`template`, `system`, `messages`) goes into the task's history, so the
    prompt each call used can be read back.
    """
    from langchain_core.messages import HumanMessage, SystemMessage

    messages: list[BaseMessage] = []
    system = system_template(model)
    if system is not None:
        messages.append(SystemMessage(system.text))
    template = step_template(model, step)
    messages.append(HumanMessage(template.render(**values)))
    record = {
        "template": template.source,
        "system": system.source if system else None,
        "messages": [{"role": m.type, "content": str(m.content)} for m in messages],
    }
    return messages, record


def render_prompt(step: str, **values: Any) -> str:
    """Return a packaged step template with its values filled in (no model, no style)."""
    return packaged_template(step).render(**values)
