"""The embedding classifier's arithmetic: a calibrated linear model over exemplar embeddings.

Pure: vectors in, probabilities out. Fetching the embeddings, caching them and choosing
which method decides live in `modelyard.nodes.classifiers`.

The model is a multinomial logistic regression over the prompt's normalised embedding, its
keyword scores and a hashed bag of its words (these two carry what the request asks for,
where sentence embeddings mostly carry its topic). Its probabilities are calibrated by
temperature scaling on out-of-fold predictions over the exemplars, so that a confidence of
0.8 is right about four times in five on prompts like the exemplars, not a raw cosine.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from modelyard.routers.keywords import keyword_scores
from modelyard.state import Alternative, Classification, TaskType

Matrix = npt.NDArray[np.float64]

#: How much the keyword scores count beside the unit-length embedding (each score ~0-10).
KEYWORD_SCALE = 0.1
#: Slots of the hashed bag of words beside the embedding (0: none). Sentence embeddings
#: carry a prompt's topic; the words ("thoughts?", "jest tests for", "why does this throw")
#: carry what it asks for, in any language the exemplars use.
WORD_DIMENSIONS = 2048
_WORDS = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


@dataclass(frozen=True)
class SemanticModel:
    """A fitted classifier: weights per task type over the features, and a temperature."""

    labels: tuple[TaskType, ...]
    weights: Matrix
    """(features, labels)."""
    bias: Matrix
    """(labels,)."""
    temperature: float
    """Divides the logits; fitted so that the probabilities are calibrated."""
    keyword_features: bool
    """Whether the keyword scores are features beside the embedding."""
    word_dimensions: int = 0
    """Slots of the hashed bag of words beside the embedding (0: none)."""

    @property
    def dimensions(self) -> int:
        """The embedding's length this model expects."""
        extra = (len(TaskType) if self.keyword_features else 0) + self.word_dimensions
        return int(self.weights.shape[0]) - extra

    def probabilities(self, vectors: Matrix, texts: Sequence[str]) -> Matrix:
        """Return each row's probability per label, (rows, labels)."""
        features = build_features(
            vectors,
            texts,
            keyword_features=self.keyword_features,
            word_dimensions=self.word_dimensions,
        )
        return softmax((features @ self.weights + self.bias) / self.temperature)

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        """Return the model as named arrays, for `numpy.savez`."""
        return {
            "labels": np.array([t.value for t in self.labels], dtype=str),
            "weights": self.weights,
            "bias": self.bias,
            "settings": np.array(
                [self.temperature, float(self.keyword_features), float(self.word_dimensions)]
            ),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[np.generic]]) -> SemanticModel:
        """Rebuild a model from `to_arrays`' output.

        Raises:
            KeyError, ValueError: the arrays are not such a model.
        """
        temperature, keyword, words = (float(v) for v in arrays["settings"])
        return cls(
            labels=tuple(TaskType(str(v)) for v in arrays["labels"]),
            weights=np.asarray(arrays["weights"], dtype=np.float64),
            bias=np.asarray(arrays["bias"], dtype=np.float64),
            temperature=temperature,
            keyword_features=bool(keyword),
            word_dimensions=int(words),
        )

    def classify(self, vector: Sequence[float] | Matrix, text: str) -> Classification:
        """Return the task type of one embedded prompt, with its probability and alternatives.

        Raises:
            ValueError: the vector's length is not the one the model was fitted on.
        """
        row = np.asarray(vector, dtype=np.float64).reshape(1, -1)
        if row.shape[1] != self.dimensions:
            raise ValueError(
                f"the embedding has {row.shape[1]} dimensions and the classifier was fitted "
                f"on {self.dimensions}; the exemplars were embedded by another model"
            )
        return self.decision(self.probabilities(row, [text])[0])

    def decision(self, probabilities: Matrix) -> Classification:
        """Turn one row of probabilities into a `Classification`."""
        order = np.argsort(-probabilities)
        best = self.labels[int(order[0])]
        return Classification(
            task_type=best,
            confidence=round(float(probabilities[order[0]]), 4),
            method="embedding",
            scores={t: round(float(p), 4) for t, p in zip(self.labels, probabilities, strict=True)},
            alternatives=[
                Alternative(
                    task_type=self.labels[int(i)], confidence=round(float(probabilities[i]), 4)
                )
                for i in order[1:4]
            ],
        )


def normalise(vectors: Matrix) -> Matrix:
    """Return the rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0.0, 1.0, norms)


def build_features(
    vectors: Matrix, texts: Sequence[str], *, keyword_features: bool, word_dimensions: int = 0
) -> Matrix:
    """Return the model's input rows: the unit embedding, then the scaled keyword scores,
    then the unit hashed bag of words."""
    parts = [normalise(np.asarray(vectors, dtype=np.float64))]
    if keyword_features:
        scores = [[keyword_scores(text)[t] for t in TaskType] for text in texts]
        parts.append(np.array(scores, dtype=np.float64) * KEYWORD_SCALE)
    if word_dimensions:
        parts.append(word_features(texts, word_dimensions))
    return np.hstack(parts) if len(parts) > 1 else parts[0]


def word_features(texts: Sequence[str], dimensions: int) -> Matrix:
    """Return each text's words hashed into `dimensions` signed slots, scaled to unit length."""
    rows = np.zeros((len(texts), dimensions))
    for row, text in enumerate(texts):
        for word in _WORDS.findall(text.lower()):
            slot = _word_hash(word)
            rows[row, slot % dimensions] += 1.0 if slot >> 63 else -1.0
    return normalise(rows)


