"""Task classifiers: keyword, embedding, LLM, and the hybrid cascade that uses the cheapest
method that is sure.

    classifier = build_classifier(config, registry)
    decision = await classifier.aclassify("why does my build fail with E0502?")
    decision.task_type, decision.confidence, decision.method, decision.steps

Every classifier answers; none fails a task. A method that fails (an embeddings server
that is down, a model answering garbage) hands over to the next one, down to the keyword
classifier, and the decision's `steps` say what happened.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from langchain_core.embeddings import Embeddings
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel, Field

from modelyard.configs import ModelRegistry, ModelyardConfig
from modelyard.configs.embeddings import (
    EXEMPLARS_DIR,
    build_embeddings,
    embeddings_endpoint,
    embeddings_id,
)
from modelyard.configs.schema import ClassifierMethod, ClassifierSettings, ClassifierThresholds
from modelyard.configs.templates import render_messages
from modelyard.routers import classify_by_keywords
from modelyard.routers.keywords import DOMAIN, RULES
from modelyard.routers.semantic import (
    KEYWORD_SCALE,
    WORD_DIMENSIONS,
    SemanticModel,
    fit_semantic_model,
)
from modelyard.state import Classification, ClassifierStep, ConfigError, ConfigProblem, TaskType

log = logging.getLogger(__name__)

#: Part of a fitted model's cache key: change it when the features or the fitting change.
FEATURES_VERSION = "1"


class TaskClassifier(Protocol):
    """What every classifier offers."""

    method: str

    async def aclassify(self, text: str) -> Classification: ...

    async def aclassify_batch(self, texts: Sequence[str]) -> list[Classification]: ...


@dataclass(frozen=True)
class LabeledText:
    """A prompt and its task type, from an exemplar or evaluation file."""

    text: str
    label: TaskType
    where: str = ""
    """`file:line`, for messages."""


def read_labeled(path: str | Path) -> list[LabeledText]:
    """Read `{"text": ..., "label": ...}` lines from a JSONL file, or every `*.jsonl` in a folder.

    Raises:
        ConfigError: a missing file, or a line that is not such an object (each with its
            file and line number).
    """
    root = Path(path)
    files = sorted(root.glob("*.jsonl")) if root.is_dir() else [root]
    if not files or not all(f.is_file() for f in files):
        raise ConfigError(
            [ConfigProblem(str(root), "", "no such file (or folder of *.jsonl files)")]
        )
    rows: list[LabeledText] = []
    problems: list[ConfigProblem] = []
    choices = ", ".join(t.value for t in TaskType)
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{file}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(ConfigProblem(where, "", f"not JSON ({exc.msg})"))
                continue
            text = row.get("text") if isinstance(row, dict) else None
            label = row.get("label") if isinstance(row, dict) else None
            if not isinstance(text, str) or not text.strip():
                problems.append(ConfigProblem(where, "text", "expected a non-empty string"))
            elif label not in set(TaskType):
                problems.append(
                    ConfigProblem(where, "label", f"got {label!r}; expected one of: {choices}")
                )
            else:
                rows.append(LabeledText(text, TaskType(label), where))
    if problems:
        raise ConfigError(problems)
    return rows


def config_folder(config: ModelyardConfig) -> Path | None:
    """Return the folder of the config's file (what its relative paths are relative to)."""
    source = Path(config.source)
    if source.is_dir():
        return source
    return source.parent if source.is_file() else None


def exemplars_path(settings: ClassifierSettings, config_dir: Path | None = None) -> Path:
    """Return the exemplar file or folder a config names (relative to its folder)."""
    if settings.exemplars is None:
        return EXEMPLARS_DIR
    path = Path(settings.exemplars).expanduser()
    return path if path.is_absolute() or config_dir is None else config_dir / path


class KeywordClassifier:
    """Weighted patterns per task type (`modelyard.routers.keywords`); no model, ~0.2 ms."""

    method = "keyword"

    def classify(self, text: str) -> Classification:
        """Return the keyword classifier's decision."""
        return classify_by_keywords(text)

    async def aclassify(self, text: str) -> Classification:
        """Return the keyword classifier's decision."""
        return classify_by_keywords(text)

    async def aclassify_batch(self, texts: Sequence[str]) -> list[Classification]:
        """Return one decision per text."""
        return [classify_by_keywords(text) for text in texts]


