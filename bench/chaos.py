"""Chaos: many tasks at once over three models whose calls fail at random.

Run: `python bench/chaos.py [--tasks 1000] [--concurrency 50] [--protocol ollama|openai]`.
Every call to any model gets HTTP 500 (20%), 429 with Retry-After (10%), a hang past the
timeout (5%), a malformed body (5%) or a stream cut midway (5%). Each task ends completed,
failed (by error kind) or lost (it raised, or did not end in time). The last line is `lost: N`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import openai  # noqa: F401  (modelyard imports it on the first failed call: about 0.5 s)
from langgraph.store.memory import InMemoryStore
from langgraph.types import StreamMode

from modelyard.configs import ModelRegistry, ModelyardConfig, load_config_text
from modelyard.graphs import build_route_graph
from modelyard.nodes import Context, StatsBook
from modelyard.state import ModelStats, TaskInput, TaskStatus
from modelyard.testing.server import Fault, LocalModelServer

ProtocolName = Literal["ollama", "openai"]

PROMPT = "Write a Python function that parses ISO dates (task {index})"
#: Configured name -> (model id on the server, code_generation capability).
MODELS = {
    "alpha": ("alpha-coder:7b", 0.90),
    "beta": ("beta-coder:7b", 0.80),
    "gamma": ("gamma-coder:3b", 0.70),
}
RETRY_AFTER = 0.2
MODEL_TIMEOUT = 0.5
FAULT_MIX: list[tuple[float, Fault]] = [
    (0.20, Fault.status_code(500)),
    (0.10, Fault.status_code(429, retry_after=RETRY_AFTER)),
    (0.05, Fault.hang()),
    (0.05, Fault.malformed()),
    (0.05, Fault.cut_stream(after_chunks=2)),
]
COMPLETED_TARGET = 0.99

CONFIG = """\
models:
{models}
retry: {{max_attempts: 3, initial_interval: 0.05, backoff_factor: 2.0, max_interval: 0.2,
        jitter: false, max_retry_after: 5}}
cooldown: {{allowed_fails: {allowed_fails}, cooldown_seconds: 0.5, max_wait_seconds: 5}}
persistence: {{url: memory}}
"""
MODEL_ENTRY = """\
  - name: {name}
    model: {provider}:{model_id}
    base_url: {url}
    roles: [code_generation]
    capabilities: {{code_generation: {capability}}}
    timeout: {timeout}
    initial_stats: {{success_rate: 1.0, latency_ms: 50}}
"""


@dataclass(frozen=True)
class Outcome:
    """What became of one task: `completed`, `failed` or `lost`, and why when not completed."""

    result: Literal["completed", "failed", "lost"]
    detail: str = ""
    """The error kind of a failed task, or what a lost task raised."""
    given_up: tuple[tuple[str, int], ...] = ()
    """(error kind, calls made) of each model the task fell back from, completed or not."""


def bench_config(
    server: LocalModelServer, protocol: ProtocolName, allowed_fails: int
) -> ModelyardConfig:
    """Return a config of the three models, all served by `server` over `protocol`."""
    if protocol == "ollama":
        provider, url = "ollama", server.url
    else:
        provider, url = "openai_compatible", server.openai_url
    entries = "".join(
        MODEL_ENTRY.format(
            name=name,
            provider=provider,
            model_id=model_id,
            url=url,
            capability=capability,
            timeout=MODEL_TIMEOUT,
        )
        for name, (model_id, capability) in MODELS.items()
    )
    text = CONFIG.format(models=entries, allowed_fails=allowed_fails)
    return load_config_text(text, name="bench/chaos.py")


def outcome_of(state: dict[str, Any]) -> Outcome:
    """Return the outcome a task's final state records."""
    status = state.get("status")
    given_up = tuple((f.kind, f.calls) for f in state.get("failures") or [])
    if status is TaskStatus.COMPLETED:
        return Outcome("completed", given_up=given_up)
    if status is not TaskStatus.FAILED:
        return Outcome("lost", f"ended with status {status!r}")
    error = state.get("error") or {}
    return Outcome("failed", str(error.get("kind", "unknown")), given_up)


async def run_tasks(
    config: ModelyardConfig, tasks: int, concurrency: int, stream: bool, bound: float
) -> tuple[list[Outcome], InMemoryStore]:
    """Run `tasks` tasks, `concurrency` at a time; return their outcomes and the stats store."""
    store = InMemoryStore()
    graph = build_route_graph(config).compile(store=store)
    context = Context(registry=ModelRegistry(config))
    gate = asyncio.Semaphore(concurrency)

    async def invoke(task: TaskInput) -> dict[str, Any]:
        if not stream:
            state: dict[str, Any] = await graph.ainvoke(task, context=context)
            return state
        final: dict[str, Any] = {}
        modes: list[StreamMode] = ["messages", "values"]
        async for part in graph.astream(task, context=context, stream_mode=modes):
            mode, chunk = cast(tuple[StreamMode, Any], part)
            if mode == "values":
                final = chunk
        return final

    async def one(index: int) -> Outcome:
        task: TaskInput = {"prompt": PROMPT.format(index=index), "task_type": "code_generation"}
        async with gate:
            try:
                return outcome_of(await asyncio.wait_for(invoke(task), bound))
            except TimeoutError:
                return Outcome("lost", f"not finished within {bound:g} s")
            except Exception as exc:
                return Outcome("lost", f"{type(exc).__name__}: {str(exc)[:120]}")

    outcomes = await asyncio.gather(*(one(index) for index in range(1, tasks + 1)))
    return list(outcomes), store


