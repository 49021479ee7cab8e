"""Read YAML configs (one file or a folder of per-provider files) into a checked config."""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from modelyard.configs import schema
from modelyard.configs.registry import client_problems
from modelyard.configs.schema import KNOWN_PROVIDERS, ModelyardConfig
from modelyard.state import ConfigError, ConfigProblem, TaskType

PACKAGED_DIR = Path(__file__).resolve().parent
CONFIG_ENV_VAR = "MODELYARD_CONFIG"
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
Loc = tuple[str | int, ...]
Positions = dict[Loc, tuple[int, int]]
#: Schema errors whose message says it all: no "(got ...)" after it.
_WHOLE_MESSAGES = frozenset(
    {"missing_provider", "unknown_provider", "capability_range", "auto_pull_not_ollama"}
)


def packaged_configs() -> dict[str, Path]:
    """Return the configs shipped with modelyard, by name (`default`, `openai`, ...)."""
    return {path.stem: path for path in sorted(PACKAGED_DIR.glob("*.yaml"))}


def resolve_config_path(path: str | os.PathLike[str] | None = None) -> Path:
    """Return the config to read: the given path, a packaged config's name, or the default.

    With no path, `$MODELYARD_CONFIG` names the config if it is set, else the packaged
    `default.yaml` is used.
    """
    chosen = os.fspath(path) if path else os.environ.get(CONFIG_ENV_VAR)  # "": not given
    if not chosen:
        return packaged_configs()["default"]
    candidate = Path(chosen).expanduser()
    if candidate.exists():
        return candidate
    packaged = packaged_configs()
    if chosen in packaged:
        return packaged[chosen]
    raise ConfigError(
        [
            ConfigProblem(
                file=str(candidate),
                path="",
                message="no such file or folder; give a YAML file, a folder of them, or a "
                f"packaged config ({', '.join(packaged)})",
            )
        ]
    )


def load_config(path: str | os.PathLike[str] | None = None) -> ModelyardConfig:
    """Load and check a config from a YAML file or a folder of per-provider YAML files.

    Raises:
        ConfigError: listing every problem found, each with file, line and field path.
    """
    resolved = resolve_config_path(path)
    if resolved.is_dir():
        return _load_folder(resolved)
    document = _read_yaml(resolved)
    return _validate(str(resolved), [_Origin(resolved, document, None)])


def load_config_text(text: str, *, name: str = "<string>") -> ModelyardConfig:
    """Load and check a config from YAML text (for notebooks and tests)."""
    document = _parse_yaml(text, name)
    return _validate(name, [_Origin(Path(name), document, None)])


class _Document:
    """A parsed YAML file: its data and where each field sits."""

    def __init__(
        self, file: str, data: Any, positions: Positions, problems: list[ConfigProblem]
    ) -> None:
        self.file = file
        self.data = data
        self.positions = positions
        self.problems = problems
        """Problems found while parsing (a key written twice), reported with the rest."""

    def problem(self, loc: Loc, message: str) -> ConfigProblem:
        line, column = _position(self.positions, loc)
        return ConfigProblem(self.file, _format_loc(loc), message, line, column)


class _Origin:
    """One file's contribution to a config; `provider` is set for per-provider files."""

    def __init__(self, path: Path, document: _Document, provider: str | None) -> None:
        self.path = path
        self.document = document
        self.provider = provider


def _read_yaml(path: Path) -> _Document:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"cannot read: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text (byte {exc.start}); save the file as UTF-8"
        raise ConfigError([ConfigProblem(str(path), "", message)]) from None
    return _parse_yaml(text, str(path))


def _parse_yaml(text: str, file: str) -> _Document:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        message = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
        line = mark.line + 1 if mark is not None else None
        column = mark.column + 1 if mark is not None else None
        raise ConfigError([ConfigProblem(file, "", message, line, column)]) from None
    positions: Positions = {}
    duplicates: list[ConfigProblem] = []
    if node is not None:
        _collect_positions(node, (), positions, duplicates, file)
    if data is None:
        raise ConfigError([ConfigProblem(file, "", "the file is empty; expected a `models` list")])
    if not isinstance(data, dict):
        raise ConfigError(
            [ConfigProblem(file, "", "expected a mapping at the top (with a `models` list)", 1, 1)]
        )
    return _Document(file, data, positions, duplicates)