class EmbeddingCache:
    """Exemplar embeddings on disk, one `.npz` file per embeddings model.

    Vectors are keyed by a hash of their text, so that editing the exemplars embeds only
    the new ones. Files are replaced atomically; a damaged file is embedded again.
    """

    def __init__(self, folder: str | Path, model_id: str) -> None:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("_")
        digest = hashlib.sha256(model_id.encode()).hexdigest()[:10]
        self.path = Path(folder) / f"{slug}-{digest}.npz"

    @staticmethod
    def key(text: str) -> str:
        """Return a text's cache key."""
        return hashlib.sha256(text.encode()).hexdigest()

    def load(self) -> dict[str, np.ndarray]:
        """Return the cached vectors by key; empty when there is no usable file."""
        try:
            with np.load(self.path, allow_pickle=False) as data:
                return dict(zip(data["keys"].tolist(), data["vectors"], strict=True))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring the damaged embedding cache %s (%s)", self.path, exc)
            return {}

    def save(self, vectors: dict[str, np.ndarray]) -> None:
        """Write the vectors (best effort: a read-only folder only costs the next start-up)."""
        self._write(
            self.path,
            keys=np.array(list(vectors), dtype=str),
            vectors=np.stack(list(vectors.values())),
        )

    def model_path(self, fingerprint: str) -> Path:
        """Return where the model fitted on exemplars with this fingerprint is kept."""
        return self.path.with_name(f"{self.path.stem}-model-{fingerprint[:16]}.npz")

    def load_model(self, fingerprint: str) -> SemanticModel | None:
        """Return the fitted model for these exemplars, if one was saved."""
        try:
            with np.load(self.model_path(fingerprint), allow_pickle=False) as data:
                return SemanticModel.from_arrays(dict(data))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:
            log.warning("refitting: the saved classifier model is damaged (%s)", exc)
            return None

    def save_model(self, fingerprint: str, model: SemanticModel) -> None:
        """Keep the fitted model, so that the next start-up skips fitting."""
        self._write(self.model_path(fingerprint), **model.to_arrays())

    def clear(self) -> None:
        """Delete this embeddings model's vectors and fitted models."""
        for path in [self.path, *self.path.parent.glob(f"{self.path.stem}-model-*.npz")]:
            path.unlink(missing_ok=True)

    @staticmethod
    def _write(path: Path, **arrays: np.ndarray) -> None:
        temp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
            with os.fdopen(fd, "wb") as file:
                np.savez(file, **arrays)  # type: ignore[arg-type]
            os.chmod(temp, 0o644)  # mkstemp makes it 0600
            os.replace(temp, path)
        except OSError as exc:
            log.warning("could not write the embedding cache %s (%s)", path, exc)
            if temp is not None:
                Path(temp).unlink(missing_ok=True)


