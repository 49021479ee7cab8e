"""Change models' configs while modelyard runs, checked as strictly as a config file.

`apply_model_changes` returns a new config with one model changed (the old config is never
touched); `apply_assignments` does the same for `--set MODEL.FIELD=VALUE` arguments, which
`parse_assignments` reads. A running registry takes a change with `ModelRegistry.update_model`.

What a change may hold, by key:

- a generation option (`temperature`, `num_ctx`, ...): that option, in `options`;
- `options`, `capabilities`, `cost`, `supports`, `initial_stats`, `prompts`: a mapping
  changes only the sub-fields it names, and a sub-field given None goes back to its default;
- `weights`: another name for `capabilities`, the per-task-type scores selection weighs;
- any other model field (`timeout`, `system_prompt`, `roles`, `context_window`, ...): the
  new value; None puts back the field's default. Every field but `name`.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from modelyard.configs.loader import _format_loc, _message_for, _strip_key_marker, _unknown
from modelyard.configs.registry import client_problems
from modelyard.configs.schema import (
    GenerationOptions,
    ModelConfig,
    ModelyardConfig,
    split_reference,
)
from modelyard.state import ConfigError, ConfigProblem

#: Where a change made from Python comes from, in error messages.
UPDATE_SOURCE = "update_model_config"
#: Where a change made on the command line comes from, in error messages.
SET_SOURCE = "--set"

#: Another name for a field: `weights` are the capability scores that selection weighs.
ALIASES = {"weights": "capabilities"}
#: Fields whose value is a mapping of sub-fields; a change names only those it changes.
MERGED_FIELDS = ("options", "capabilities", "cost", "supports", "initial_stats", "prompts")
OPTION_NAMES = tuple(GenerationOptions.model_fields)
_NAME_FIXED = (
    "a model's name cannot change: routing, stats and tasks know the model by it; add a "
    "model with the new name to the config instead"
)
_BOUND_ERRORS = frozenset({"less_than_equal", "greater_than_equal", "less_than", "greater_than"})


def apply_model_changes(
    config: ModelyardConfig,
    name: str,
    changes: Mapping[str, Any],
    *,
    source: str = UPDATE_SOURCE,
) -> ModelyardConfig:
    """Return a copy of `config` with model `name` changed; `config` itself stays as it was.

    Args:
        config: A checked config.
        name: The model to change.
        changes: Field or option names and their new values (see the module's docstring).
        source: Where the change comes from, named in each problem.

    Raises:
        ConfigError: every problem with the change at once, each with the field path
            (`models.coder.options.temperature`), what is wrong and what is allowed.
    """
    return apply_changes(config, {name: changes}, source=source)


def apply_changes(
    config: ModelyardConfig,
    changes: Mapping[str, Mapping[str, Any]],
    *,
    source: str = UPDATE_SOURCE,
) -> ModelyardConfig:
    """Return a copy of `config` with the changes of each named model made.

    Raises:
        ConfigError: every problem with every change at once.
    """
    problems: list[ConfigProblem] = []
    models = list(config.models)
    changed: list[int] = []
    for name, model_changes in changes.items():
        where = ("models", name)
        if name not in config.model_names:
            message = _unknown("model", name, config.model_names)
            problems.append(ConfigProblem(source, _format_loc(where), message))
            continue
        index = config.model_names.index(name)
        entry, refused = _changed_entry(models[index], model_changes)
        for loc, message in refused:
            problems.append(ConfigProblem(source, _format_loc((*where, *loc)), message))
        try:
            models[index] = ModelConfig.model_validate(
                entry, context={"config_dir": str(_config_dir(config))}
            )
        except ValidationError as exc:
            problems.extend(_problem(source, name, index, error) for error in exc.errors())
            continue
        changed.append(index)
    if problems:
        raise ConfigError(problems)
    updated = config.model_copy(update={"models": models})
    for index, field, message in client_problems(updated):
        if index in changed:
            loc = ("models", models[index].name, *field)
            problems.append(ConfigProblem(source, _format_loc(loc), message))
    if problems:
        raise ConfigError(problems)
    return updated


def apply_assignments(
    config: ModelyardConfig, assignments: Iterable[str], *, source: str = SET_SOURCE
) -> ModelyardConfig:
    """Return a copy of `config` with `MODEL.FIELD=VALUE` assignments made (`--set`).

    Raises:
        ConfigError: malformed assignments and every problem with the changes, all at once.
    """
    changes, malformed = _parse(assignments, config.model_names, source)
    problems = list(malformed)
    try:
        config = apply_changes(config, changes, source=source) if changes else config
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return config


def parse_assignments(
    assignments: Iterable[str], *, names: Collection[str] = (), source: str = SET_SOURCE
) -> dict[str, dict[str, Any]]:
    """Return the changes per model that `MODEL.FIELD[.SUBFIELD...]=VALUE` arguments make.

    Values are YAML: `0.1` is a number, `true` a boolean, `[a, b]` a list and `{a: 1}` a
    mapping; anything else is text, and an empty value means None (the default). Several
    assignments to one model are merged: `coder.temperature=0.1 coder.options.num_ctx=8192`
    gives `{"coder": {"temperature": 0.1, "options": {"num_ctx": 8192}}}`.

    Args:
        assignments: The arguments, e.g. `["coder.temperature=0.1"]`.
        names: The configured model names; a name holding a dot (`llama3.1`) is matched
            whole instead of being cut at its first dot.
        source: Where the assignments come from, named in each problem.

    Raises:
        ConfigError: every malformed assignment at once.
    """
    changes, problems = _parse(assignments, names, source)
    if problems:
        raise ConfigError(problems)
    return changes


def _parse(
    assignments: Iterable[str], names: Collection[str], source: str
) -> tuple[dict[str, dict[str, Any]], list[ConfigProblem]]:
    """Return the changes the well-formed assignments make, and a problem per other one."""
    changes: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    example = "write MODEL.FIELD=VALUE, e.g. coder.temperature=0.1"
    for text in assignments:
        key, equals, raw = text.partition("=")
        key = key.strip()
        if not equals:
            problems.append(f"{text!r} has no '='; {example}")
            continue
        name, fields = _split_key(key, names)
        if not name or not fields:
            problems.append(f"{key!r} names no model and field; {example}")
            continue
        if not all(fields):
            problems.append(f"{key!r} has an empty field name; {example}")
            continue
        if fields[0] == "api_key":
            problems.append(
                f"{key!r}: API keys are read from the environment, never from the command "
                "line; write api_key: ${YOUR_KEY_VARIABLE} in the config and export it"
            )
            continue
        value: Any = _yaml_value(raw)
        for field in reversed(fields[1:]):
            value = {field: value}
        _merge(changes.setdefault(name, {}), {fields[0]: value})
    return changes, [ConfigProblem(source, "", message) for message in problems]


def describe_changes(old: ModelConfig, new: ModelConfig) -> list[str]:
    """Return one `field: old -> new` line per value that differs (API keys masked)."""
    before = _flatten(old.model_dump(mode="json"))
    after = _flatten(new.model_dump(mode="json"))
    return [
        f"{field}: {before.get(field)!r} -> {after.get(field)!r}"
        for field in dict.fromkeys([*before, *after])
        if before.get(field) != after.get(field)
    ]


_POST_IN_ROLES = (
    "roles in an update lists task types only; change post-completion steps with "
    "post_completions=[{task: ..., tools: ...}] (the whole list, replacing the model's steps)"
)


def _has_post_role(roles: list[Any]) -> bool:
    """Whether a roles list holds a `{postcompletions: ...}` entry (as config files may)."""
    return any(isinstance(role, Mapping) for role in roles)


def _changed_entry(
    model: ModelConfig, changes: Mapping[str, Any]
) -> tuple[dict[str, Any], list[tuple[tuple[str, ...], str]]]:
    """Return the model's fields with the changes made, to validate, and the keys refused.

    Unchanged fields keep their checked values (sub-models are not checked again); merged
    fields get their old sub-fields with the new ones over them.
    """
    problems: list[tuple[tuple[str, ...], str]] = []
    entry: dict[str, Any] = {field: getattr(model, field) for field in ModelConfig.model_fields}
    merged: dict[str, dict[str, Any]] = {}
    replaced: set[str] = set()  # merged fields given a value that is no mapping
    for key, value in changes.items():
        if key in OPTION_NAMES:
            merged.setdefault("options", {})[key] = value
            continue
        field = ALIASES.get(key, key)
        if field == "name":
            problems.append(((key,), _NAME_FIXED))
        elif field not in ModelConfig.model_fields:
            problems.append(((key,), _unknown_field(key)))
        elif value is None and ModelConfig.model_fields[field].is_required():
            problems.append(((key,), f"{field} is required; give a value"))
        elif value is None:
            entry[field] = _default(field)
        elif field == "roles" and isinstance(value, list) and _has_post_role(value):
            problems.append(((key,), _POST_IN_ROLES))
        elif field == "prompts" and isinstance(value, str):
            merged.setdefault(field, {})["style"] = value  # `prompts: terse` names a style
        elif field in MERGED_FIELDS and isinstance(value, Mapping):
            merged.setdefault(field, {}).update(value)
        else:
            entry[field] = value
            replaced.add(field)
    for field, sub_changes in merged.items():
        if field not in replaced:
            entry[field] = _merged(entry[field], sub_changes)
    _keep_reference(entry, model, changes)
    return entry, problems


def _merged(current: Any, changes: Mapping[Any, Any]) -> dict[str, Any]:
    """Return a sub-model's (or mapping's) values with `changes` over them; None unsets."""
    if isinstance(current, GenerationOptions):
        values: dict[str, Any] = current.set_values()
    elif isinstance(current, BaseModel):
        values = current.model_dump(exclude_unset=True)
    else:
        values = {_key(k): v for k, v in dict(current or {}).items()}
    for key, value in changes.items():
        if value is None:
            values.pop(_key(key), None)
        else:
            values[_key(key)] = value
    return values


def _keep_reference(entry: dict[str, Any], model: ModelConfig, changes: Mapping[str, Any]) -> None:
    """Set `model` and `provider` in `entry` so that the schema reads them as meant.

    The schema splits `provider:model` references; an unchanged model is given as its full
    reference, so that a model id that looks like a reference is kept as it is.
    """
    if "provider" in changes:
        entry["model"] = changes.get("model", model.model)
    elif "model" in changes:
        new = changes["model"]
        prefixed = isinstance(new, str) and split_reference(new)[0] != ""
        if prefixed:
            del entry["provider"]
    else:
        entry["model"] = model.reference
        del entry["provider"]


def _problem(source: str, name: str, index: int, error: Any) -> ConfigProblem:
    """Return the problem a schema error in model `name`'s changed entry means."""
    loc = tuple(error["loc"])
    message = _range_message(loc, error) or _message_for(error, ("models", index, *loc))
    return ConfigProblem(source, _format_loc(("models", name, *_strip_key_marker(loc))), message)