def print_outcomes(outcomes: Sequence[Outcome]) -> None:
    """Print the outcome counts, with failures and losses broken down by kind."""
    total = len(outcomes)
    print(f"{'outcome':<60}{'tasks':>7}{'share':>9}")
    for result in ("completed", "failed", "lost"):
        mine = [o for o in outcomes if o.result == result]
        print(f"{result:<60}{len(mine):>7}{len(mine) / total:>9.1%}")
        for detail, count in Counter(o.detail for o in mine if o.detail).most_common():
            print(f"  {detail[:56]:<58}{count:>7}")
    failed = [attempt for o in outcomes if o.result == "failed" for attempt in o.given_up]
    if failed:
        print(f"failed tasks' attempts by kind: {tally(kind for kind, _ in failed)}")
        print(f"failed tasks' attempts by calls: {tally(str(calls) for _, calls in failed)}")
    every = [attempt for o in outcomes for attempt in o.given_up]
    print(f"fallbacks in all tasks by calls made: {tally(str(calls) for _, calls in every)}")


def tally(items: Iterable[str]) -> str:
    """Return `a 3, b 1`: each item with its count, most common first."""
    return ", ".join(f"{item} {count}" for item, count in Counter(items).most_common()) or "none"


def describe_mix() -> str:
    """Return the fault mix as `20% HTTP 500, 10% HTTP 429, ...`."""
    names = {"status": "HTTP", "cut_stream": "cut stream"}
    parts = []
    for probability, fault in FAULT_MIX:
        name = names.get(fault.kind, fault.kind)
        parts.append(
            f"{probability:.0%} {name}" + (f" {fault.status}" if fault.kind == "status" else "")
        )
    return ", ".join(parts)


def print_calls(server: LocalModelServer, stats: dict[str, ModelStats]) -> None:
    """Print each model's calls by fault the server injected, and by failure modelyard saw."""
    faults = {"none": "answered", "status": "500 or 429", "hang": "hang"}
    faults |= {"malformed": "malformed", "cut_stream": "cut stream"}
    print(f"{'server side':<12}{'calls':>7}" + "".join(f"{f:>12}" for f in faults.values()))
    for name, (model_id, _) in MODELS.items():
        seen = Counter(r.fault or "none" for r in server.requests_for(model_id))
        row = "".join(f"{seen[f]:>12}" for f in faults)
        print(f"{name:<12}{sum(seen.values()):>7}{row}")
    kinds = ["server_error", "rate_limited", "timeout", "malformed_response", "connection"]
    print(f"{'modelyard':<12}{'ok':>7}" + "".join(f"{k[:11]:>12}" for k in kinds))
    for name in MODELS:
        record = stats[name]
        row = "".join(f"{record.failures_by_kind.get(k, 0):>12}" for k in kinds)
        print(f"{name:<12}{record.successes:>7}{row}")
    print("(modelyard's failures per kind, from its stats store; a timeout beyond the hangs is")
    print(" a call the server did not accept in time)")


async def main(
    tasks: int,
    concurrency: int,
    protocol: ProtocolName,
    stream: bool,
    seed: int,
    bound: float,
    allowed_fails: int,
) -> int:
    models = [model_id for model_id, _ in MODELS.values()]
    with LocalModelServer(models) as server:
        server.inject_random_faults(FAULT_MIX, seed=seed)
        config = bench_config(server, protocol, allowed_fails)
        started = time.perf_counter()
        outcomes, store = await run_tasks(config, tasks, concurrency, stream, bound)
        wall = time.perf_counter() - started
        server.clear_faults()
        stats = await StatsBook(store, config).snapshot()
        print(
            f"{tasks} tasks, {protocol} protocol{' (streamed)' if stream else ''}, "
            f"concurrency {concurrency}, seed {seed}, model timeout {MODEL_TIMEOUT:g} s, "
            f"allowed_fails {allowed_fails}"
        )
        print(f"faults per call, on every model: {describe_mix()}")
        print_outcomes(outcomes)
        print()
        print_calls(server, stats)
    completed = sum(o.result == "completed" for o in outcomes) / tasks
    lost = sum(o.result == "lost" for o in outcomes)
    print()
    print(f"wall time: {wall:.1f} s ({tasks / wall:.0f} tasks/s)")
    met = "met" if completed >= COMPLETED_TARGET else "NOT met"
    print(f"completed {completed:.1%} (target >= {COMPLETED_TARGET:.0%}: {met})")
    print(f"lost {lost} (target 0: {'met' if lost == 0 else 'NOT met'})")
    print(f"lost: {lost}")
    return lost


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50, help="tasks running at once")
    parser.add_argument("--protocol", choices=["ollama", "openai"], default="ollama")
    parser.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run with stream_mode messages, so that OpenAI answers stream too (default: yes)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault draws")
    parser.add_argument("--bound", type=float, default=60.0, help="seconds before a task is lost")
    parser.add_argument("--allowed-fails", type=int, default=3, help="cooldown.allowed_fails")
    args = parser.parse_args()
    asyncio.run(
        main(
            args.tasks,
            args.concurrency,
            args.protocol,
            args.stream,
            args.seed,
            args.bound,
            args.allowed_fails,
        )
    )