class EmbeddingClassifier:
    """The task type nearest in meaning, from any LangChain `Embeddings`.

    Fits a calibrated linear model (`modelyard.routers.semantic`) on labeled exemplars,
    embedded once and cached on disk. Classifying a prompt costs one embedding call.

    Args:
        embeddings: `OllamaEmbeddings`, `OpenAIEmbeddings`, a sentence-transformers model, ...
        exemplars: Labeled prompts, at least a few per task type.
        model_id: Names the embeddings model, for the cache (`ollama:nomic-embed-text`).
        cache_dir: Where the exemplars' vectors are kept; None: not cached.
        batch_size: Texts per embedding request.
        keyword_features: Give the model the keyword scores beside the embedding.
        factory: Makes a new client like `embeddings`; given, each event loop gets its own
            (clients that keep connections, such as Ollama's and OpenAI's, cannot be
            shared across loops).
    """

    method = "embedding"

    def __init__(
        self,
        embeddings: Embeddings,
        exemplars: Sequence[LabeledText],
        *,
        model_id: str,
        cache_dir: str | Path | None = None,
        batch_size: int = 32,
        keyword_features: bool = True,
        factory: Callable[[], Embeddings] | None = None,
    ) -> None:
        self.embeddings = embeddings
        self.factory = factory
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Embeddings] = (
            weakref.WeakKeyDictionary()
        )
        self.exemplars = list(exemplars)
        self.model_id = model_id
        self.cache = EmbeddingCache(cache_dir, model_id) if cache_dir is not None else None
        self.batch_size = batch_size
        self.keyword_features = keyword_features
        self._model: SemanticModel | None = None
        self._lock = threading.Lock()
        self.embedded_exemplars = 0
        """Exemplars embedded by this instance (0 when all came from the cache)."""

    def fit(self) -> SemanticModel:
        """Embed the exemplars (those not cached) and fit the model; once per instance.

        The fitted model is cached beside the vectors, keyed by the exemplars and the
        features, so that a start-up with the same exemplars neither embeds nor fits.
        """
        with self._lock:
            if self._model is not None:
                return self._model
            fingerprint = self._fingerprint()
            model = self.cache.load_model(fingerprint) if self.cache else None
            if model is None:
                model = fit_semantic_model(
                    self._exemplar_vectors(),
                    [e.text for e in self.exemplars],
                    [e.label for e in self.exemplars],
                    keyword_features=self.keyword_features,
                    word_dimensions=WORD_DIMENSIONS,
                )
                if self.cache:
                    self.cache.save_model(fingerprint, model)
            self._model = model
            return model

    def _fingerprint(self) -> str:
        digest = hashlib.sha256(
            f"{FEATURES_VERSION}|{self.keyword_features}|{WORD_DIMENSIONS}|{KEYWORD_SCALE}".encode()
        )
        # The keyword rules are features too.
        for rule in RULES:
            digest.update(f"{rule.task_type.value}\0{rule.pattern.pattern}\0{rule.weight}".encode())
        digest.update(DOMAIN.pattern.encode())
        for exemplar in self.exemplars:
            digest.update(f"{exemplar.label.value}\0{exemplar.text}\0".encode())
        return digest.hexdigest()

    def refit(self) -> SemanticModel:
        """Forget the cached vectors and model, embed the exemplars again and fit."""
        with self._lock:
            self._model = None
            if self.cache:
                self.cache.clear()
        return self.fit()

    def _async_client(self) -> Embeddings:
        if self.factory is None:
            return self.embeddings
        loop = asyncio.get_running_loop()
        client = self._per_loop.get(loop)
        if client is None:
            client = self._per_loop[loop] = self.factory()
        return client

    def _decide(
        self, model: SemanticModel, vectors: np.ndarray, texts: Sequence[str]
    ) -> list[Classification]:
        return [model.decision(p) for p in model.probabilities(vectors, texts)]

    def _fitted_for(self, vectors: np.ndarray) -> SemanticModel:
        """Return the model, refitted when the embeddings' length changed (a new model
        behind the same name): the cached vectors were made by another model."""
        model = self.fit()
        if vectors.shape[1] == model.dimensions:
            return model
        log.warning(
            "%s now returns %d dimensions and the classifier was fitted on %d; embedding "
            "the exemplars again",
            self.model_id,
            vectors.shape[1],
            model.dimensions,
        )
        return self.refit()

    async def afit(self) -> SemanticModel:
        """`fit` in a worker thread, so that the event loop keeps running meanwhile."""
        if self._model is not None:
            return self._model
        return await asyncio.to_thread(self.fit)

    def classify(self, text: str) -> Classification:
        """Return the embedding classifier's decision for one prompt."""
        vector = np.asarray([self.embeddings.embed_query(text)], dtype=np.float64)
        return self._decide(self._fitted_for(vector), vector, [text])[0]

    async def aclassify(self, text: str) -> Classification:
        """Return the embedding classifier's decision for one prompt."""
        model = await self.afit()
        vector = np.asarray([await self._async_client().aembed_query(text)], dtype=np.float64)
        if vector.shape[1] != model.dimensions:
            model = await asyncio.to_thread(self._fitted_for, vector)
        return self._decide(model, vector, [text])[0]

    def classify_batch(self, texts: Sequence[str]) -> list[Classification]:
        """Return one decision per text, embedding `batch_size` texts per request."""
        if not texts:
            return []
        vectors = self._embed_batches(list(texts))
        return self._decide(self._fitted_for(vectors), vectors, texts)

    async def aclassify_batch(self, texts: Sequence[str]) -> list[Classification]:
        """Return one decision per text, embedding `batch_size` texts per request."""
        if not texts:
            return []
        model = await self.afit()
        client = self._async_client()
        rows: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            rows += await client.aembed_documents(list(texts[start : start + self.batch_size]))
        vectors = np.asarray(rows, dtype=np.float64)
        if vectors.shape[1] != model.dimensions:
            model = await asyncio.to_thread(self._fitted_for, vectors)
        return self._decide(model, vectors, texts)

    def _exemplar_vectors(self) -> np.ndarray:
        cached = self.cache.load() if self.cache else {}
        keys = [EmbeddingCache.key(e.text) for e in self.exemplars]
        missing = [i for i, key in enumerate(keys) if key not in cached]
        if missing:
            fresh = self._embed_batches([self.exemplars[i].text for i in missing])
            for i, vector in zip(missing, fresh, strict=True):
                cached[keys[i]] = vector.astype(np.float32)
            self.embedded_exemplars += len(missing)
            if self.cache:
                self.cache.save(cached)  # other exemplar sets' vectors stay too
        return np.stack([np.asarray(cached[key], dtype=np.float64) for key in keys])

    def _embed_batches(self, texts: list[str]) -> np.ndarray:
        rows: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            rows += self.embeddings.embed_documents(texts[start : start + self.batch_size])
        return np.asarray(rows, dtype=np.float64)


