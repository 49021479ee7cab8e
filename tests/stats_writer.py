"""Run tasks in a process of their own, so tests can check that model stats outlive it.

`python tests/stats_writer.py CONFIG PROMPT [--count N] [--at-once] [--ready-file R --start-file S]`
runs the prompt N times through `arun_task`, which opens the store the config's
`persistence.url` names, and prints one JSON line per task with its status and model. With
R and S, it creates R once it is loaded and waits for S, so that another process can start
its own tasks at the same moment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from modelyard.configs import ModelRegistry, load_config
from modelyard.graphs import arun_task
from modelyard.nodes import Context
from modelyard.state import Task


async def write_stats(config_path: str, prompt: str, count: int, at_once: bool) -> list[Task]:
    """Run `prompt` `count` times against the config, one after another or all at once."""
    context = Context(registry=ModelRegistry(load_config(config_path)))
    if at_once:
        return list(
            await asyncio.gather(*(arun_task(prompt, context=context) for _ in range(count)))
        )
    return [await arun_task(prompt, context=context) for _ in range(count)]


def wait_for(start_file: Path, timeout: float = 30.0) -> None:
    """Block until `start_file` exists, so that several writers start together."""
    deadline = time.monotonic() + timeout
    while not start_file.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"start file {start_file} did not appear within {timeout:g} s")
        time.sleep(0.005)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, wait for the start file if any, run the tasks, print them."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", help="the YAML config, with persistence.url set")
    parser.add_argument("prompt", help="the prompt each task runs")
    parser.add_argument("--count", type=int, default=1, help="how many tasks to run")
    parser.add_argument("--at-once", action="store_true", help="run the tasks concurrently")
    parser.add_argument("--ready-file", type=Path, help="create this file once loaded")
    parser.add_argument("--start-file", type=Path, help="then wait until this file exists")
    args = parser.parse_args(argv)
    if args.ready_file is not None:
        args.ready_file.touch()
    if args.start_file is not None:
        wait_for(args.start_file)
    tasks = asyncio.run(write_stats(args.config, args.prompt, args.count, args.at_once))
    for task in tasks:
        print(json.dumps({"status": task.status.value, "model": task.assigned_model}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