_HASHES: dict[str, int] = {}


def _word_hash(word: str) -> int:
    """A stable 64-bit hash of a word (Python's own `hash` changes between processes)."""
    value = _HASHES.get(word)
    if value is None:
        value = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        if len(_HASHES) < 200_000:
            _HASHES[word] = value
    return value


def softmax(logits: Matrix) -> Matrix:
    """Return the row-wise softmax of `logits`."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exps = np.exp(shifted)
    return exps / exps.sum(axis=-1, keepdims=True)


def fit_semantic_model(
    vectors: Matrix,
    texts: Sequence[str],
    labels: Sequence[TaskType],
    *,
    keyword_features: bool = True,
    word_dimensions: int = WORD_DIMENSIONS,
    l2: float = 1e-3,
    folds: int = 4,
    seed: int = 0,
) -> SemanticModel:
    """Fit the classifier on embedded exemplars and calibrate it on out-of-fold predictions.

    Args:
        vectors: The exemplars' embeddings, one row each.
        texts: The exemplars' texts, for the keyword features.
        labels: Each exemplar's task type; every task type must have exemplars.
        keyword_features: Put the keyword scores beside the embedding.
        word_dimensions: Slots of the hashed bag of words beside them (0: none).
        l2: The weight decay; larger is smoother.
        folds: Folds for the out-of-fold predictions the temperature is fitted on.
        seed: Seeds the fold assignment, so that fitting is deterministic.

    Raises:
        ValueError: no exemplars, mismatched lengths, or a task type without exemplars.
    """
    if len(vectors) == 0 or not (len(vectors) == len(texts) == len(labels)):
        raise ValueError(
            f"fitting needs as many embeddings as texts and labels, at least one each "
            f"(got {len(vectors)}, {len(texts)} and {len(labels)})"
        )
    missing = [t.value for t in TaskType if t not in set(labels)]
    if missing:
        raise ValueError(f"no exemplars for task type(s) {', '.join(missing)}; give each some")
    order = tuple(TaskType)
    targets = np.array([order.index(label) for label in labels])
    features = build_features(
        np.asarray(vectors),
        texts,
        keyword_features=keyword_features,
        word_dimensions=word_dimensions,
    )
    weights, bias = _fit_logistic(features, targets, len(order), l2)
    temperature = _fit_temperature(features, targets, len(order), l2, folds, seed)
    return SemanticModel(order, weights, bias, temperature, keyword_features, word_dimensions)


def _fit_logistic(
    features: Matrix, targets: npt.NDArray[np.int64], classes: int, l2: float, steps: int = 400
) -> tuple[Matrix, Matrix]:
    """Multinomial logistic regression by full-batch Adam; deterministic, a few ms here."""
    rows, width = features.shape
    onehot = np.eye(classes)[targets]
    weights = np.zeros((width, classes))
    bias = np.zeros(classes)
    moments = [np.zeros_like(weights), np.zeros_like(bias)]
    squares = [np.zeros_like(weights), np.zeros_like(bias)]
    rate, beta1, beta2 = 0.1, 0.9, 0.999
    for step in range(1, steps + 1):
        error = (softmax(features @ weights + bias) - onehot) / rows
        grads = [features.T @ error + l2 * weights, error.sum(axis=0)]
        for i, (param, grad) in enumerate(zip((weights, bias), grads, strict=True)):
            moments[i] = beta1 * moments[i] + (1 - beta1) * grad
            squares[i] = beta2 * squares[i] + (1 - beta2) * grad * grad
            unbiased = moments[i] / (1 - beta1**step)
            scale = np.sqrt(squares[i] / (1 - beta2**step)) + 1e-8
            param -= rate * unbiased / scale
    return weights, bias


def _fit_temperature(
    features: Matrix,
    targets: npt.NDArray[np.int64],
    classes: int,
    l2: float,
    folds: int,
    seed: int,
) -> float:
    """Return the temperature that minimises the log loss of out-of-fold predictions."""
    rows = len(targets)
    if rows < 2 * folds:
        return 1.0
    assignment = np.random.default_rng(seed).permutation(rows) % folds
    logits = np.zeros((rows, classes))
    for fold in range(folds):
        held_out = assignment == fold
        weights, bias = _fit_logistic(features[~held_out], targets[~held_out], classes, l2)
        logits[held_out] = features[held_out] @ weights + bias
    best, best_loss = 1.0, math.inf
    for temperature in np.exp(np.linspace(math.log(0.05), math.log(20.0), 121)):
        probs = softmax(logits / temperature)
        loss = -float(np.mean(np.log(probs[np.arange(rows), targets] + 1e-12)))
        if loss < best_loss:
            best, best_loss = float(temperature), loss
    return best


def calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> float:
    """Return the expected calibration error: how far confidence is from accuracy, on average."""
    if not confidences:
        return 0.0
    conf = np.asarray(confidences, dtype=np.float64)
    hits = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for low, high in itertools.pairwise(edges):
        inside = (conf > low) & (conf <= high)
        if inside.any():
            total += inside.mean() * abs(conf[inside].mean() - hits[inside].mean())
    return float(total)