class TaskTypeAnswer(BaseModel):
    """The LLM classifier's structured answer."""

    task_type: Literal[
        "planning", "code_generation", "code_review", "problem_solving", "explanation", "general"
    ] = Field(description="The kind of work the request wants back.")
    confidence: float = Field(
        default=0.8, ge=0.0, le=1.0, description="How sure you are, 0.0 to 1.0."
    )


class LLMClassifierError(Exception):
    """The model's answer was not a task type, or the call failed."""


class LLMClassifier:
    """A configured chat model judges the task type, with structured output.

    The model is asked for `{"task_type": ..., "confidence": ...}` through the provider's
    JSON-schema mode (Ollama `format`, OpenAI `response_format`); an answer that does not
    parse is read leniently (a task type's name alone). The call runs at temperature 0.

    Args:
        registry: The configured models' clients.
        model: Which configured model judges.
    """

    method = "llm"

    def __init__(self, registry: ModelRegistry, model: str) -> None:
        registry.get(model, where="classifier.model")
        self.registry = registry
        self.model = model

    async def aclassify(self, text: str) -> Classification:
        """Return the model's decision.

        Raises:
            LLMClassifierError: the call failed or the answer named no task type.
        """
        config = self.registry.get(self.model)
        chat = self.registry.chat_model(self.model, overrides={"temperature": 0.0})
        choices = ", ".join(t.value for t in TaskType)
        messages, _ = render_messages(config, "classify", prompt=text, task_types=choices)
        # The schema is bound onto the configured client, so that its options (temperature
        # 0 here, num_ctx, ...) still go with the request.
        schema = TaskTypeAnswer.model_json_schema()
        if config.protocol == "ollama":
            chat = chat.bind(format=schema)
        elif config.protocol == "openai":
            chat = chat.bind(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "task_type_answer", "schema": schema},
                }
            )
        traced: RunnableConfig = {
            "run_name": f"classify:{self.model}",
            "tags": ["modelyard:classify", f"model:{self.model}"],
            "metadata": {"modelyard_step": "classify", "modelyard_model": self.model},
        }
        try:
            reply = await chat.ainvoke(messages, traced)
        except Exception as exc:
            raise LLMClassifierError(f"model {self.model!r} failed: {exc}") from exc
        content = reply.content if isinstance(reply, AIMessage) else reply
        answer = _lenient_answer(content)
        if answer is None:
            raise LLMClassifierError(
                f"model {self.model!r} answered {str(content)[:120]!r}, not a task type"
            )
        task_type = TaskType(answer.task_type)
        return Classification(
            task_type=task_type,
            confidence=answer.confidence,
            method="llm",
            scores={task_type: answer.confidence},
        )

    async def aclassify_batch(self, texts: Sequence[str]) -> list[Classification]:
        """Return one decision per text (the calls run at once)."""
        return list(await asyncio.gather(*(self.aclassify(text) for text in texts)))


