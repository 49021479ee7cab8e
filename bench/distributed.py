"""Scaling of the distributed runner: 1, 2 and 3 `modelyard worker` processes on one queue.

Run: `python bench/distributed.py [--tasks 600] [--delay 0.5] [--concurrency 8]
[--postgres postgresql://postgres@127.0.0.1:5432/test]`.

The local protocol server runs in a process of its own and answers every chat request after
`--delay` seconds. For 1, 2 and 3 worker processes (each running `--concurrency` tasks at
once), a fresh PostgreSQL schema gets the workers, then `--tasks` route tasks submitted from
this process, timed from the first submit until the last task completed. The table gives
tasks/s, the bound the model's latency puts on it (workers x concurrency / delay), the
workers' CPU milliseconds per task, and the ratio to one worker. The last line is
`scaling_3_workers_vs_1: X` (target: >= 2.5).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
from local_server import start_server

from modelyard.configs import load_config
from modelyard.graphs.distributed import DistributedRunner
from modelyard.state import Task, TaskStatus

CONFIG = """\
models:
  - name: reasoner
    model: ollama:phi3:mini
    base_url: {url}
    roles: [planning, problem_solving, explanation, general]
    context_window: 4096
  - name: coder
    model: ollama:deepseek-coder:6.7b-instruct
    base_url: {url}
    roles: [code_generation, code_review]
    context_window: 16384
persistence:
  url: '{database}'
"""


@dataclass
class Result:
    workers: int
    tasks: int
    seconds: float
    cpu_seconds: float
    bound: float

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu_seconds / self.tasks


def workers_cpu(workers: list[subprocess.Popen[bytes]]) -> float:
    """Return the CPU seconds the running worker processes have used so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for worker in workers:
        fields = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def start_worker(config: Path, name: str, concurrency: int, log: Path) -> subprocess.Popen[bytes]:
    command = [str(Path(sys.executable).parent / "modelyard"), "worker", "-c", str(config)]
    command += ["-n", str(concurrency), "--name", name]
    with log.open("w") as sink:
        worker = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while f"worker {name}: taking tasks" not in log.read_text():
        if worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"worker {name} did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return worker


async def run_workers(count: int, args: argparse.Namespace, url: str, folder: Path) -> Result:
    schema = f"modelyard_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(args.postgres, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        database = f"{args.postgres}?options=-csearch_path%3D{schema}"
        config = folder / f"bench-{count}.yaml"
        config.write_text(CONFIG.format(url=url, database=database))
        settings = load_config(config)
        async with DistributedRunner(config=settings, poll_seconds=0.1) as runner:
            workers: list[subprocess.Popen[bytes]] = []
            try:
                for n in range(count):
                    log = folder / f"w{n}.log"
                    workers.append(
                        await asyncio.to_thread(
                            start_worker, config, f"bench{n}", args.concurrency, log
                        )
                    )
                cpu = workers_cpu(workers)  # from here: start-up not counted
                started = time.perf_counter()
                tasks = [Task(prompt=f"Explain topic {n}") for n in range(args.tasks)]
                await runner.submit_many(tasks)
                await runner.join()
                seconds = time.perf_counter() - started
                cpu = workers_cpu(workers) - cpu
                counts = await runner.counts()
            finally:
                for worker in workers:
                    worker.send_signal(signal.SIGTERM)
                for worker in workers:
                    await asyncio.to_thread(worker.wait)
        if counts[TaskStatus.COMPLETED] != args.tasks:
            raise SystemExit(f"not every task completed: {counts}")
        bound = count * args.concurrency / args.delay
        return Result(count, args.tasks, seconds, cpu, bound)
    finally:
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def print_table(args: argparse.Namespace, results: list[Result]) -> None:
    base = results[0]
    print(
        f"{args.tasks} tasks, model answering after {args.delay * 1000:.0f} ms, "
        f"{args.concurrency} tasks at once per worker"
    )
    print(
        f"{'workers':<9}{'seconds':>9}{'tasks/s':>9}{'bound':>8}{'of bound':>10}"
        f"{'CPU ms/task':>13}{'vs 1':>7}"
    )
    for r in results:
        print(
            f"{r.workers:<9}{r.seconds:>9.2f}{r.rate:>9.1f}{r.bound:>8.1f}"
            f"{r.rate / r.bound:>10.3f}{r.cpu_ms:>13.1f}{r.rate / base.rate:>7.2f}"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--delay", type=float, default=0.5, help="server delay in seconds")
    parser.add_argument("--concurrency", type=int, default=8, help="tasks at once per worker")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    server, url = start_server(args.delay)
    try:
        with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as folder:
            results = [await run_workers(n, args, url, Path(folder)) for n in (1, 2, 3)]
    finally:
        server.terminate()
        server.wait()
    print_table(args, results)
    print(f"\nscaling_3_workers_vs_1: {results[2].rate / results[0].rate:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
