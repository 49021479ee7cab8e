"""Live updates: a model's config changed while graphs and runners run, and `--set`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langgraph.store.memory import InMemoryStore
from support import (
    CODING_MODEL,
    REASONING_MODEL,
    config_text,
    run_modelyard,
    scripted_context,
    write_config,
)

from modelyard.configs import (
    ModelRegistry,
    ModelyardConfig,
    apply_assignments,
    apply_model_changes,
    load_config,
    load_config_text,
    parse_assignments,
)
from modelyard.graphs import TaskRunner
from modelyard.graphs.run import BUILDERS
from modelyard.nodes import Context, update_model_config
from modelyard.state import ConfigError, ModelNotOnServerError, Task, TaskStatus, TaskType
from modelyard.testing.server import Fault, LocalModelServer, RecordedRequest

CODE_PROMPT = "Write a Python function that validates email addresses"


async def run_graph(
    context: Context,
    prompt: str = CODE_PROMPT,
    *,
    graph: str = "route",
    task_type: TaskType | None = TaskType.CODE_GENERATION,
    callbacks: list[BaseCallbackHandler] | None = None,
) -> dict[str, Any]:
    """Run one task through a graph with `context`; return the final state."""
    compiled = BUILDERS[graph](context.models().config).compile(store=InMemoryStore())
    task = Task(prompt=prompt, task_type=task_type)
    config: Any = {"callbacks": callbacks} if callbacks else {}
    state: dict[str, Any] = await compiled.ainvoke(task.to_input(), config, context=context)
    return state


def sent(request: RecordedRequest, option: str) -> Any:
    """Return the value of a generation option as a request's body carries it."""
    body = request.body or {}
    if request.protocol == "ollama":
        return body.get("options", {}).get(option)
    return body.get(option)


