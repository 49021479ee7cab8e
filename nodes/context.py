"""Run-time configuration of modelyard's graphs: which config, and the model clients."""

from __future__ import annotations

import functools
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langgraph.runtime import get_runtime
from pydantic import ConfigDict
from pydantic.json_schema import SkipJsonSchema

from modelyard.configs import (
    ModelConfig,
    ModelRegistry,
    ModelyardConfig,
    load_config,
    resolve_config_path,
)
from modelyard.state import TaskType

if TYPE_CHECKING:
    from modelyard.nodes.classifiers import TaskClassifier

#: Registries shared by every context that names the same config file (see `models`).
_SHARED: weakref.WeakSet[ModelRegistry] = weakref.WeakSet()


@dataclass(kw_only=True)
class Context:
    """What a graph run needs besides its state; pass it as `context=` when invoking.

    LangGraph Studio (`langgraph dev`) shows `config_file`, `model` and `task_type` as
    the run's editable context.
    """

    __pydantic_config__ = ConfigDict(arbitrary_types_allowed=True)

    config_file: str | None = field(
        default=None,
        metadata={
            "description": "Path to a YAML config or a folder of them, or the name of a "
            "packaged config (default, openai, lmstudio). Empty: $MODELYARD_CONFIG, else "
            "the packaged default (two Ollama models)."
        },
    )
    model: str | None = field(
        default=None,
        metadata={
            "description": "A configured model's name to run every step of the task on, "
            "when the task's input names none. Empty: modelyard chooses per step."
        },
    )
    task_type: TaskType | None = field(
        default=None,
        metadata={
            "description": "The task type, when the task's input gives none. Empty: the "
            "configured classifier decides."
        },
    )
    # In Python only: LangGraph Studio's form (the JSON schema) leaves these two out.
    config: SkipJsonSchema[ModelyardConfig | None] = field(
        default=None,
        metadata={"description": "A config object; takes the place of config_file."},
    )
    registry: SkipJsonSchema[ModelRegistry | None] = field(
        default=None,
        metadata={"description": "Model clients to reuse across runs; built when absent."},
    )

    def models(self) -> ModelRegistry:
        """Return the registry of configured models for this run."""
        if self.registry is None:
            if self.config is not None:
                self.registry = ModelRegistry(self.config)
            else:
                path = resolve_config_path(self.config_file)
                self.registry = _registry_for_file(str(path), _mtime(path))
        return self.registry

    def classifier(self) -> TaskClassifier:
        """Return the task classifier the config chooses (`classifier.method`).

        Raises:
            ConfigError: the classifier's embeddings model cannot be built (say, its
                packages are not installed) or its exemplar file is malformed.
        """
        from modelyard.nodes.classifiers import build_classifier

        registry = self.models()
        return build_classifier(registry.config, registry)

    def update_model_config(self, name: str, /, **changes: Any) -> ModelConfig:
        """Change model `name`'s config for this context's runs, from their next model call.

        Runs under way with this context see the change at their next model call (and
        their next model selection). A registry this context shares with every other
        context of the same config file is copied first, so that the change stays with
        this context; a registry passed as `registry=` is changed in place, for everyone
        who holds it.

        Args:
            name: A configured model's name.
            **changes: What to change (see `ModelRegistry.update_model`), e.g.
                `temperature=0.1`, `timeout=30`, `weights={"code_generation": 0.9}`.

        Returns:
            The model's new config.

        Raises:
            ConfigError: every problem with the change; nothing was changed.
        """
        registry = self.models()
        if registry in _SHARED:
            registry = registry.copy()
        model = registry.update_model(name, **changes)
        self.registry = registry
        if self.config is not None:
            self.config = registry.config
        return model


def update_model_config(name: str, /, **changes: Any) -> ModelConfig:
    """Change model `name`'s config for the graph run this is called from.

    Call it from inside a run: a node, a tool, or a callback of a model call. The change
    takes effect at the run's next model call; see `Context.update_model_config`.

    Raises:
        ConfigError: every problem with the change; nothing was changed.
        RuntimeError: not called from inside a graph run with a modelyard `Context`.
    """
    try:
        runtime = get_runtime(Context)
    except (RuntimeError, KeyError):
        runtime = None
    context = getattr(runtime, "context", None)
    if not isinstance(context, Context):
        raise RuntimeError(
            "update_model_config(name, ...) changes the graph run it is called from, and "
            "this is not inside a run with a modelyard Context; outside a run, call "
            "context.update_model_config(...) or runner.update_model_config(...)"
        )
    return context.update_model_config(name, **changes)


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


@functools.lru_cache(maxsize=16)
def _registry_for_file(path: str, mtime: float) -> ModelRegistry:
    """Return one registry per config file and version, so clients are reused across runs."""
    del mtime  # part of the cache key: an edited file is read again
    registry = ModelRegistry(load_config(path))
    _SHARED.add(registry)
    return registry
