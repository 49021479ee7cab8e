"""Run one task through the route graph as a durable thread, so a test can kill and resume it.

`python tests/post_completion_worker.py CONFIG DB TASK_ID [--resume] [--die-before-write NAME |
--die-after-write NAME]` runs the task (prompt "Explain DNS") on a SQLite checkpointer and
store in DB with `durability="sync"`, thread id TASK_ID, and prints its post-completion
results as one JSON line. `--resume` continues the thread from its last checkpoint. The
`--die-*` options kill the process (SIGKILL) just before or just after the file named NAME
is written by `apply_effects`, to test the effect ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelyard.configs import load_config
from modelyard.configs.persistence import open_checkpointer, open_store
from modelyard.configs.schema import PersistenceSettings
from modelyard.graphs import build_route_graph
from modelyard.nodes import Context, effects


def die_around_write(name: str, *, after: bool) -> None:
    """Make `apply_effects` kill this process when it writes the file called `name`."""
    real = effects.write_atomically

    def write(target: Path, content: str, sha256: str) -> None:
        if target.name == name and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        real(target, content, sha256)
        if target.name == name and after:
            os.kill(os.getpid(), signal.SIGKILL)

    effects.write_atomically = write  # type: ignore[assignment]


async def run(config_path: str, db: str, task_id: str, resume: bool) -> dict[str, Any]:
    """Run or resume the task's thread; return its final state."""
    config = load_config(config_path)
    settings = PersistenceSettings(url=db)
    async with open_checkpointer(settings) as saver, open_store(settings) as store:
        graph = build_route_graph(config).compile(checkpointer=saver, store=store)
        payload = None if resume else {"prompt": "Explain DNS", "task_id": task_id}
        state: dict[str, Any] = await graph.ainvoke(
            payload,
            {"configurable": {"thread_id": task_id}},
            context=Context(config=config),
            durability="sync",
        )
        return state


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, run the task, print its post-completion results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config")
    parser.add_argument("db")
    parser.add_argument("task_id")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--die-before-write", metavar="NAME")
    parser.add_argument("--die-after-write", metavar="NAME")
    args = parser.parse_args(argv)
    if args.die_before_write:
        die_around_write(args.die_before_write, after=False)
    if args.die_after_write:
        die_around_write(args.die_after_write, after=True)
    state = asyncio.run(run(args.config, args.db, args.task_id, args.resume))
    results = [r.model_dump(mode="json") for r in state.get("post_completions") or []]
    print(json.dumps({"status": str(state.get("status")), "post_completions": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
