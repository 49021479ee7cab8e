"""Helpers the tests share: configs pointing at the local server, scripted contexts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from modelyard.configs import ModelRegistry, load_config
from modelyard.configs.schema import PromptSettings
from modelyard.nodes import Context
from modelyard.testing.scripted import ScriptedChatModel

REASONING_MODEL = "phi3:mini"
CODING_MODEL = "deepseek-coder:6.7b-instruct"

CONFIG_TEMPLATE = """\
models:
  - name: reasoner
    model: {reasoning_ref}
    {base_url}
    roles: [planning, problem_solving, explanation, general]
    capabilities: {{planning: 0.8, problem_solving: 0.75, explanation: 0.85, general: 0.8,
                   code_generation: 0.45, code_review: 0.55}}
    context_window: 4096
    options: {{temperature: 0.7, top_p: 0.95, frequency_penalty: 0.2, presence_penalty: 0.2,
              max_tokens: 4096{reasoner_extra}}}
    system_prompt: You are a careful reasoning assistant.
    timeout: {timeout}
  - name: coder
    model: {coding_ref}
    {base_url}
    roles: [code_generation, code_review]
    capabilities: {{code_generation: 0.9, code_review: 0.85, problem_solving: 0.6}}
    context_window: 16384
    options: {{temperature: 0.35, top_p: 0.95, frequency_penalty: 0.1, presence_penalty: 0.1,
              max_tokens: 4096}}
    system_prompt: You are an expert software engineer.
    timeout: {timeout}
retry:
  max_attempts: 3
  initial_interval: 0.01
  backoff_factor: 2.0
  max_interval: 0.05
  jitter: false
"""


def config_text(
    url: str, *, protocol: str = "ollama", timeout: float = 5.0, reasoner_extra: str = ""
) -> str:
    """Return a two-model config (reasoner, coder) whose models live at `url`."""
    if protocol == "ollama":
        refs = (f"ollama:{REASONING_MODEL}", f"ollama:{CODING_MODEL}")
        base_url = f"base_url: {url}"
    else:
        refs = (f"openai_compatible:{REASONING_MODEL}", f"openai_compatible:{CODING_MODEL}")
        base_url = f"base_url: {url}/v1"
    return CONFIG_TEMPLATE.format(
        reasoning_ref=refs[0],
        coding_ref=refs[1],
        base_url=base_url,
        timeout=timeout,
        reasoner_extra=reasoner_extra,
    )


def write_config(directory: Path, text: str, name: str = "modelyard.yaml") -> Path:
    """Write a config file and return its path."""
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def scripted_context(
    reasoner: ScriptedChatModel | None = None,
    coder: ScriptedChatModel | None = None,
    *,
    styles: bool = True,
) -> Context:
    """Return a Context running the packaged default config on scripted models.

    With `styles=False` the models get the plain step templates (`answer` is the prompt
    itself), for tests that recognise a call by its prompt.
    """
    config = load_config("default")
    if not styles:
        plain = [m.model_copy(update={"prompts": PromptSettings()}) for m in config.models]
        config = config.model_copy(update={"models": plain})
    clients = {
        "reasoner": reasoner or ScriptedChatModel(name_for_echo="reasoner"),
        "coder": coder or ScriptedChatModel(name_for_echo="coder"),
    }
    return Context(registry=ModelRegistry(config, clients=clients))


#: The installed `modelyard` command of this test run's virtualenv.
MODELYARD = str(Path(sys.executable).parent / "modelyard")


def run_modelyard(
    *args: str, ollama: str | None = None, db: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the installed `modelyard` command; never with the caller's config or Ollama.

    Args:
        args: The command line after `modelyard`.
        ollama: The URL it takes as OLLAMA_HOST (the packaged default config's server).
        db: Its MODELYARD_DB; default: the environment's (see the `stats_database` fixture).
        timeout: Seconds before the command is stopped and the test fails.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("MODELYARD_CONFIG", "OLLAMA_HOST")}
    if ollama is not None:
        env["OLLAMA_HOST"] = ollama
    if db is not None:
        env["MODELYARD_DB"] = str(db)
    return subprocess.run(
        [MODELYARD, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


class RecordingExecutor(ThreadPoolExecutor):
    """A thread pool that notes the name of every function handed to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.handed: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        inner = fn
        while isinstance(inner, partial):  # LangChain wraps it in a context's run
            inner = inner.args[0] if inner.func.__name__ == "run" and inner.args else inner.func
        code = getattr(inner, "__code__", None)
        if code is not None and "func" in code.co_freevars:  # LangChain's run_in_executor
            inner = inner.__closure__[code.co_freevars.index("func")].cell_contents
        self.handed.append(getattr(inner, "__qualname__", repr(inner)))
        return super().submit(fn, *args, **kwargs)


def record_thread_handoffs() -> list[str]:
    """Make the running loop's default executor record what it is given; return that record.

    LangGraph and LangChain run every plain (not async) node, edge function and callback
    handler on this executor: a hand-off to a thread and back for each call.
    """
    executor = RecordingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    return executor.handed
