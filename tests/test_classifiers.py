"""The embedding, LLM and hybrid classifiers, over real LangChain clients and HTTP.

The local protocol server embeds text as a hashed bag of words: crude, but real vectors
over the real Ollama and OpenAI embedding protocols, so the classifiers' fitting, caching,
batching, calibration and fallbacks are tested end to end. The MiniLM tests are in
test_semantic.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from langchain_ollama import OllamaEmbeddings
from langchain_openai import OpenAIEmbeddings
from support import config_text, run_modelyard, write_config

from modelyard.configs import ModelRegistry, load_config
from modelyard.configs.embeddings import build_embeddings
from modelyard.configs.schema import ClassifierThresholds
from modelyard.graphs import build_route_graph
from modelyard.nodes import Context
from modelyard.nodes.classifiers import (
    EmbeddingClassifier,
    HybridClassifier,
    KeywordClassifier,
    LabeledText,
    LLMClassifier,
    LLMClassifierError,
    build_classifier,
    embedding_classifier,
    read_labeled,
    tune_thresholds,
)
from modelyard.routers.semantic import calibration_error, fit_semantic_model
from modelyard.state import Classification, ConfigError, TaskType
from modelyard.testing.server import Fault, LocalModelServer

pytestmark = pytest.mark.protocol

EMBEDDER = "nomic-embed-text"
T = TaskType

#: A small labeled set in each task type's own words, for fitting on hashed words.
EXEMPLARS = [
    *(
        LabeledText(text, T.PLANNING)
        for text in (
            "plan the migration of our services to kubernetes in phases",
            "outline the phases and milestones for the rollout, no code",
            "what steps should we take to split the monolith, roadmap please",
            "draft a plan with phases for moving the database",
        )
    ),
    *(
        LabeledText(text, T.CODE_GENERATION)
        for text in (
            "write a python function that parses dates",
            "write a bash script that renames files",
            "generate a function in go that reverses a list",
            "write unit tests for this function",
        )
    ),
    *(
        LabeledText(text, T.CODE_REVIEW)
        for text in (
            "review this pull request for bugs and style",
            "please review my code, is it idiomatic",
            "code review: any security issues in this handler",
            "review this diff before I merge it",
        )
    ),
    *(
        LabeledText(text, T.PROBLEM_SOLVING)
        for text in (
            "my app crashes with a traceback on startup, error attached",
            "the build fails with an error about missing symbols",
            "getting an exception when the request times out, error log",
            "tests fail with this error, stack trace below",
        )
    ),
    *(
        LabeledText(text, T.EXPLANATION)
        for text in (
            "explain how garbage collection works in java",
            "explain the difference between threads and processes",
            "explain how dns resolution works",
            "explain what a monad is in simple words",
        )
    ),
    *(
        LabeledText(text, T.GENERAL)
        for text in (
            "write a poem about autumn leaves and rain",
            "recipe for a chocolate cake for my birthday party",
            "suggest a holiday itinerary for rome and florence",
            "write a friendly email to my neighbour about the garden",
        )
    ),
]


@pytest.fixture
def embed_server() -> LocalModelServer:
    """A local server with the two chat models and an embeddings model."""
    with LocalModelServer(["phi3:mini", "deepseek-coder:6.7b-instruct", EMBEDDER]) as server:
        yield server


def ollama_embeddings(server: LocalModelServer) -> OllamaEmbeddings:
    return OllamaEmbeddings(model=EMBEDDER, base_url=server.url)


def classifier(
    server: LocalModelServer, cache: Path | None, *, batch_size: int = 8
) -> EmbeddingClassifier:
    return EmbeddingClassifier(
        ollama_embeddings(server),
        EXEMPLARS,
        model_id=f"ollama:{EMBEDDER}",
        cache_dir=cache,
        batch_size=batch_size,
    )


def embed_requests(server: LocalModelServer) -> int:
    return len(server.requests_for(EMBEDDER, kind="embeddings"))


def hybrid_config(tmp_path: Path, server: LocalModelServer, extra: str = "") -> Path:
    """A config with the hybrid classifier on the server's embeddings model."""
    text = config_text(server.url) + (
        "classifier:\n"
        "  method: hybrid\n"
        f"  embeddings: ollama:{EMBEDDER}\n"
        f"  exemplars: exemplars.jsonl\n"
        f"  cache_dir: {tmp_path / 'cache'}\n" + extra
    )
    lines = [json.dumps({"text": e.text, "label": e.label.value}) for e in EXEMPLARS]
    (tmp_path / "exemplars.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return write_config(tmp_path, text)


async def test_embedding_classifier_decides_by_meaning_with_calibrated_probabilities(
    embed_server: LocalModelServer, tmp_path: Path
) -> None:
    decision = await classifier(embed_server, tmp_path).aclassify(
        "please review this code for security issues before merge"
    )
    assert decision.task_type is T.CODE_REVIEW
    assert decision.method == "embedding"
    # Probabilities over every task type, not cosines: they sum to one.
    assert sum(decision.scores.values()) == pytest.approx(1.0, abs=1e-3)
    assert decision.confidence == max(decision.scores.values())
    assert len(decision.alternatives) == 3
    confidences = [a.confidence for a in decision.alternatives]
    assert confidences == sorted(confidences, reverse=True)
    assert all(c <= decision.confidence for c in confidences)
    assert decision.task_type not in {a.task_type for a in decision.alternatives}


async def test_exemplar_embeddings_are_cached_on_disk_per_model(
    embed_server: LocalModelServer, tmp_path: Path
) -> None:
    first = classifier(embed_server, tmp_path, batch_size=8)
    await first.afit()
    assert first.embedded_exemplars == len(EXEMPLARS)
    assert embed_requests(embed_server) == 3  # 24 exemplars, 8 per request

    embed_server.reset_log()
    second = classifier(embed_server, tmp_path)
    await second.afit()
    assert second.embedded_exemplars == 0
    assert embed_requests(embed_server) == 0
    # Without the saved model, the vectors still come from the cache.
    for saved in tmp_path.glob("*-model-*.npz"):
        saved.unlink()
    refitted = classifier(embed_server, tmp_path)
    await refitted.afit()
    assert refitted.embedded_exemplars == 0
    assert embed_requests(embed_server) == 0
    assert await second.aclassify("write a python function") == await first.aclassify(
        "write a python function"
    )

    # One more exemplar: only it is embedded, and the model is fitted again.
    grown = EmbeddingClassifier(
        ollama_embeddings(embed_server),
        [*EXEMPLARS, LabeledText("write a rust function that sums a vector", T.CODE_GENERATION)],
        model_id=f"ollama:{EMBEDDER}",
        cache_dir=tmp_path,
    )
    await grown.afit()
    assert grown.embedded_exemplars == 1

    # Another embeddings model gets a file of its own.
    other = EmbeddingClassifier(
        ollama_embeddings(embed_server), EXEMPLARS, model_id="ollama:other", cache_dir=tmp_path
    )
    await other.afit()
    assert other.embedded_exemplars == len(EXEMPLARS)


async def test_a_damaged_cache_is_embedded_again(
    embed_server: LocalModelServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = classifier(embed_server, tmp_path)
    await first.afit()
    assert first.cache is not None
    first.cache.path.write_bytes(b"not an npz file")
    for saved in tmp_path.glob("*-model-*.npz"):
        saved.write_bytes(b"damaged too")
    with caplog.at_level(logging.WARNING):
        again = classifier(embed_server, tmp_path)
        await again.afit()
    assert again.embedded_exemplars == len(EXEMPLARS)
    assert "damaged" in caplog.text


async def test_batch_classification_embeds_in_batches(
    embed_server: LocalModelServer, tmp_path: Path
) -> None:
    embedder = classifier(embed_server, tmp_path, batch_size=4)
    await embedder.afit()
    embed_server.reset_log()
    texts = [f"write a python function number {i}" for i in range(10)]
    decisions = await embedder.aclassify_batch(texts)
    assert embed_requests(embed_server) == 3  # 4 + 4 + 2
    assert [d.task_type for d in decisions] == [T.CODE_GENERATION] * 10
    assert decisions == [embedder.classify(text) for text in texts]


async def test_openai_compatible_embeddings_classify_the_same(
    embed_server: LocalModelServer, tmp_path: Path
) -> None:
    openai = EmbeddingClassifier(
        OpenAIEmbeddings(
            model=EMBEDDER,
            base_url=embed_server.openai_url,
            api_key="test",  # type: ignore[arg-type]
            check_embedding_ctx_length=False,
        ),
        EXEMPLARS,
        model_id=f"openai:{EMBEDDER}",
        cache_dir=tmp_path,
    )
    ollama = classifier(embed_server, tmp_path)
    prompt = "explain how dns works in simple words"
    from_openai, from_ollama = await openai.aclassify(prompt), await ollama.aclassify(prompt)
    assert from_openai.task_type is from_ollama.task_type is T.EXPLANATION
    assert from_openai.confidence == pytest.approx(from_ollama.confidence, abs=1e-3)


def test_build_embeddings_takes_urls_and_keys_from_the_config(tmp_path: Path) -> None:
    text = config_text("http://127.0.0.1:9") + (
        "providers:\n  lmstudio: {base_url: 'http://127.0.0.1:1235/v1'}\n"
        "classifier: {method: embedding, embeddings: lmstudio:nomic-embed}\n"
    )
    config = load_config(write_config(tmp_path, text))
    assert config.classifier.embeddings is not None
    client = build_embeddings(config, config.classifier.embeddings)
    assert isinstance(client, OpenAIEmbeddings)
    assert client.openai_api_base == "http://127.0.0.1:1235/v1"
    assert client.model == "nomic-embed"
    ollama = build_embeddings(
        config, config.classifier.embeddings.model_copy(update={"model": "ollama:nomic"})
    )
    assert isinstance(ollama, OllamaEmbeddings)
    assert ollama.base_url == "http://127.0.0.1:9", "the server the Ollama models are on"


async def test_hybrid_lets_a_sure_keyword_decide_without_embedding(
    embed_server: LocalModelServer, tmp_path: Path
) -> None:
    config = load_config(hybrid_config(tmp_path, embed_server, "  llm: false\n"))
    cascade = build_classifier(config, ModelRegistry(config), config_dir=tmp_path)
    assert isinstance(cascade, HybridClassifier)
    await cascade.embedding.afit()  # type: ignore[union-attr]
    embed_server.reset_log()

    sure = "Please review this code: any bugs or security issues? Critique it."
    keyword = KeywordClassifier().classify(sure)
    assert keyword.confidence >= config.classifier.thresholds.keyword
    decision = await cascade.aclassify(sure)
    assert (decision.method, decision.task_type) == ("keyword", T.CODE_REVIEW)
    assert [(s.method, s.outcome) for s in decision.steps] == [("keyword", "decided")]
    assert embed_requests(embed_server) == 0

    unsure = "garbage collection in java, how it works"
    decision = await cascade.aclassify(unsure)
    assert [(s.method, s.outcome) for s in decision.steps] == [
        ("keyword", "unsure"),
        ("embedding", "decided"),
    ]
    assert decision.method == "embedding"
    assert embed_requests(embed_server) == 1

    # In a batch: the same decisions, and one embedding request for the unsure prompts.
    embed_server.reset_log()
    texts = [sure, unsure, "dns resolution, how it works", sure]
    batch = await cascade.aclassify_batch(texts)
    one_by_one = [await cascade.aclassify(text) for text in texts]
    assert [(d.method, d.task_type) for d in batch] == [(d.method, d.task_type) for d in one_by_one]
    assert [d.confidence for d in batch] == pytest.approx([d.confidence for d in one_by_one])
    assert embed_requests(embed_server) == 1 + 2  # the batch, then two unsure one by one


async def test_hybrid_asks_the_llm_when_the_embeddings_are_unsure(
    embed_server: LocalModelServer, tmp_path: Path
) -> None:
    config = load_config(
        hybrid_config(tmp_path, embed_server, "  thresholds: {keyword: 1.0, embedding: 1.0}\n")
    )
    embed_server.script(
        "phi3:mini", ['{"task_type": "problem_solving", "confidence": 0.9}', "no idea, sorry"]
    )
    cascade = build_classifier(config, ModelRegistry(config), config_dir=tmp_path)
    decision = await cascade.aclassify("a quiet request with few known words")
    assert [(s.method, s.outcome) for s in decision.steps] == [
        ("keyword", "unsure"),
        ("embedding", "unsure"),
        ("llm", "decided"),
    ]
    assert (decision.method, decision.task_type, decision.confidence) == (
        "llm",
        T.PROBLEM_SOLVING,
        0.9,
    )
    (call,) = embed_server.requests_for("phi3:mini")
    assert "a quiet request with few known words" in json.dumps(call.body)
    assert call.body["format"]["properties"]["task_type"]["enum"][0] == "planning"
    # The configured client's options go along, at temperature 0.
    assert call.body["options"]["temperature"] == 0.0
    assert call.body["options"]["num_ctx"] == 4096

    # Garbage from the judge: the embedding classifier's answer stands.
    decision = await cascade.aclassify("dns, in simple words")
    assert [(s.method, s.outcome) for s in decision.steps] == [
        ("keyword", "unsure"),
        ("embedding", "decided"),
        ("llm", "failed"),
    ]
    assert decision.method == "embedding"
    assert "not a task type" in decision.steps[-1].note


async def test_llm_classifier_answers_and_fails_clearly(
    embed_server: LocalModelServer, tmp_path: Path
) -> None:
    config = load_config(write_config(tmp_path, config_text(embed_server.url)))
    judge = LLMClassifier(ModelRegistry(config), "reasoner")
    embed_server.script(
        "phi3:mini",
        [
            "code_review",
            '```json\n{"task_type": "planning"}\n```',
            "I think this is a code review, mostly.",
            "Either explanation or general.",
        ],
    )
    bare = await judge.aclassify("look at my code")
    fenced = await judge.aclassify("how should we structure this")
    sentence = await judge.aclassify("look at this")
    assert (bare.task_type, fenced.task_type, sentence.task_type) == (
        T.CODE_REVIEW,
        T.PLANNING,
        T.CODE_REVIEW,
    )
    assert bare.method == "llm"
    with pytest.raises(LLMClassifierError, match="not a task type"):
        await judge.aclassify("what is it")

    embed_server.inject_fault(Fault.status_code(500), model="phi3:mini", times=None)
    llm_only = build_classifier(config, ModelRegistry(config), method="llm")
    decision = await llm_only.aclassify("write a python function that adds two numbers")
    assert decision.method == "keyword"
    assert decision.task_type is T.CODE_GENERATION
    failed = [s for s in decision.steps if s.method == "llm"]
    assert failed and failed[0].outcome == "failed" and "500" in failed[0].note


async def test_embeddings_server_down_falls_back_to_keywords(tmp_path: Path) -> None:
    with LocalModelServer(["phi3:mini", "deepseek-coder:6.7b-instruct", EMBEDDER]) as server:
        config = load_config(hybrid_config(tmp_path, server, "  llm: false\n"))
        server.inject_fault(Fault.status_code(503), model=EMBEDDER, times=None)
        cascade = build_classifier(config, ModelRegistry(config), config_dir=tmp_path)
        prompt = "garbage collection in java, how it works"
        decision = await cascade.aclassify(prompt)
    assert decision.method == "keyword"
    assert decision.task_type is KeywordClassifier().classify(prompt).task_type
    assert [(s.method, s.outcome) for s in decision.steps] == [
        ("keyword", "decided"),
        ("embedding", "failed"),
    ]


async def test_route_graph_records_how_the_type_was_decided(
    embed_server: LocalModelServer, tmp_path: Path
) -> None:
    config = load_config(hybrid_config(tmp_path, embed_server, "  llm: false\n"))
    graph = build_route_graph().compile()
    result = await graph.ainvoke(
        {"prompt": "garbage collection in java, how it works"},
        context=Context(config=config),
    )
    classification: Classification = result["classification"]
    assert classification.method == "embedding"
    assert result["task_type"] is T.EXPLANATION
    (event,) = [e for e in result["history"] if e.kind == "classified"]
    assert "also tried keyword" in event.detail
    assert [s["method"] for s in event.data["steps"]] == ["keyword", "embedding"]
    assert len(event.data["alternatives"]) == 3
    assert result["assigned_model"] == "reasoner"  # explanation goes to the reasoner


def test_a_shared_embedding_classifier_works_from_several_event_loops(
    embed_server: LocalModelServer, tmp_path: Path
) -> None:
    import asyncio

    config = load_config(hybrid_config(tmp_path, embed_server, "  llm: false\n"))
    shared = embedding_classifier(config, tmp_path)
    assert embedding_classifier(config, tmp_path) is shared
    first = asyncio.run(shared.aclassify("garbage collection in java, how it works"))
    second = asyncio.run(shared.aclassify("garbage collection in java, how it works"))
    assert first == second and first.method == "embedding"


async def test_a_classifier_that_cannot_be_built_leaves_the_task_to_keywords(
    embed_server: LocalModelServer, tmp_path: Path
) -> None:
    path = hybrid_config(tmp_path, embed_server, "  llm: false\n")
    (tmp_path / "exemplars.jsonl").unlink()
    graph = build_route_graph().compile()
    result = await graph.ainvoke(
        {"prompt": "Write a Python function that adds two numbers"},
        context=Context(config=load_config(path)),
    )
    assert result["status"] == "completed"
    classification: Classification = result["classification"]
    assert (classification.method, classification.task_type) == ("keyword", T.CODE_GENERATION)
    failed, decided = classification.steps
    assert (failed.method, failed.outcome) == ("hybrid", "failed")
    assert "exemplars.jsonl" in failed.note and "no such file" in failed.note
    assert decided.outcome == "decided"
    (event,) = [e for e in result["history"] if e.kind == "classified"]
    assert "also tried hybrid (failed" in event.detail


def test_calibration_makes_confidence_track_accuracy() -> None:
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(len(TaskType), 32))
    labels = [t for t in TaskType for _ in range(40)]
    noisy = np.array(
        [centers[list(TaskType).index(t)] + rng.normal(scale=1.6, size=32) for t in labels]
    )
    texts = [""] * len(labels)
    model = fit_semantic_model(noisy, texts, labels, keyword_features=False, word_dimensions=0)
    fresh_labels = [t for t in TaskType for _ in range(60)]
    fresh = np.array(
        [centers[list(TaskType).index(t)] + rng.normal(scale=1.6, size=32) for t in fresh_labels]
    )
    decisions = [model.decision(p) for p in model.probabilities(fresh, [""] * len(fresh))]
    correct = [d.task_type is t for d, t in zip(decisions, fresh_labels, strict=True)]
    accuracy = sum(correct) / len(correct)
    assert 0.4 < accuracy < 0.98, "the data should be neither trivial nor hopeless"
    mean_confidence = sum(d.confidence for d in decisions) / len(decisions)
    assert mean_confidence == pytest.approx(accuracy, abs=0.1)
    assert calibration_error([d.confidence for d in decisions], correct) < 0.1


def test_fit_picks_the_keyword_threshold_that_classifies_best() -> None:
    def decision(task_type: TaskType, confidence: float, method: str) -> Classification:
        return Classification(task_type=task_type, confidence=confidence, method=method)

    rows = [LabeledText(str(i), T.PLANNING) for i in range(4)]
    decisions = [
        # Keyword right and very sure; embedding wrong.
        (decision(T.PLANNING, 0.97, "keyword"), decision(T.GENERAL, 0.6, "embedding")),
        # Keyword wrong at 0.8; embedding right.
        (decision(T.GENERAL, 0.8, "keyword"), decision(T.PLANNING, 0.7, "embedding")),
        (decision(T.PLANNING, 0.95, "keyword"), decision(T.GENERAL, 0.9, "embedding")),
        (decision(T.GENERAL, 0.5, "keyword"), decision(T.PLANNING, 0.3, "embedding")),
    ]
    fitted = tune_thresholds(rows, decisions, has_llm=True)
    assert fitted.keyword == 0.95  # takes both sure keyword rows, not the 0.8 one
    # The rows left to the embeddings (keyword under 0.95) are right from 0.3 up.
    assert fitted.embedding == 0.3
    without_llm = tune_thresholds(rows, decisions, has_llm=False)
    assert without_llm == ClassifierThresholds(keyword=0.95)
    # Embeddings never right 80% of the time: always ask the judge.
    wrong = [(k, e.model_copy(update={"task_type": T.GENERAL})) for k, e in decisions]
    assert tune_thresholds(rows, wrong, has_llm=True).embedding == 1.0


def test_config_errors_say_what_to_set(tmp_path: Path) -> None:
    base = config_text("http://127.0.0.1:9")
    cases = {
        "classifier: {method: hybrid}\n": "needs an embeddings model",
        "classifier: {method: embedding, embeddings: nomic-embed-text}\n": "needs a provider",
        "classifier: {method: embedding, embeddings: 'voyage:x'}\n": "unknown embeddings provider",
        "classifier: {method: llm, model: judge}\n": "unknown model 'judge'",
        "classifier: {method: smart}\n": "classifier.method",
    }
    for extra, message in cases.items():
        with pytest.raises(ConfigError) as caught:
            load_config(write_config(tmp_path, base + extra))
        assert message in str(caught.value), extra


def test_labeled_files_are_checked_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "labeled.jsonl"
    path.write_text(
        '{"text": "plan it", "label": "planning"}\n'
        "not json\n"
        '{"text": "", "label": "general"}\n'
        '{"text": "x", "label": "chitchat"}\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        read_labeled(path)
    message = str(caught.value)
    assert f"{path}:2" in message and "not JSON" in message
    assert f"{path}:3" in message and "non-empty string" in message
    assert f"{path}:4" in message and "'chitchat'" in message and "planning" in message
    with pytest.raises(ConfigError, match="no such file"):
        read_labeled(tmp_path / "missing.jsonl")


def test_packaged_exemplars_cover_every_task_type() -> None:
    from modelyard.configs.embeddings import EXEMPLARS_DIR

    rows = read_labeled(EXEMPLARS_DIR)
    counts = {t: sum(r.label is t for r in rows) for t in TaskType}
    assert min(counts.values()) >= 100, counts
    assert len({r.text for r in rows}) == len(rows), "no exemplar is given twice"


@pytest.mark.cli
@pytest.mark.usefixtures("stats_database")
def test_eval_classifier_prints_the_report_and_accuracy_last(tmp_path: Path) -> None:
    labeled = tmp_path / "labeled.jsonl"
    rows = [
        ("Please review this code for bugs: def f(x): return x", "code_review"),
        ("Write a Python function that reverses a string", "code_generation"),
        ("Explain how DNS resolution works", "explanation"),
        ("Write a poem about the sea", "general"),
    ]
    labeled.write_text(
        "".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows),
        encoding="utf-8",
    )
    done = run_modelyard("eval-classifier", str(labeled), "--method", "keyword")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "accuracy: 1.000"
    text = done.stdout
    assert "method: keyword" in text
    assert "precision" in text and "recall" in text
    assert "confusion (rows: label, columns: chosen)" in text
    assert "latency per prompt: median" in text and "p95" in text

    bad = run_modelyard("eval-classifier", str(labeled), "--method", "magic")
    assert bad.returncode == 2
    assert "unknown method 'magic'" in bad.stderr
