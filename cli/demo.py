"""`modelyard demo`: both graphs, end to end, against the local protocol server (offline)."""

from __future__ import annotations

import asyncio
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from modelyard.configs import ModelRegistry, load_config
from modelyard.configs.schema import ProviderSettings
from modelyard.graphs import build_plan_and_implement_graph, build_route_graph
from modelyard.nodes import Context
from modelyard.testing.server import LocalModelServer

REASONING_MODEL = "phi3:mini"
CODING_MODEL = "deepseek-coder:6.7b-instruct"
ROUTED_PROMPTS = [
    "Write a Python function that validates email addresses",
    "Explain how a hash table works",
]
TODO_CODE = """```python
import json
import sys
from pathlib import Path

STORE = Path("todo.json")


def main() -> None:
    items = json.loads(STORE.read_text()) if STORE.exists() else []
    if sys.argv[1:2] == ["add"]:
        items.append({"text": " ".join(sys.argv[2:]), "done": False})
        STORE.write_text(json.dumps(items))
    for number, item in enumerate(items):
        print(number, "[x]" if item["done"] else "[ ]", item["text"])
```
(scripted implementation from the coding model)"""
PLAN_PROMPT = "Build a command-line todo app that stores its items in a JSON file"


def scripted_reply(model: str, messages: list[dict[str, Any]]) -> str:
    """Return a canned answer that fits the model's job and the question asked."""
    last = str(messages[-1].get("content", "")) if messages else ""
    if model == CODING_MODEL and "todo" in last.lower():
        return TODO_CODE
    if model == CODING_MODEL:
        return (
            '```python\nimport re\n\nEMAIL = re.compile(r"^[^@\\s]+@[^@\\s]+\\.[a-z]{2,}$", '
            "re.IGNORECASE)\n\n\ndef is_valid_email(address: str) -> bool:\n"
            "    return bool(EMAIL.match(address))\n```\n"
            "(scripted answer from the coding model)"
        )
    if "implementation plan" in last:
        return (
            "1. Define a Todo record (id, text, done).\n2. Load and save the list as JSON.\n"
            "3. Add `add`, `list`, `done` subcommands.\n4. Test each command on a temp file.\n"
            "(scripted plan from the reasoning model)"
        )
    return (
        "A hash table maps keys to slots with a hash function; collisions are resolved by "
        "chaining or probing, giving O(1) average lookups. (scripted answer from the "
        "reasoning model)"
    )


def run_demo(console: Console) -> None:
    """Start the local server, point the default config at it, and run both graphs."""
    console.print(
        Panel(
            "This is an [bold]offline demonstration[/bold]: a local stand-in for Ollama on "
            "127.0.0.1 answers with scripted text. No real model runs. Point a config at a "
            "real Ollama (see `modelyard models`) and use `modelyard run` for real answers.",
            title="modelyard demo",
        )
    )
    with LocalModelServer([REASONING_MODEL, CODING_MODEL], reply=scripted_reply) as server:
        config = load_config("default")
        config.providers["ollama"] = ProviderSettings(base_url=server.url)
        context = Context(registry=ModelRegistry(config))
        asyncio.run(_run_graphs(console, config, context))
        console.print(f"[dim]The server received {len(server.requests)} requests.[/dim]")


async def _run_graphs(console: Console, config: Any, context: Context) -> None:
    route = build_route_graph(config).compile()
    for prompt in ROUTED_PROMPTS:
        state = await route.ainvoke({"prompt": prompt}, context=context)
        selection = state["selections"]["answer"]
        console.rule(escape(f"route: {prompt}"))
        console.print(
            f"[cyan]task type[/cyan] {state['task_type'].value}  "
            f"[cyan]model[/cyan] {escape(selection.model)}  [dim]{escape(selection.reason)}[/dim]"
        )
        console.print(state["result"], markup=False)
    plan_graph = build_plan_and_implement_graph(config).compile()
    state = await plan_graph.ainvoke({"prompt": PLAN_PROMPT}, context=context)
    console.rule(escape(f"plan_and_implement: {PLAN_PROMPT}"))
    for step, key in (("plan", "plan"), ("implement", "implementation")):
        selection = state["selections"][step]
        model, reason = escape(selection.model), escape(selection.reason)
        console.print(f"[cyan]{step}[/cyan] by {model} [dim]{reason}[/dim]")
        console.print(state[key], markup=False)