def problems(error: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    """Return the error's problems as {field path: message}."""
    return {problem.path: problem.message for problem in error.value.problems}


# --- a running graph picks the change up at its next call -----------------------------------


async def test_an_update_between_two_calls_reaches_the_next_request(
    server: LocalModelServer, server_config: ModelyardConfig
) -> None:
    context = Context(registry=ModelRegistry(server_config))
    await run_graph(context)
    context.update_model_config("coder", temperature=0.05, num_ctx=2048)
    await run_graph(context)

    first, second = server.requests_for(CODING_MODEL)
    assert (sent(first, "temperature"), sent(second, "temperature")) == (0.35, 0.05)
    assert sent(second, "num_ctx") == 2048
    assert sent(second, "top_p") == 0.95  # the options not named are kept
    assert context.models().get("coder").options.temperature == 0.05


async def test_an_update_made_mid_run_reaches_the_runs_next_step(
    server: LocalModelServer, server_config: ModelyardConfig
) -> None:
    context = Context(registry=ModelRegistry(server_config))
    compiled = BUILDERS["plan_and_implement"](server_config).compile(store=InMemoryStore())
    task = Task(prompt=CODE_PROMPT, task_type=TaskType.CODE_GENERATION)

    steps = []
    async for update in compiled.astream(task.to_input(), context=context, stream_mode="updates"):
        steps.extend(update)
        if "plan" in update:  # the run is between its plan and its implementation
            context.update_model_config("coder", temperature=0.05, options={"seed": 7})

    assert steps[-1] == "implement"
    (implement,) = server.requests_for(CODING_MODEL)
    assert (sent(implement, "temperature"), sent(implement, "seed")) == (0.05, 7)
    (plan,) = server.requests_for(REASONING_MODEL)
    assert sent(plan, "temperature") == 0.7


class _ChangeCoderAfterPlan(BaseCallbackHandler):
    """Change the coder's temperature from inside the run, when the plan's call ends."""

    run_inline = True

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        update_model_config("coder", temperature=0.15)


async def test_update_model_config_inside_a_run_changes_that_run(
    server: LocalModelServer, server_config: ModelyardConfig
) -> None:
    registry = ModelRegistry(server_config)
    context = Context(registry=registry)

    state = await run_graph(
        context, graph="plan_and_implement", callbacks=[_ChangeCoderAfterPlan()]
    )

    assert state["status"] is TaskStatus.COMPLETED
    (implement,) = server.requests_for(CODING_MODEL)
    assert sent(implement, "temperature") == 0.15
    assert registry.get("coder").options.temperature == 0.15


def test_update_model_config_outside_a_run_says_what_to_call_instead() -> None:
    with pytest.raises(RuntimeError, match=r"context\.update_model_config"):
        update_model_config("coder", temperature=0.1)


async def test_a_shorter_timeout_makes_a_slow_answer_time_out(
    server: LocalModelServer, server_config: ModelyardConfig
) -> None:
    context = Context(registry=ModelRegistry(server_config))
    server.inject_fault(Fault.delay(0.5), model=CODING_MODEL, times=None)
    try:
        slow_but_in_time = await run_graph(context)
        context.update_model_config("coder", timeout=0.2)
        timed_out = await run_graph(context)
    finally:
        server.clear_faults()

    assert slow_but_in_time["assigned_model"] == "coder"
    assert slow_but_in_time.get("failures") in (None, [])
    (failed,) = timed_out["failures"]
    assert (failed.model, failed.kind, failed.calls) == ("coder", "timeout", 3)
    assert "no answer within 0.2 s" in failed.message
    assert timed_out["assigned_model"] == "reasoner"  # fell back, as for any timeout


async def test_new_weights_change_the_next_selection() -> None:
    context = scripted_context()
    explain = "Explain how a hash table works"
    context.update_model_config("coder", roles=["code_generation", "code_review", "explanation"])
    before = await run_graph(context, explain, task_type=TaskType.EXPLANATION)

    context.update_model_config("coder", weights={"explanation": 1.0})
    context.update_model_config("reasoner", capabilities={TaskType.EXPLANATION: 0.0})
    after = await run_graph(context, explain, task_type=TaskType.EXPLANATION)

    assert (before["assigned_model"], after["assigned_model"]) == ("reasoner", "coder")
    coder = context.models().get("coder")
    assert coder.capability(TaskType.EXPLANATION) == 1.0
    assert coder.capability(TaskType.CODE_GENERATION) == 0.9  # the scores not named are kept


# --- changes are checked like the file, and refused whole -----------------------------------


@pytest.mark.parametrize(
    ("changes", "path", "words"),
    [
        ({"temprature": 0.1}, "models.coder.temprature", "did you mean 'temperature'?"),
        ({"temperature": 5}, "models.coder.options.temperature", "number from 0.0 to 2.0"),
        ({"options": {"top_kk": 3}}, "models.coder.options.top_kk", "did you mean 'top_k'?"),
        ({"timeout": 0}, "models.coder.timeout", "greater than 0.0"),
        ({"weights": {"planing": 0.2}}, "models.coder.capabilities.planing", "mean 'planning'?"),
        ({"capabilities": {"general": 2}}, "models.coder.capabilities.general", "from 0.0 to 1.0"),
        ({"roles": ["coding"]}, "models.coder.roles[0]", "unknown role 'coding'"),
        ({"name": "coder2"}, "models.coder.name", "cannot change"),
        ({"model": None}, "models.coder.model", "required"),
        ({"roles": ["general", {"postcompletions": "x"}]}, "models.coder.roles",
         "change post-completion steps with post_completions="),
    ],
)  # fmt: skip
def test_a_bad_change_is_refused_and_changes_nothing(
    changes: dict[str, Any], path: str, words: str
) -> None:
    context = scripted_context()
    registry = context.models()
    before = registry.config

    with pytest.raises(ConfigError) as error:
        registry.update_model("coder", **changes)

    assert words in problems(error)[path]
    assert all(p.file == "update_model_config" for p in error.value.problems)
    assert registry.config is before and registry.get("coder") is before.models[1]


def test_an_unknown_model_is_refused_with_a_suggestion() -> None:
    registry = scripted_context().models()
    with pytest.raises(ConfigError) as error:
        registry.update_model("codr", temperature=0.1)
    assert str(error.value) == (
        "update_model_config: models.codr: unknown model 'codr' (did you mean 'coder'?). "
        "Expected one of: reasoner, coder"
    )


def test_every_problem_of_a_change_is_reported_at_once() -> None:
    registry = scripted_context().models()
    with pytest.raises(ConfigError) as error:
        registry.update_model("coder", temperature=-1, top_p=3, bogus=1, timeout=0.5)
    assert sorted(problems(error)) == [
        "models.coder.bogus",
        "models.coder.options.temperature",
        "models.coder.options.top_p",
    ]
    assert registry.get("coder").timeout == 180  # the good part was not made either


def test_an_option_openai_lacks_is_refused_for_openais_api() -> None:
    config = load_config_text(
        "models:\n  - name: cloud\n    model: openai:gpt-4o-mini\n"
        "  - name: local\n    model: ollama:phi3:mini\n"
    )
    registry = ModelRegistry(config)
    with pytest.raises(ConfigError) as error:
        registry.update_model("cloud", temperature=0.2, top_k=40)
    assert "OpenAI's API has no option 'top_k'" in problems(error)["models.cloud.options.top_k"]
    assert registry.config is config
    registry.update_model("local", top_k=40)  # Ollama takes it
    assert registry.get("local").options.top_k == 40


def test_apply_model_changes_returns_a_new_config_and_keeps_the_old() -> None:
    config = load_config("default")
    changed = apply_model_changes(
        config, "coder", {"temperature": 0.1, "cost": {"input_per_1k": 2}}
    )
    assert config.models[1].options.temperature == 0.35
    assert changed.models[1].options.temperature == 0.1
    assert changed.models[1].options.top_p == 0.95
    assert (changed.models[1].cost.input_per_1k, changed.models[1].cost.output_per_1k) == (2, 0)
    assert changed.models[0] is config.models[0]
    assert changed.models[1].reference == config.models[1].reference
    assert changed.models[1].prompts == config.models[1].prompts


def test_none_unsets_an_option_and_puts_a_field_back_to_its_default() -> None:
    config = load_config("default")
    changed = apply_model_changes(
        config, "coder", {"temperature": None, "options": {"top_p": None}, "timeout": None}
    )
    coder = changed.models[1]
    assert (coder.options.temperature, coder.options.top_p, coder.timeout) == (None, None, 120)
    assert coder.options.max_tokens == 4096


def test_a_new_model_id_keeps_the_provider_unless_it_names_one() -> None:
    config = load_config("default")
    same_provider = apply_model_changes(config, "coder", {"model": "llama3:8b"}).models[1]
    moved = apply_model_changes(
        config, "coder", {"model": "openai_compatible:qwen", "base_url": "http://gpu:8000/v1"}
    ).models[1]
    assert same_provider.reference == "ollama:llama3:8b"
    assert (moved.reference, moved.base_url) == ("openai_compatible:qwen", "http://gpu:8000/v1")


# --- the registry: clients, server checks, logs ---------------------------------------------


async def test_the_next_call_gets_a_client_built_from_the_new_config(
    server_config: ModelyardConfig,
) -> None:
    registry = ModelRegistry(server_config)
    old = registry.chat_model("coder")
    assert registry.chat_model("coder") is old
    registry.update_model("coder", timeout=1.5)
    new = registry.chat_model("coder")
    assert new is not old
    assert registry.chat_model("reasoner") is registry.chat_model("reasoner")
    assert registry.server_models.config is registry.config


async def test_a_model_moved_to_another_id_is_checked_on_its_server_again(
    server: LocalModelServer, server_config: ModelyardConfig
) -> None:
    registry = ModelRegistry(server_config)
    await registry.server_models.ensure("coder")  # found: not asked again
    registry.update_model("coder", timeout=2)
    await registry.server_models.ensure("coder")  # same id, same server: still found

    registry.update_model("coder", model="missing:7b", auto_pull=False)

    with pytest.raises(ModelNotOnServerError, match="missing:7b"):
        await registry.server_models.ensure("coder")


def test_a_ready_made_client_is_kept_and_the_rest_of_the_change_applies() -> None:
    context = scripted_context()
    registry = context.models()
    client = registry.chat_model("coder")
    registry.update_model("coder", timeout=3, temperature=0.2)
    assert registry.chat_model("coder") is client
    assert (registry.get("coder").timeout, registry.get("coder").options.temperature) == (3, 0.2)


def test_a_change_is_logged_with_old_and_new_values(caplog: pytest.LogCaptureFixture) -> None:
    registry = scripted_context().models()
    with caplog.at_level(logging.INFO, logger="modelyard.config"):
        registry.update_model("coder", temperature=0.1)
    assert "model coder changed by update_model: options.temperature: 0.35 -> 0.1" in caplog.text


def test_a_context_sharing_the_files_registry_changes_only_itself(tmp_path: Path) -> None:
    path = write_config(tmp_path, config_text("http://127.0.0.1:9"))
    changed, other = Context(config_file=str(path)), Context(config_file=str(path))
    assert changed.models() is other.models()

    changed.update_model_config("coder", temperature=0.1)

    assert changed.models().get("coder").options.temperature == 0.1
    assert other.models().get("coder").options.temperature == 0.35
    assert Context(config_file=str(path)).models().get("coder").options.temperature == 0.35


# --- the task runner ------------------------------------------------------------------------


async def test_a_runner_update_reaches_the_tasks_after_it(
    server: LocalModelServer, server_config: ModelyardConfig
) -> None:
    async with TaskRunner(config=server_config, persistence="memory", workers=1) as runner:
        first = await runner.submit(CODE_PROMPT, task_type=TaskType.CODE_GENERATION)
        await runner.wait(first.id, timeout=10)
        changed = runner.update_model_config("coder", temperature=0.05, max_tokens=64)
        second = await runner.submit(CODE_PROMPT, task_type=TaskType.CODE_GENERATION)
        done = await runner.wait(second.id, timeout=10)

    assert done.status is TaskStatus.COMPLETED and done.assigned_model == "coder"
    assert changed.options.temperature == 0.05
    before, after = server.requests_for(CODING_MODEL)
    assert (sent(before, "temperature"), sent(after, "temperature")) == (0.35, 0.05)
    limit = "num_predict" if after.protocol == "ollama" else "max_completion_tokens"
    assert sent(after, limit) == 64
    assert runner.config.models[1].options.temperature == 0.05


# --- `--set` ----------------------------------------------------------------------------------


def test_parse_assignments_reads_values_as_yaml() -> None:
    changes = parse_assignments(
        [
            "coder.temperature=0.1",
            "coder.options.num_ctx=8192",
            "coder.options={top_k: 40}",
            "coder.stop=[END, STOP]",
            "coder.supports.tools=true",
            "coder.system_prompt=You are: terse",
            "llama3.1:8b.timeout=30",
            "reasoner.base_url=",
        ],
        names=["coder", "reasoner", "llama3.1:8b"],
    )
    assert changes == {
        "coder": {
            "temperature": 0.1,
            "options": {"num_ctx": 8192, "top_k": 40},
            "stop": ["END", "STOP"],
            "supports": {"tools": True},
            "system_prompt": "You are: terse",
        },
        "llama3.1:8b": {"timeout": 30},
        "reasoner": {"base_url": None},
    }


def test_malformed_assignments_are_all_reported() -> None:
    with pytest.raises(ConfigError) as error:
        apply_assignments(
            load_config("default"),
            ["coder", "temperature=0.1", "coder.api_key=sk-123", "coder.temperature=9"],
        )
    lines = str(error.value).splitlines()
    assert lines[0] == (
        "--set: 'coder' has no '='; write MODEL.FIELD=VALUE, e.g. coder.temperature=0.1"
    )
    assert lines[1].startswith("--set: 'temperature' names no model and field")
    assert "never from the command line" in lines[2] and "sk-123" not in lines[2]
    assert lines[3] == (
        "--set: models.coder.options.temperature: temperature is 9; expected a number from "
        "0.0 to 2.0"
    )


@pytest.mark.cli
def test_run_with_set_sends_the_changed_options(server: LocalModelServer, tmp_path: Path) -> None:
    result = run_modelyard(
        "run", "--json", "-m", "coder", "--set", "coder.temperature=0.05",
        "--set", "coder.options.num_ctx=2048", CODE_PROMPT,
        ollama=server.url, db=tmp_path / "stats.db",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (request,) = server.requests_for(CODING_MODEL)
    assert (sent(request, "temperature"), sent(request, "num_ctx")) == (0.05, 2048)


@pytest.mark.cli
def test_a_bad_set_exits_2_saying_what_is_wrong(server: LocalModelServer, tmp_path: Path) -> None:
    result = run_modelyard(
        "run", "--set", "coder.temprature=0.1", "--set", "codr.timeout=1", "hi",
        ollama=server.url, db=tmp_path / "stats.db",
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(
        "modelyard: config error: --set: models.coder.temprature: unknown field 'temprature' "
        "(did you mean 'temperature'?)"
    )
    assert lines[1].startswith(
        "modelyard: config error: --set: models.codr: unknown model 'codr' (did you mean 'coder'?)"
    )
    assert server.requests_for(CODING_MODEL) == []