#: A task type's name in free text: "code_review", "code review", "Code-Review".
_NAMES = {
    t: re.compile(r"(?<![a-z])" + t.value.replace("_", r"[ _-]") + r"(?![a-z])") for t in TaskType
}


def _lenient_answer(content: Any) -> TaskTypeAnswer | None:
    """Read the answer: the JSON asked for, a JSON object inside other text, or the one task
    type named in the text."""
    if not isinstance(content, str):
        return None
    for candidate in (content.strip(), *re.findall(r"\{.*?\}", content, re.DOTALL)):
        try:
            return TaskTypeAnswer.model_validate_json(candidate)
        except ValueError:
            continue
    lowered = content.lower()
    named = [t for t, pattern in _NAMES.items() if pattern.search(lowered)]
    if len(named) == 1:
        return TaskTypeAnswer.model_validate({"task_type": named[0].value})
    return None


class HybridClassifier:
    """keyword (when sure) -> embedding (when sure) -> LLM; the first sure method decides.

    A method that fails hands over to the next; when the methods after an unsure one all
    fail, the unsure answer of the last method that answered stands. Each decision's
    `steps` record every method tried, its answer, confidence, outcome and time.

    Args:
        keyword: The keyword classifier.
        embedding: The embedding classifier, or None to skip that step.
        llm: The LLM classifier, or None to skip that step.
        thresholds: When the keyword and embedding classifiers are sure.
    """

    method = "hybrid"

    def __init__(
        self,
        keyword: KeywordClassifier,
        embedding: EmbeddingClassifier | None,
        llm: LLMClassifier | None,
        thresholds: ClassifierThresholds,
    ) -> None:
        self.keyword = keyword
        self.embedding = embedding
        self.llm = llm
        self.thresholds = thresholds

    async def aclassify(self, text: str) -> Classification:
        """Return the cascade's decision, with every step it took."""
        steps: list[ClassifierStep] = []
        tried: list[Classification] = []
        started = time.perf_counter()
        keyword = self.keyword.classify(text)
        sure = keyword.confidence >= self.thresholds.keyword or not (self.embedding or self.llm)
        steps.append(classifier_step(keyword, "decided" if sure else "unsure", started))
        if sure:
            return _decided(keyword, steps)
        tried.append(keyword)
        for method, threshold in ((self.embedding, self.thresholds.embedding), (self.llm, 0.0)):
            if method is None:
                continue
            started = time.perf_counter()
            try:
                decision = await method.aclassify(text)
            except Exception as exc:  # any failure hands over to the next method
                log.warning(
                    "the %s classifier failed (%s); trying the next method", method.method, exc
                )
                steps.append(
                    ClassifierStep(
                        method=method.method,
                        outcome="failed",
                        note=f"{type(exc).__name__}: {exc}"[:300],
                        seconds=time.perf_counter() - started,
                    )
                )
                continue
            is_last = method is self.llm or self.llm is None
            sure = decision.confidence >= threshold or is_last
            steps.append(classifier_step(decision, "decided" if sure else "unsure", started))
            if sure:
                return _decided(decision, steps)
            tried.append(decision)
        # Later methods are the better ones: the last that answered stands.
        best = tried[-1]
        for index in range(len(steps) - 1, -1, -1):
            if steps[index].method == best.method:
                steps[index] = steps[index].model_copy(update={"outcome": "decided"})
                break
        return _decided(best, steps)

    async def aclassify_batch(self, texts: Sequence[str]) -> list[Classification]:
        """Return one decision per text; the embedding step embeds them in batches."""
        if self.embedding is None:
            return [await self.aclassify(text) for text in texts]
        keyword = [self.keyword.classify(text) for text in texts]
        unsure = [i for i, k in enumerate(keyword) if k.confidence < self.thresholds.keyword]
        results: list[Classification | None] = [
            _decided(k, [classifier_step(k, "decided", time.perf_counter())])
            if k.confidence >= self.thresholds.keyword
            else None
            for k in keyword
        ]
        started = time.perf_counter()
        try:
            embedded = await self.embedding.aclassify_batch([texts[i] for i in unsure])
        except Exception as exc:
            log.warning("the embedding classifier failed (%s); classifying one by one", exc)
            embedded = None
        # Each prompt's share of the batch's time.
        share = (time.perf_counter() - started) / max(len(unsure), 1)
        for position, index in enumerate(unsure):
            if embedded is None or (
                self.llm is not None and embedded[position].confidence < self.thresholds.embedding
            ):
                results[index] = await self.aclassify(texts[index])
            else:
                steps = [classifier_step(keyword[index], "unsure", time.perf_counter())]
                decided = classifier_step(embedded[position], "decided", time.perf_counter())
                steps.append(decided.model_copy(update={"seconds": share}))
                results[index] = _decided(embedded[position], steps)
        return [r for r in results if r is not None]

    async def fit(self, rows: Sequence[LabeledText]) -> ThresholdFit:
        """Tune the thresholds on labeled rows (see `tune_thresholds`) and use them.

        The LLM step is not run: its threshold is where the embedding classifier stops
        being right four times in five.

        Raises:
            ValueError: the cascade has no embedding step, or no rows.
        """
        if self.embedding is None or not rows:
            raise ValueError("fitting needs labeled rows and a cascade with an embedding step")
        keyword = [self.keyword.classify(row.text) for row in rows]
        embedded = await self.embedding.aclassify_batch([row.text for row in rows])
        decisions = list(zip(keyword, embedded, strict=True))
        before = self.thresholds
        self.thresholds = tune_thresholds(rows, decisions, has_llm=self.llm is not None)
        return ThresholdFit(
            before=before,
            after=self.thresholds,
            accuracy_before=cascade_accuracy(rows, decisions, before.keyword),
            accuracy_after=cascade_accuracy(rows, decisions, self.thresholds.keyword),
        )