def _collect_positions(
    node: yaml.Node, loc: Loc, positions: Positions, problems: list[ConfigProblem], file: str
) -> None:
    positions[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            child = (*loc, key)
            if key in seen:
                line, column = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                message = f"key {key!r} appears twice in the same mapping; keep one"
                problems.append(ConfigProblem(file, _format_loc(child), message, line, column))
            seen.add(key)
            _collect_positions(value_node, child, positions, problems, file)
            positions[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_positions(item, (*loc, index), positions, problems, file)


def _load_folder(folder: Path) -> ModelyardConfig:
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    if not files:
        raise ConfigError([ConfigProblem(str(folder), "", "the folder holds no .yaml files")])
    origins: list[_Origin] = []
    problems: list[ConfigProblem] = []
    for path in files:
        try:
            document = _read_yaml(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        provider = path.stem if path.stem in KNOWN_PROVIDERS else None
        origins.append(_Origin(path, document, provider))
    if problems:
        raise ConfigError(problems)
    return _validate(str(folder), origins)


def _validate(source: str, origins: list[_Origin]) -> ModelyardConfig:
    """Merge the files' data, interpolate the environment, and check it against the schema."""
    problems: list[ConfigProblem] = []
    merged: dict[str, Any] = {"models": []}
    # For each merged model index: the file it came from and its index there.
    model_origin: list[tuple[_Origin, int]] = []
    for origin in origins:
        problems.extend(origin.document.problems)
        problems.extend(_literal_secrets(origin.document))
        data = _interpolate(origin.document.data, (), origin.document, problems)
        entries = data.pop("models", None)
        if origin.provider is not None:
            for key in ("base_url", "api_key"):
                if key in data:
                    merged.setdefault("providers", {}).setdefault(origin.provider, {})[key] = (
                        data.pop(key)
                    )
        for key, value in data.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        if entries is None:
            continue
        if not isinstance(entries, list):
            problems.append(origin.document.problem(("models",), "expected a list of models"))
            continue
        for index, entry in enumerate(entries):
            if isinstance(entry, dict) and origin.provider is not None:
                entry = {"provider": origin.provider, **entry}
            merged["models"].append(entry)
            model_origin.append((origin, index))
    if not model_origin and not problems:
        where = origins[0].document if len(origins) == 1 else None
        problem = ConfigProblem(
            source, "models", "no models: add a `models` list with at least one"
        )
        problems.append(where.problem(("models",), problem.message) if where else problem)

    problems.extend(_duplicate_names(merged["models"], model_origin))
    merged["source"] = source
    try:
        folder = Path(source) if Path(source).is_dir() else Path(source).parent
        context = {"cross_checked": True, "config_dir": str(folder)}
        config = ModelyardConfig.model_validate(merged, context=context)
    except ValidationError as exc:
        for error in exc.errors():
            if not model_origin and tuple(error["loc"]) == ("models",):
                continue  # already reported as "no models"
            problems.append(_problem_from_error(error, origins, model_origin, merged))
        config = None
    if config is not None:
        for position, field, message in client_problems(config):
            origin, index = model_origin[position]
            problems.append(origin.document.problem(("models", index, *field), message))
        judge = config.classifier.model
        if judge is not None and judge not in config.model_names:
            document = next(
                (o.document for o in origins if "classifier" in (o.document.data or {})),
                origins[0].document,
            )
            message = f"{_unknown('model', judge, config.model_names)} (the configured models)"
            problems.append(document.problem(("classifier", "model"), message))
    if problems:
        raise ConfigError(sorted(problems, key=_reading_order))
    assert config is not None
    return config


def _literal_secrets(document: _Document) -> Iterator[ConfigProblem]:
    """Yield a problem for each API key written into the file instead of the environment."""

    def walk(value: Any, loc: Loc) -> Iterator[ConfigProblem]:
        if isinstance(value, dict):
            for key, child in value.items():
                if key == "api_key" and isinstance(child, str) and not _ENV_PATTERN.search(child):
                    yield document.problem(
                        (*loc, key),
                        "API keys are read from the environment, never from the file: write "
                        "${YOUR_KEY_VARIABLE} and export it",
                    )
                else:
                    yield from walk(child, (*loc, key))
        elif isinstance(value, list):
            for index, child in enumerate(value):
                yield from walk(child, (*loc, index))

    yield from walk(document.data, ())


def _duplicate_names(
    entries: list[Any], model_origin: list[tuple[_Origin, int]]
) -> Iterator[ConfigProblem]:
    first: dict[str, tuple[_Origin, int]] = {}
    for entry, (origin, index) in zip(entries, model_origin, strict=True):
        if not isinstance(entry, dict):
            continue
        name = entry.get("name") or entry.get("model") or entry.get("model_name_for_api")
        if not isinstance(name, str):
            continue
        if name in first:
            other, other_index = first[name]
            where = f"models[{other_index}]" + (
                f" in {other.path.name}" if other is not origin else ""
            )
            key = "name" if "name" in entry else "model"
            yield origin.document.problem(
                ("models", index, key),
                f"model name {name!r} is already used by {where}; names must be unique",
            )
        else:
            first[name] = (origin, index)


def _interpolate(value: Any, loc: Loc, document: _Document, problems: list[ConfigProblem]) -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string with the environment's value."""
    if isinstance(value, dict):
        return {k: _interpolate(v, (*loc, k), document, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*loc, i), document, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found is not None and (found or default is None):
            return found
        if default is not None:
            return default
        problems.append(
            document.problem(
                loc,
                f"environment variable {name} is not set; export it, or write "
                f"${{{name}:-default}} to give a default",
            )
        )
        return ""

    return _ENV_PATTERN.sub(substitute, value)


def _problem_from_error(
    error: Any,
    origins: list[_Origin],
    model_origin: list[tuple[_Origin, int]],
    merged: dict[str, Any],
) -> ConfigProblem:
    loc: Loc = tuple(error["loc"])
    document = origins[0].document
    if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
        position = loc[1]
        if len(loc) == 4 and loc[2] == "roles":
            raw_index = _raw_role_index(merged["models"][position], error.get("input"), loc[3])
            loc = (*loc[:3], raw_index)
        if position < len(model_origin):
            origin, index = model_origin[position]
            document = origin.document
            loc = ("models", index, *loc[2:])
    elif len(origins) > 1 and loc:
        document = next((o.document for o in origins if loc[0] in o.document.data), document)
    return document.problem(_strip_key_marker(loc), _message_for(error, loc))


def _raw_role_index(entry: Any, value: Any, index: str | int) -> str | int:
    """Return a bad role's index in the list as written (`chatcompletions` expands it)."""
    roles = entry.get("roles") if isinstance(entry, dict) else None
    if isinstance(roles, list) and value in roles:
        return roles.index(value)
    return index


def _reading_order(problem: ConfigProblem) -> tuple[str, int, int]:
    return (problem.file, problem.line or 0, problem.column or 0)


def _strip_key_marker(loc: Loc) -> Loc:
    return loc[:-1] if loc and loc[-1] == "[key]" else loc


def _message_for(error: Any, loc: Loc) -> str:
    kind, value = error["type"], error.get("input")
    secret = "api_key" in loc or (bool(loc) and loc[0] == "providers")
    if kind == "enum":
        if loc and loc[-1] == "[key]":
            return _unknown("task type", value, [t.value for t in TaskType])
        if "roles" in loc:
            choices = [t.value for t in TaskType]
            return _unknown("role", value, choices) + (
                f", {schema.MAIN_ROLE_ALL}, or {{{schema.POST_ROLE}: <task text>}}"
            )
        return f"{error['msg']} (got {value!r})"
    if kind == "extra_forbidden":
        return _unknown("field", loc[-1], _fields_at(loc[:-1]))
    if kind == "missing":
        return "required field is missing"
    if "capabilities" in loc and kind in ("less_than_equal", "greater_than_equal"):
        return f"capability {loc[-1]} is {value}; expected a score from 0.0 to 1.0"
    message = error["msg"].removeprefix("Value error, ")
    if secret or kind in _WHOLE_MESSAGES:
        return message
    if isinstance(value, dict | list):
        return message
    return f"{message} (got {value!r})"


def _unknown(what: str, value: Any, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {value!r}{hint}. Expected one of: {', '.join(choices)}"


def _fields_at(loc: Loc) -> list[str]:
    """Return the field names the schema allows at a location."""
    current: Any = ModelyardConfig
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        else:
            args = [a for a in typing.get_args(current) if a is not type(None)]
            current = args[-1] if args else None
        while typing.get_origin(current) in (types.UnionType, typing.Union):
            current = next(a for a in typing.get_args(current) if a is not type(None))
    while typing.get_origin(current) in (types.UnionType, typing.Union):
        current = next(a for a in typing.get_args(current) if a is not type(None))
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [name for name in current.model_fields if name != "source"]
    return []


def _position(positions: Positions, loc: Loc) -> tuple[int | None, int | None]:
    for end in range(len(loc), -1, -1):
        if loc[:end] in positions:
            return positions[loc[:end]]
    return None, None


def _format_loc(loc: Loc) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text
