"""Run-time configuration of modelyard's graphs: which config, and the model clients."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from modelyard.configs import ModelRegistry, ModelyardConfig, load_config, resolve_config_path


@dataclass(kw_only=True)
class Context:
    """What a graph run needs besides its state; pass it as `context=` when invoking."""

    config_file: str | None = field(
        default=None,
        metadata={
            "description": "Path to a YAML config or a folder of them, or the name of a "
            "packaged config (default, openai, lmstudio). Empty: $MODELYARD_CONFIG, else "
            "the packaged default (two Ollama models)."
        },
    )
    config: ModelyardConfig | None = field(
        default=None,
        metadata={"description": "A config object; takes the place of config_file."},
    )
    registry: ModelRegistry | None = field(
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


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


@functools.lru_cache(maxsize=16)
def _registry_for_file(path: str, mtime: float) -> ModelRegistry:
    """Return one registry per config file and version, so clients are reused across runs."""
    del mtime  # part of the cache key: an edited file is read again
    return ModelRegistry(load_config(path))
