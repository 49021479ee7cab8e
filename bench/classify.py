"""The task classifiers on a labeled file: accuracy, calibration, and time per prompt.

Run: `python bench/classify.py [--file ../shared/eval/dev_tasks.jsonl] [--embeddings minilm]
[--repeats 3]`. Needs the `semantic` extra for MiniLM. Prints, per method (keyword,
embedding, hybrid without its LLM step): accuracy, calibration error, who decided, and the
median and p95 time per prompt; then the hybrid's median time over the bare embedding call
of the same prompts, measured in the same run, interleaved, so the machine's noise hits
both alike. Last lines: `accuracy_keyword: X`, `accuracy_hybrid: X` and
`latency_ratio_vs_embedding_call: X` (targets: hybrid >= 0.90, ratio <= 1.1).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from modelyard.cli.classify import Evaluation, evaluate
from modelyard.configs import ModelRegistry, load_config
from modelyard.configs.schema import ClassifierSettings, EmbeddingSettings
from modelyard.nodes.classifiers import (
    HybridClassifier,
    KeywordClassifier,
    build_classifier,
    embedding_classifier,
    read_labeled,
)
from modelyard.routers.keywords import forget_keyword_scores

DEFAULT_FILE = Path(__file__).resolve().parent.parent.parent / "shared" / "eval" / "dev_tasks.jsonl"


async def timing(
    hybrid: HybridClassifier, texts: list[str], repeats: int
) -> tuple[list[float], list[float], list[float]]:
    """Per prompt: the median of `repeats` bare embedding calls (sync and async) and of
    `repeats` hybrid classifications, taken in turn."""
    assert hybrid.embedding is not None
    embeddings = hybrid.embedding.embeddings
    bare_sync: list[float] = []
    bare_async: list[float] = []
    classify: list[float] = []
    for text in texts:
        runs: dict[str, list[float]] = {"sync": [], "async": [], "hybrid": []}
        for _ in range(repeats):
            started = time.perf_counter()
            embeddings.embed_query(text)
            runs["sync"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await embeddings.aembed_query(text)
            runs["async"].append(time.perf_counter() - started)
            forget_keyword_scores()  # each run scores the prompt afresh, as a new prompt would
            started = time.perf_counter()
            await hybrid.aclassify(text)
            runs["hybrid"].append(time.perf_counter() - started)
        bare_sync.append(statistics.median(runs["sync"]))
        bare_async.append(statistics.median(runs["async"]))
        classify.append(statistics.median(runs["hybrid"]))
    return bare_sync, bare_async, classify


def row(name: str, evaluation: Evaluation) -> str:
    decided = ", ".join(f"{m} {n}" for m, n in evaluation.decided_by.most_common())
    return (
        f"{name:<22} {evaluation.accuracy:>8.3f} {evaluation.calibration():>6.3f} "
        f"{evaluation.latency(0.5):>9.2f} {evaluation.latency(0.95):>9.2f}   {decided}"
    )


async def main(file: Path, embeddings: str, repeats: int) -> None:
    rows = read_labeled(file)
    config = load_config("default")
    settings = ClassifierSettings(
        method="hybrid", embeddings=EmbeddingSettings(model=embeddings), llm=False
    )
    config = config.model_copy(update={"classifier": settings})
    registry = ModelRegistry(config)
    started = time.perf_counter()
    embedding = embedding_classifier(config)
    await embedding.afit()
    fit_seconds = time.perf_counter() - started
    hybrid = build_classifier(config, registry, method="hybrid")
    only_embedding = build_classifier(config, registry, method="embedding")
    assert isinstance(hybrid, HybridClassifier)

    forget_keyword_scores()
    keyword_eval = await evaluate(KeywordClassifier(), rows)
    forget_keyword_scores()
    embedding_eval = await evaluate(only_embedding, rows)
    forget_keyword_scores()
    hybrid_eval = await evaluate(hybrid, rows)

    print(
        f"{len(rows)} prompts from {file}; embeddings {embeddings}; {len(embedding.exemplars)} "
        f"exemplars ({embedding.embedded_exemplars} embedded now, the rest from the cache); "
        f"ready in {fit_seconds:.1f} s (MiniLM itself loads at the first call)"
    )
    print(f"hybrid thresholds: keyword {hybrid.thresholds.keyword}, no LLM step")
    print()
    print(f"{'method':<22} {'accuracy':>8} {'ECE':>6} {'median ms':>9} {'p95 ms':>9}   decided by")
    print(row("keyword", keyword_eval))
    print(row("embedding", embedding_eval))
    print(row("hybrid (no LLM)", hybrid_eval))

    texts = [r.text for r in rows]
    bare_sync, bare_async, classify = await timing(hybrid, texts, repeats)
    sync_ms = statistics.median(bare_sync) * 1000
    async_ms = statistics.median(bare_async) * 1000
    hybrid_ms = statistics.median(classify) * 1000
    print()
    print(f"time per prompt, median over prompts of the median of {repeats} runs each:")
    print(f"{'call':<34} {'median ms':>9} {'ratio':>7}")
    print(f"{'bare embed_query (baseline)':<34} {sync_ms:>9.2f} {1.0:>7.3f}")
    print(f"{'bare aembed_query':<34} {async_ms:>9.2f} {async_ms / sync_ms:>7.3f}")
    print(f"{'hybrid aclassify (no LLM)':<34} {hybrid_ms:>9.2f} {hybrid_ms / sync_ms:>7.3f}")
    print()
    print(f"accuracy_keyword: {keyword_eval.accuracy:.3f}")
    print(f"accuracy_hybrid: {hybrid_eval.accuracy:.3f}")
    print(f"latency_ratio_vs_embedding_call: {hybrid_ms / sync_ms:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--embeddings", default="minilm")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.file, args.embeddings, args.repeats))