@dataclass(frozen=True)
class ThresholdFit:
    """What `HybridClassifier.fit` changed, and the accuracy (without the LLM) before and after."""

    before: ClassifierThresholds
    after: ClassifierThresholds
    accuracy_before: float
    accuracy_after: float


def cascade_accuracy(
    rows: Sequence[LabeledText],
    decisions: Sequence[tuple[Classification, Classification]],
    keyword_threshold: float,
) -> float:
    """Return the keyword-then-embedding accuracy at a keyword threshold."""
    hits = sum(
        (k.task_type if k.confidence >= keyword_threshold else e.task_type) is row.label
        for row, (k, e) in zip(rows, decisions, strict=True)
    )
    return hits / len(rows) if rows else 0.0


def tune_thresholds(
    rows: Sequence[LabeledText],
    decisions: Sequence[tuple[Classification, Classification]],
    *,
    has_llm: bool,
) -> ClassifierThresholds:
    """Pick the keyword threshold that maximises accuracy on a labeled file.

    Each row comes with its keyword and embedding decisions. The keyword threshold is the
    lowest confidence from which the keyword classifier is right at least as often as the
    embedding classifier on the rows it would take; ties go to the higher threshold (fewer
    keyword decisions, which generalise worse). With an LLM step, the embedding threshold is
    the lowest confidence from which the embedding classifier is right at least 80% of the
    time on the rows the keyword step leaves to it (under it, the LLM is worth asking; 1.0
    when it never is that right); without one it stays at its default.
    """
    candidates = sorted({round(k.confidence, 2) for k, _ in decisions} | {1.0})
    best_threshold, best_accuracy = 1.0, -1.0
    for threshold in reversed(candidates):
        accuracy = cascade_accuracy(rows, decisions, threshold)
        if accuracy > best_accuracy:
            best_threshold, best_accuracy = threshold, accuracy
    embedding_threshold = ClassifierThresholds().embedding
    if has_llm:
        ranked = sorted(
            (e.confidence, e.task_type is row.label)
            for row, (k, e) in zip(rows, decisions, strict=True)
            if k.confidence < best_threshold
        )
        embedding_threshold = 1.0
        for confidence, _ in ranked:
            above = [hit for c, hit in ranked if c >= confidence]
            if sum(above) / len(above) >= 0.8:
                embedding_threshold = round(confidence, 2)
                break
    return ClassifierThresholds(keyword=best_threshold, embedding=embedding_threshold)


def classifier_step(decision: Classification, outcome: str, started: float) -> ClassifierStep:
    """Return the step record of a method's decision, timed from `started`."""
    return ClassifierStep(
        method=decision.method,
        task_type=decision.task_type,
        confidence=decision.confidence,
        outcome=outcome,
        seconds=max(time.perf_counter() - started, 0.0),
    )


