"""Unit tests of the config schema, the YAML loader and the model registry (no sockets).

Configs are written to `tmp_path` and read back with `load_config`, so every problem is
checked with the file, field path, line and column a user would see.
"""

from __future__ import annotations

import asyncio
import importlib.util
import textwrap
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from modelyard.configs import (
    GenerationOptions,
    ModelConfig,
    ModelRegistry,
    ModelyardConfig,
    load_config,
    resolve_config_path,
)
from modelyard.configs.ollama import WholeAnswerChatOllama
from modelyard.state import ConfigError, ConfigProblem, TaskType, UnknownModelError

ALL_TASK_TYPES = list(TaskType)
OLLAMA_OPTIONS = {
    "num_ctx": 8192,
    "mirostat": 2,
    "mirostat_eta": 0.1,
    "mirostat_tau": 5.0,
    "repeat_last_n": 64,
    "repeat_penalty": 1.1,
    "top_k": 40,
    "min_p": 0.05,
    "typical_p": 0.9,
    "num_predict": 256,
    "num_keep": 4,
    "num_gpu": 1,
    "num_thread": 8,
    "seed": 42,
    "stop": ["</s>", "User:"],
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's environment out of every test."""
    for name in (
        "MODELYARD_CONFIG",
        "OLLAMA_HOST",
        "LMSTUDIO_BASE_URL",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)


def write(folder: Path, name: str, text: str) -> Path:
    """Write a dedented YAML file and return its path."""
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def config_error(path: str | Path) -> ConfigError:
    """Load a config that must fail and return the error."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def only_problem(path: str | Path) -> ConfigProblem:
    """Load a config that must fail with exactly one problem and return it."""
    error = config_error(path)
    assert len(error.problems) == 1, error.problems
    assert str(error) == str(error.problems[0])
    return error.problems[0]


def ollama_options_config(tmp_path: Path, options: dict[str, object]) -> Path:
    lines = "\n".join(f"      {key}: {value!r}" for key, value in options.items())
    path = tmp_path / "c.yaml"
    path.write_text(
        f"models:\n  - name: a\n    model: ollama:phi3\n    options:\n{lines}\n",
        encoding="utf-8",
    )
    return path


# --- the packaged configs ------------------------------------------------------------------


def test_default_config_has_two_ollama_models_in_order() -> None:
    config = load_config()
    assert config.model_names == ["reasoner", "coder"]
    assert {m.provider for m in config.models} == {"ollama"}
    assert config.base_url_for(config.models[0]) == "http://localhost:11434"


def test_default_reasoner_is_phi3_with_its_options_and_roles() -> None:
    reasoner = load_config().models[0]
    assert reasoner.model == "phi3:mini"
    assert reasoner.options.set_values() == {
        "temperature": 0.7,
        "top_p": 0.95,
        "frequency_penalty": 0.2,
        "presence_penalty": 0.2,
        "max_tokens": 4096,
    }
    assert reasoner.roles == [
        TaskType.PLANNING,
        TaskType.PROBLEM_SOLVING,
        TaskType.EXPLANATION,
        TaskType.GENERAL,
    ]


def test_default_coder_is_deepseek_coder_with_its_options_and_roles() -> None:
    coder = load_config().models[1]
    assert coder.model == "deepseek-coder:6.7b-instruct"
    assert coder.options.temperature == 0.35
    assert coder.options.top_p == 0.95
    assert coder.options.max_tokens == 4096
    assert coder.roles == [TaskType.CODE_GENERATION, TaskType.CODE_REVIEW]
    assert coder.context_window == 16384


def test_default_config_reads_ollama_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "http://gpu-box:11434")
    config = load_config()
    assert config.base_url_for(config.models[0]) == "http://gpu-box:11434"


def test_modelyard_config_env_var_names_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_CONFIG", "lmstudio")
    assert resolve_config_path().name == "lmstudio.yaml"
    assert resolve_config_path("").name == "lmstudio.yaml"  # an empty Studio field: not given
    assert load_config().models[0].provider == "lmstudio"


def test_lmstudio_config_loads() -> None:
    config = load_config("lmstudio")
    assert config.model_names == ["reasoner", "coder"]
    assert [m.provider for m in config.models] == ["lmstudio", "lmstudio"]
    assert [m.protocol for m in config.models] == ["openai", "openai"]
    assert config.base_url_for(config.models[1]) == "http://localhost:1234/v1"
    assert config.models[1].options.top_k == 40


def test_openai_config_without_key_names_the_variable() -> None:
    problem = only_problem("openai")
    assert problem.file.endswith("openai.yaml")
    assert problem.path == "providers.openai.api_key"
    assert "OPENAI_API_KEY" in problem.message
    assert (problem.line, problem.column) == (7, 5)


def test_openai_config_loads_with_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-do-not-print-4242")
    config = load_config("openai")
    assert [m.model for m in config.models] == ["gpt-4o-mini", "gpt-4.1-mini"]
    key = config.api_key_for(config.models[0])
    assert isinstance(key, SecretStr)
    assert key.get_secret_value() == "sk-test-do-not-print-4242"


def test_openai_key_is_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-do-not-print-4242")
    config = load_config("openai")
    assert "sk-test-do-not-print-4242" not in repr(config)
    assert "sk-test-do-not-print-4242" not in str(config)
    assert "sk-test-do-not-print-4242" not in config.model_dump_json()


def test_missing_file_is_a_config_error() -> None:
    problem = only_problem("/nonexistent.yaml")
    assert problem.file == "/nonexistent.yaml"
    assert "no such file" in problem.message
    assert "default" in problem.message  # lists the packaged configs


# --- model references ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "name", "provider", "model", "protocol"),
    [
        ({"model": "ollama:phi3:mini"}, "ollama:phi3:mini", "ollama", "phi3:mini", "ollama"),
        ({"model": "openai:gpt-4o-mini"}, "openai:gpt-4o-mini", "openai", "gpt-4o-mini", "openai"),
        (
            {
                "name": "lm",
                "model": "qwen2.5-7b",
                "provider": "lmstudio",
                "base_url": "http://h/v1",
            },
            "lm",
            "lmstudio",
            "qwen2.5-7b",
            "openai",
        ),
        ({"model": "local_llama3.2:1b"}, "local_llama3.2:1b", "ollama", "llama3.2:1b", "ollama"),
        ({"name": "local_llama3.2:1b"}, "local_llama3.2:1b", "ollama", "llama3.2:1b", "ollama"),
        (
            {"model": "anthropic:claude-3-5-haiku-latest"},
            "anthropic:claude-3-5-haiku-latest",
            "anthropic",
            "claude-3-5-haiku-latest",
            "init_chat_model",
        ),
    ],
)
def test_model_references(
    entry: dict[str, str], name: str, provider: str, model: str, protocol: str
) -> None:
    config = ModelConfig.model_validate(entry)
    assert (config.name, config.provider, config.model, config.protocol) == (
        name,
        provider,
        model,
        protocol,
    )


def test_explicit_provider_with_prefixed_model_strips_the_prefix() -> None:
    config = ModelConfig.model_validate({"name": "r", "model": "ollama:phi3", "provider": "ollama"})
    assert config.model == "phi3"
    assert config.reference == "ollama:phi3"


def test_lmstudio_with_base_url_is_a_local_openai_compatible_server() -> None:
    config = ModelConfig.model_validate(
        {"name": "lm", "model": "m", "provider": "lmstudio", "base_url": "http://box:1234/v1"}
    )
    assert config.base_url == "http://box:1234/v1"
    whole = ModelyardConfig(models=[config])
    assert whole.is_local_openai_server(config)


def test_local_name_alone_in_a_yaml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        """
        models:
          - name: local_llama3.2:1b
          - model: local_llama3.2:3b
        """,
    )
    config = load_config(path)
    assert config.model_names == ["local_llama3.2:1b", "local_llama3.2:3b"]
    assert [(m.provider, m.model) for m in config.models] == [
        ("ollama", "llama3.2:1b"),
        ("ollama", "llama3.2:3b"),
    ]


# --- generation options --------------------------------------------------------------------


def test_every_ollama_option_is_accepted(tmp_path: Path) -> None:
    path = ollama_options_config(tmp_path, OLLAMA_OPTIONS)
    options = load_config(path).models[0].options
    assert options.set_values() == OLLAMA_OPTIONS


def test_ollama_options_sends_max_tokens_as_num_predict() -> None:
    options = GenerationOptions(temperature=0.2, max_tokens=512, top_k=30)
    assert options.ollama_options() == {"temperature": 0.2, "num_predict": 512, "top_k": 30}


def test_ollama_options_keeps_an_explicit_num_predict() -> None:
    options = GenerationOptions(max_tokens=512, num_predict=128)
    assert options.ollama_options() == {"num_predict": 128}


def test_openai_params_splits_native_from_extra() -> None:
    options = GenerationOptions(
        temperature=0.3, max_tokens=100, seed=7, stop="END", top_k=40, repeat_penalty=1.2
    )
    native, extra = options.openai_params()
    assert native == {"temperature": 0.3, "max_tokens": 100, "seed": 7, "stop": ["END"]}
    assert extra == {"top_k": 40, "repeat_penalty": 1.2}


# --- ${VAR} interpolation ------------------------------------------------------------------


def interpolation_config(tmp_path: Path, value: str) -> Path:
    return write(
        tmp_path,
        "c.yaml",
        f"""
        models:
          - name: a
            model: ollama:phi3
            base_url: "{value}"
        """,
    )


def test_interpolation_uses_a_set_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_OLLAMA", "http://box:11434")
    config = load_config(interpolation_config(tmp_path, "${MY_OLLAMA:-http://other}"))
    assert config.models[0].base_url == "http://box:11434"


def test_interpolation_falls_back_to_the_default(tmp_path: Path) -> None:
    config = load_config(interpolation_config(tmp_path, "http://${MY_UNSET_HOST:-fallback}:1/"))
    assert config.models[0].base_url == "http://fallback:1/"


def test_interpolation_uses_the_default_for_an_empty_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_EMPTY", "")
    config = load_config(interpolation_config(tmp_path, "${MY_EMPTY:-http://dflt}"))
    assert config.models[0].base_url == "http://dflt"


def test_interpolated_number_is_coerced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_TIMEOUT", "45")
    path = write(
        tmp_path,
        "c.yaml",
        """
        models:
          - name: a
            model: ollama:phi3
            timeout: ${MY_TIMEOUT}
            context_window: ${MY_UNSET_CTX:-8192}
        """,
    )
    model = load_config(path).models[0]
    assert (model.timeout, model.context_window) == (45.0, 8192)


def test_unset_variable_without_default_is_an_error(tmp_path: Path) -> None:
    path = interpolation_config(tmp_path, "${MY_UNSET_HOST}")
    problem = only_problem(path)
    assert problem.file == str(path)
    assert problem.path == "models[0].base_url"
    assert "MY_UNSET_HOST is not set" in problem.message
    assert "${MY_UNSET_HOST:-default}" in problem.message
    assert (problem.line, problem.column) == (4, 5)


# --- the formats modelyard grew from -------------------------------------------------------


def test_legacy_roles_mix_strings_chatcompletions_and_postcompletions(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        """
        models:
          - name: helper
            model: ollama:phi3
            roles:
              - planning
              - chatcompletions
              - postcompletions: Summarise the answer in one line.
              - postcompletions: List any follow-up questions.
        """,
    )
    model = load_config(path).models[0]
    assert set(model.roles) == set(ALL_TASK_TYPES)
    assert len(model.roles) == len(ALL_TASK_TYPES)  # planning is not listed twice
    assert model.roles[0] is TaskType.PLANNING
    assert [p.task for p in model.post_completions] == [
        "Summarise the answer in one line.",
        "List any follow-up questions.",
    ]


def legacy_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    write(
        folder,
        "ollama.yaml",
        """
        base_url: http://gpu-box:11434
        models:
          - name: local-coder
            model_name_for_api: qwen2.5-coder:7b
            capabilities: [code_generation, code_review]
            max_context_length: 32768
            supports_streaming: true
            supports_function_calling: false
            resource_usage: {cost_per_kilo_total_tokens: 0.0}
            roles: [code_generation, code_review]
        """,
    )
    write(
        folder,
        "openai.yaml",
        """
        models:
          - name: cloud
            model_name_for_api: gpt-4o-mini
            capabilities: [planning, explanation]
            max_context_length: 128000
            supports_streaming: false
            supports_function_calling: true
            resource_usage: {cost_per_kilo_total_tokens: 0.002}
            roles: [planning]
        """,
    )
    return folder


def test_legacy_folder_takes_the_provider_from_the_file_name(tmp_path: Path) -> None:
    config = load_config(legacy_folder(tmp_path))
    assert config.model_names == ["local-coder", "cloud"]
    assert [(m.provider, m.model) for m in config.models] == [
        ("ollama", "qwen2.5-coder:7b"),
        ("openai", "gpt-4o-mini"),
    ]


def test_legacy_folder_maps_the_old_fields(tmp_path: Path) -> None:
    coder, cloud = load_config(legacy_folder(tmp_path)).models
    assert (coder.context_window, cloud.context_window) == (32768, 128000)
    assert (coder.supports.streaming, coder.supports.tools) == (True, False)
    assert (cloud.supports.streaming, cloud.supports.tools) == (False, True)
    assert cloud.capabilities == {TaskType.PLANNING: 1.0, TaskType.EXPLANATION: 1.0}
    assert (cloud.cost.input_per_1k, cloud.cost.output_per_1k) == (0.002, 0.002)
    assert cloud.cost.of(1000, 500) == pytest.approx(0.003)


def test_folder_level_base_url_applies_to_that_provider_only(tmp_path: Path) -> None:
    config = load_config(legacy_folder(tmp_path))
    coder, cloud = config.models
    assert config.providers["ollama"].base_url == "http://gpu-box:11434"
    assert config.base_url_for(coder) == "http://gpu-box:11434"
    assert config.base_url_for(cloud) == "https://api.openai.com/v1"


def test_folder_problem_names_the_file_and_its_own_model_index(tmp_path: Path) -> None:
    folder = legacy_folder(tmp_path)
    bad = write(
        folder,
        "vllm.yaml",
        """
        # a second model server
        models:
          - model_name_for_api: mistral-7b
            capabilities: {planing: 0.5}
        """,
    )
    problem = only_problem(folder)
    assert problem.file == str(bad)
    assert problem.path == "models[0].capabilities.planing"
    assert (problem.line, problem.column) == (4, 20)


def test_folder_duplicate_name_across_files_names_both(tmp_path: Path) -> None:
    folder = legacy_folder(tmp_path)
    write(folder, "vllm.yaml", "models:\n  - name: cloud\n    model: mistral-7b\n")
    problem = only_problem(folder)
    assert problem.file == str(folder / "vllm.yaml")
    assert "'cloud' is already used by models[0] in openai.yaml" in problem.message
    assert problem.line == 2


def test_empty_folder_is_a_config_error(tmp_path: Path) -> None:
    problem = only_problem(tmp_path)
    assert "no .yaml files" in problem.message


# --- bad configs ---------------------------------------------------------------------------


def test_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        """
        models:
          - name: a
            model: ollama:x: y
        """,
    )
    problem = only_problem(path)
    assert problem.message.startswith("YAML syntax error")
    assert (problem.file, problem.line, problem.column) == (str(path), 3, 20)
    assert str(problem).startswith(f"{path}:3:20: ")


def test_schema_error_names_field_path_with_did_you_mean(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        """
        models:
          - name: a
            model: ollama:x
          - name: b
            model: ollama:y
            capabilities:
              planing: 0.5
        """,
    )
    problem = only_problem(path)
    assert problem.file == str(path)
    assert problem.path == "models[1].capabilities.planing"
    assert "did you mean 'planning'?" in problem.message
    assert (problem.line, problem.column) == (7, 7)
    assert str(problem) == f"{path}:7:7: models[1].capabilities.planing: {problem.message}"


def test_every_problem_in_a_file_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        """
        models:
          - name: a
            model: ollama:x
            options:
              temprature: 0.3
              top_k: -1
            timeout: 0
          - name: b
            model: ollama:y
            bogus: 1
        """,
    )
    error = config_error(path)
    assert [(p.path, p.line) for p in error.problems] == [
        ("models[0].options.temprature", 5),
        ("models[0].options.top_k", 6),
        ("models[0].timeout", 7),
        ("models[1].bogus", 10),
    ]
    assert str(error).splitlines() == [str(p) for p in error.problems]
    assert "did you mean 'temperature'?" in error.problems[0].message


def test_unknown_provider(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "models:\n  - name: a\n    model: x\n    provider: olama\n")
    problem = only_problem(path)
    assert problem.path == "models[0].provider"
    assert "unknown provider 'olama'" in problem.message
    assert "ollama" in problem.message


def test_reference_without_a_provider(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "models:\n  - model: phi3:mini\n")
    problem = only_problem(path)
    assert problem.path == "models[0].provider"
    assert "'phi3' is not a provider" in problem.message
    assert "'ollama:phi3:mini'" in problem.message


def test_model_named_twice(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        """
        models:
          - name: twin
            model: ollama:x
          - name: twin
            model: ollama:y
        """,
    )
    problem = only_problem(path)
    assert problem.path == "models[1].name"
    assert "'twin' is already used by models[0]" in problem.message
    assert (problem.line, problem.column) == (4, 5)


def test_unknown_role(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        """
        models:
          - name: a
            model: ollama:x
            roles:
              - planning
              - reveiw
        """,
    )
    problem = only_problem(path)
    assert problem.path == "models[0].roles[1]"
    assert "unknown role 'reveiw'" in problem.message
    assert "chatcompletions" in problem.message
    assert (problem.line, problem.column) == (6, 9)


def test_unknown_task_type_in_capabilities(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        "models:\n  - name: a\n    model: ollama:x\n    capabilities: {coding: 1}\n",
    )
    problem = only_problem(path)
    assert problem.path == "models[0].capabilities.coding"
    assert "unknown task type 'coding'" in problem.message
    assert "code_generation" in problem.message


def test_capability_score_out_of_range(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        "models:\n  - name: a\n    model: ollama:x\n    capabilities: {planning: 1.5}\n",
    )
    problem = only_problem(path)
    assert problem.path.startswith("models[0].capabilities")
    assert "capability planning is 1.5" in problem.message
    assert problem.line == 4


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        """
        models:
          - name: a
            model: ollama:x
            model: ollama:y
        """,
    )
    problem = only_problem(path)
    assert problem.path == "models[0].model"
    assert "'model' appears twice" in problem.message
    assert (problem.line, problem.column) == (4, 5)


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "# nothing yet\n")
    problem = only_problem(path)
    assert problem.file == str(path)
    assert "empty" in problem.message


def test_top_level_list_instead_of_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "- name: a\n  model: ollama:x\n")
    problem = only_problem(path)
    assert "expected a mapping at the top" in problem.message
    assert (problem.line, problem.column) == (1, 1)


def test_unknown_provider_under_providers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        "models:\n  - name: a\n    model: ollama:x\nproviders:\n  olama: {base_url: http://h}\n",
    )
    problem = only_problem(path)
    assert problem.path == "providers"
    assert "unknown provider olama" in problem.message


def test_a_bad_api_key_value_is_not_echoed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        "models:\n  - name: a\n    model: openai:x\n    api_key: [sk-never-show-me]\n",
    )
    error = config_error(path)
    assert "sk-never-show-me" not in str(error)


def test_problems_from_env_and_schema_are_reported_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        """
        models:
          - name: a
            model: ollama:x
            timeout: -1
            system_prompt: ${MY_UNSET_PROMPT}
        """,
    )
    error = config_error(path)
    assert [p.path for p in error.problems] == ["models[0].timeout", "models[0].system_prompt"]


def test_unknown_role_after_chatcompletions_points_at_the_written_item(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        """
        models:
          - name: a
            model: ollama:x
            roles:
              - chatcompletions
              - planing
        """,
    )
    problem = only_problem(path)
    assert (problem.path, problem.line) == ("models[0].roles[1]", 6)


def test_unknown_role_after_a_repeated_role_points_at_the_written_item(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        """
        models:
          - name: a
            model: ollama:x
            roles:
              - planning
              - planning
              - codegen
        """,
    )
    problem = only_problem(path)
    assert (problem.path, problem.line) == ("models[0].roles[2]", 7)


def test_empty_models_list_is_one_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "models: []\n")
    problem = only_problem(path)
    assert "no models" in problem.message


def test_every_out_of_range_capability_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        "models:\n  - name: a\n    model: ollama:x\n"
        "    capabilities: {planning: -0.1, general: 2}\n",
    )
    error = config_error(path)
    assert [p.path for p in error.problems] == [
        "models[0].capabilities.planning",
        "models[0].capabilities.general",
    ]


# --- the registry --------------------------------------------------------------------------


def test_registry_rejects_ollama_options_for_official_openai(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        """
        models:
          - name: cloud
            model: openai:gpt-4o-mini
            options: {temperature: 0.2, top_k: 40}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.file == str(path)
    assert problem.path == "models[0].options.top_k"
    assert problem.line == 4  # found at load time, with its position
    assert "'top_k'" in problem.message


def test_registry_accepts_ollama_options_for_openai_with_a_base_url(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        """
        models:
          - name: local
            model: openai:qwen
            base_url: http://localhost:8000/v1
            options: {top_k: 40}
        """,
    )
    client = ModelRegistry(load_config(path)).chat_model("local")
    assert isinstance(client, ChatOpenAI)
    assert client.extra_body == {"top_k": 40}


def test_registry_accepts_ollama_options_for_openai_with_a_provider_base_url(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        """
        providers:
          openai: {base_url: "http://localhost:8000/v1"}
        models:
          - name: local
            model: openai:qwen
            options: {top_k: 40}
        """,
    )
    client = ModelRegistry(load_config(path)).chat_model("local")
    assert client.extra_body == {"top_k": 40}


def test_registry_get_unknown_name_lists_configured_names() -> None:
    registry = ModelRegistry(load_config())
    with pytest.raises(UnknownModelError) as info:
        registry.get("nope")
    assert info.value.available == ["reasoner", "coder"]
    assert "'nope'" in str(info.value)
    assert "reasoner, coder" in str(info.value)


def sent_options(client: object) -> dict[str, object]:
    """Return the `options` an Ollama client sends with a request (what goes on the wire)."""
    assert isinstance(client, WholeAnswerChatOllama)
    options: dict[str, object] = client._chat_params([HumanMessage("hi")])["options"]
    return options


def test_registry_ollama_client_sends_every_option(tmp_path: Path) -> None:
    options = {k: v for k, v in OLLAMA_OPTIONS.items() if k != "stop"}
    path = ollama_options_config(tmp_path, {"temperature": 0.4, **options})
    client = ModelRegistry(load_config(path)).chat_model("a")
    assert isinstance(client, ChatOllama)
    assert client.model == "phi3"
    assert client.base_url == "http://localhost:11434"
    assert sent_options(client) == {"temperature": 0.4, **options}
    # Options passed with one call win over the configured ones.
    assert client._chat_params([HumanMessage("hi")], options={"seed": 1})["options"] == {"seed": 1}


def test_registry_builds_a_client_for_a_model_with_stop_words(tmp_path: Path) -> None:
    path = ollama_options_config(tmp_path, {"stop": ["</s>"]})
    client = ModelRegistry(load_config(path)).chat_model("a")
    # num_ctx follows the context window unless the config sets it.
    assert sent_options(client) == {"stop": ["</s>"], "num_ctx": 4096}


def test_registry_default_reasoner_sends_max_tokens_as_num_predict() -> None:
    options = sent_options(ModelRegistry(load_config()).chat_model("reasoner"))
    assert options["num_predict"] == 4096
    assert "max_tokens" not in options


def test_registry_lmstudio_client_is_chat_openai_without_retries_or_responses_api() -> None:
    client = ModelRegistry(load_config("lmstudio")).chat_model("coder")
    assert isinstance(client, ChatOpenAI)
    assert client.model_name == "deepseek-coder-6.7b-instruct"
    assert client.openai_api_base == "http://localhost:1234/v1"
    assert client.max_retries == 0
    assert client.use_responses_api is False
    assert client.extra_body == {"top_k": 40, "repeat_penalty": 1.1}
    assert (client.temperature, client.max_tokens) == (0.35, 4096)
    assert client.request_timeout == 180.0


def test_registry_openai_client_gets_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-registry")
    client = ModelRegistry(load_config("openai")).chat_model("reasoner")
    assert isinstance(client, ChatOpenAI)
    assert client.openai_api_key is not None
    assert client.openai_api_key.get_secret_value() == "sk-test-registry"
    assert client.max_retries == 0
    assert client.extra_body is None


def test_registry_overrides_build_a_separate_client() -> None:
    registry = ModelRegistry(load_config("lmstudio"))

    async def clients() -> tuple[ChatOpenAI, ChatOpenAI, ChatOpenAI]:
        plain = registry.chat_model("coder")
        hotter = registry.chat_model("coder", {"temperature": 1.1, "num_ctx": 2048})
        return plain, hotter, registry.chat_model("coder")

    plain, hotter, plain_again = asyncio.run(clients())
    assert hotter is not plain
    assert hotter.temperature == 1.1
    assert hotter.extra_body == {"top_k": 40, "repeat_penalty": 1.1, "num_ctx": 2048}
    assert plain_again is plain


def test_registry_builds_a_fresh_client_outside_an_event_loop() -> None:
    # A client built outside a loop could be used in several; so none is cached there.
    registry = ModelRegistry(load_config("lmstudio"))
    assert registry.chat_model("coder") is not registry.chat_model("coder")


def test_registry_forgets_the_clients_of_closed_loops() -> None:
    registry = ModelRegistry(load_config("lmstudio"))

    async def build() -> None:
        registry.chat_model("coder")

    for _ in range(5):
        asyncio.run(build())
    assert len(registry._per_loop) == 1  # only the last loop's, until the next call


def test_registry_builds_a_client_per_event_loop() -> None:
    registry = ModelRegistry(load_config("lmstudio"))

    async def two_clients() -> tuple[ChatOpenAI, ChatOpenAI]:
        return registry.chat_model("coder"), registry.chat_model("coder")

    first, first_again = asyncio.run(two_clients())
    second, second_again = asyncio.run(two_clients())
    assert first is first_again
    assert second is second_again
    assert first is not second
    assert first.http_async_client is not second.http_async_client


@pytest.mark.skipif(
    importlib.util.find_spec("langchain_anthropic") is not None,
    reason="langchain-anthropic is installed",
)
def test_registry_names_the_missing_provider_package(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "models:\n  - model: anthropic:claude-3-5-haiku-latest\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.path == "models[0].model"
    assert problem.line == 2
    assert "langchain-anthropic" in problem.message