def _range_message(loc: tuple[Any, ...], error: Any) -> str | None:
    """Return `x is 5.0; expected a number from 0.0 to 2.0` for a value out of its range."""
    if error["type"] not in _BOUND_ERRORS or "capabilities" in loc:
        return None
    current: Any = ModelConfig
    field = None
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = field.annotation
    if field is None:
        return None
    bounds = {
        kind: getattr(item, kind)
        for item in field.metadata
        for kind in ("ge", "gt", "le", "lt")
        if getattr(item, kind, None) is not None
    }
    if "ge" in bounds and "le" in bounds:
        allowed = f"from {bounds['ge']} to {bounds['le']}"
    else:
        words = {"ge": "of at least", "gt": "greater than", "le": "of at most", "lt": "less than"}
        allowed = " and ".join(f"{words[kind]} {bound}" for kind, bound in bounds.items())
    return f"{loc[-1]} is {error.get('input')!r}; expected a number {allowed}"


def _unknown_field(key: str) -> str:
    fields = [f for f in ModelConfig.model_fields if f != "name"] + list(ALIASES)
    close = difflib.get_close_matches(key, [*fields, *OPTION_NAMES], n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"unknown field {key!r}{hint}. Expected a model field ({', '.join(fields)}) or a "
        f"generation option ({', '.join(OPTION_NAMES)})"
    )


def _default(field: str) -> Any:
    return ModelConfig.model_fields[field].get_default(call_default_factory=True)


def _key(key: Any) -> Any:
    return key.value if isinstance(key, Enum) else key


def _config_dir(config: ModelyardConfig) -> Path:
    """Return the folder relative prompt paths are read from, as when the file was loaded."""
    source = Path(config.source)
    return source if source.is_dir() else source.parent


def _split_key(key: str, names: Collection[str]) -> tuple[str, list[str]]:
    """Split `MODEL.FIELD.SUB` into the model name and the field path."""
    for name in sorted(names, key=len, reverse=True):
        if key.startswith(f"{name}."):
            return name, key[len(name) + 1 :].split(".")
    name, dot, rest = key.partition(".")
    return name, rest.split(".") if dot else []


def _yaml_value(raw: str) -> Any:
    """Read a `--set` value as YAML; only `[...]` and `{...}` make lists and mappings."""
    text = raw.strip()
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return text
    if isinstance(value, dict | list) and not text.startswith(("[", "{")):
        return text  # `You are: terse` is text, not a mapping
    return value


def _merge(into: dict[str, Any], changes: Mapping[str, Any]) -> None:
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, child in value.items():
            flat.update(_flatten(child, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}