def _decided(decision: Classification, steps: list[ClassifierStep]) -> Classification:
    return decision.model_copy(update={"steps": steps})


#: Thresholds under which the keyword classifier decides only when the other method fails
#: (unvalidated: no keyword confidence reaches infinity).
_KEYWORD_ONLY_ON_FAILURE = ClassifierThresholds.model_construct(keyword=math.inf, embedding=0.0)

_EMBEDDING_CLASSIFIERS: dict[tuple[object, ...], EmbeddingClassifier] = {}
_SHARED_LOCK = threading.Lock()


def embedding_classifier(
    config: ModelyardConfig, config_dir: Path | None = None
) -> EmbeddingClassifier:
    """Return the config's embedding classifier, shared by every run with the same settings.

    A relative `classifier.exemplars` is read from `config_dir`, by default the folder of
    the config's file.

    Raises:
        ConfigError: no embeddings model configured, a local model whose packages are
            missing, or a bad exemplar file.
    """
    settings = config.classifier
    if settings.embeddings is None:
        raise ConfigError(
            [
                ConfigProblem(
                    config.source,
                    "classifier.embeddings",
                    "the embedding classifier needs an embeddings model, e.g. "
                    "ollama:nomic-embed-text or minilm",
                )
            ]
        )
    folder = config_dir if config_dir is not None else config_folder(config)
    path = exemplars_path(settings, folder)
    embeddings = settings.embeddings
    url, api_key = embeddings_endpoint(config, embeddings)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    key = (
        embeddings.model,
        embeddings.batch_size,
        url or "",
        hashlib.sha256(api_key.get_secret_value().encode()).hexdigest() if api_key else "",
        # An edited exemplar file makes a new classifier (and a new fitted model).
        *(f"{f.resolve()}@{f.stat().st_mtime_ns}" for f in files if f.is_file()),
        str(path.resolve()),
        settings.cache_dir,
    )
    with _SHARED_LOCK:
        classifier = _EMBEDDING_CLASSIFIERS.get(key)
        if classifier is None:
            classifier = EmbeddingClassifier(
                build_embeddings(config, embeddings),
                read_labeled(path),
                model_id=embeddings_id(embeddings),
                cache_dir=settings.cache_dir,
                batch_size=embeddings.batch_size,
                factory=functools.partial(build_embeddings, config, embeddings),
            )
            _EMBEDDING_CLASSIFIERS[key] = classifier
    return classifier


def judge_model(config: ModelyardConfig) -> str:
    """Return the model that judges for the LLM classifier: the configured one, else the
    model most capable of planning (the reasoning model)."""
    if config.classifier.model:
        return config.classifier.model
    return max(config.models, key=lambda m: m.capabilities.get(TaskType.PLANNING, 0.0)).name


def build_classifier(
    config: ModelyardConfig,
    registry: ModelRegistry,
    *,
    method: ClassifierMethod | None = None,
    config_dir: Path | None = None,
) -> TaskClassifier:
    """Return the classifier the config chooses (or `method`), ready to use.

    Every method but `keyword` runs as a cascade ending in the keyword classifier, so that a
    failing method never fails a task: `embedding` is embedding then keyword, `llm` is LLM
    then keyword. `config_dir`: see `embedding_classifier`.

    Raises:
        ConfigError: the method needs an embeddings model the config does not give.
    """
    settings = config.classifier
    method = method or settings.method
    keyword = KeywordClassifier()
    if method == "keyword":
        return keyword
    if method == "embedding":
        cascade = HybridClassifier(
            keyword, embedding_classifier(config, config_dir), None, _KEYWORD_ONLY_ON_FAILURE
        )
    elif method == "llm":
        judge = LLMClassifier(registry, judge_model(config))
        cascade = HybridClassifier(keyword, None, judge, _KEYWORD_ONLY_ON_FAILURE)
    else:
        return HybridClassifier(
            keyword,
            embedding_classifier(config, config_dir) if settings.embeddings else None,
            LLMClassifier(registry, judge_model(config)) if settings.llm else None,
            settings.thresholds,
        )
    cascade.method = method
    return cascade
