"""Model configs: the schema, the YAML loader, and the registry of chat-model clients."""

from modelyard.configs.loader import (
    load_config,
    load_config_text,
    packaged_configs,
    resolve_config_path,
)
from modelyard.configs.pull import PullProgress
from modelyard.configs.registry import ModelRegistry
from modelyard.configs.schema import GenerationOptions, ModelConfig, ModelyardConfig
from modelyard.configs.server_models import ServerModels, check_configured_models
from modelyard.configs.updates import apply_assignments, apply_model_changes, parse_assignments

__all__ = [
    "GenerationOptions",
    "ModelConfig",
    "ModelRegistry",
    "ModelyardConfig",
    "PullProgress",
    "ServerModels",
    "apply_assignments",
    "apply_model_changes",
    "check_configured_models",
    "load_config",
    "load_config_text",
    "packaged_configs",
    "parse_assignments",
    "resolve_config_path",
]
