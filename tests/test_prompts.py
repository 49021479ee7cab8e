"""Prompts per model and step: packaged styles, per-model overrides, and what reaches the server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from support import CODING_MODEL, REASONING_MODEL, config_text, write_config

from modelyard.configs import ModelyardConfig, load_config, load_config_text
from modelyard.configs.templates import (
    STEP_FIELDS,
    packaged_template,
    prompt_styles,
    step_template,
    system_template,
)
from modelyard.graphs import build_plan_and_implement_graph, build_route_graph
from modelyard.nodes import Context
from modelyard.state import ConfigError, TaskStatus
from modelyard.testing.server import LocalModelServer

PLAN_PROMPT = "Write a Python function that parses ISO dates"


def with_prompts(url: str, protocol: str, reasoner: str, coder: str) -> str:
    """Return the two-model test config with `prompts:` lines added to each model."""
    text = config_text(url, protocol=protocol)
    head, _, tail = text.partition("  - name: coder\n")
    return f"{head}    prompts: {reasoner}\n  - name: coder\n    prompts: {coder}\n{tail}"


def sent_messages(server: LocalModelServer, model_id: str) -> list[dict[str, Any]]:
    """Return the messages of the one chat request the server got for `model_id`."""
    (request,) = [
        r for r in server.requests_for(model_id) if r.path in ("/api/chat", "/v1/chat/completions")
    ]
    assert request.body is not None
    return list(request.body["messages"])


def test_every_step_has_a_packaged_template_using_only_its_values() -> None:
    for step, fields in STEP_FIELDS.items():
        template = packaged_template(step)
        assert template.source == f"prompts/{step}.md"
        assert template.text.strip()
        template.render(**{name: f"<{name}>" for name in fields})  # no KeyError, no stray brace
    assert {"terse", "stepwise"} <= set(prompt_styles())


def test_a_style_replaces_the_steps_it_has_and_keeps_the_others() -> None:
    config = load_config("default")
    reasoner, coder = config.models
    assert step_template(coder, "implement").source == "prompts/terse/implement.md"
    assert step_template(coder, "plan").source == "prompts/plan.md"
    assert step_template(reasoner, "plan").source == "prompts/stepwise/plan.md"
    assert "step by step" in step_template(reasoner, "plan").text
    assert "Code only" in step_template(coder, "implement").text
    # The model's own system_prompt wins over the style's system.md.
    system = system_template(coder)
    assert system is not None and system.source == "models.coder.system_prompt"


def test_a_style_gives_its_system_prompt_when_the_model_has_none() -> None:
    config = load_config_text(
        "models:\n  - name: tiny\n    model: ollama:qwen2.5-coder:1.5b\n    prompts: terse\n"
    )
    system = system_template(config.models[0])
    assert system is not None and system.source == "prompts/terse/system.md"
    assert "No preamble" in system.text


async def test_per_model_prompts_reach_the_request_on_both_protocols(
    tmp_path: Path, server: LocalModelServer, protocol: str
) -> None:
    (tmp_path / "plan.md").write_text("PLAN IN THREE LINES: {prompt}\n", encoding="utf-8")
    reasoner = "{style: stepwise, plan: plan.md, system: You plan; you never write code.}"
    coder = "{style: terse, implement: 'CODE ONLY. Task: {prompt} / Plan: {plan}'}"
    config = load_config(
        write_config(tmp_path, with_prompts(server.url, protocol, reasoner, coder))
    )
    server.script(REASONING_MODEL, ["1. parse 2. validate 3. test"])
    server.script(CODING_MODEL, ["def parse(s): ..."])

    graph = build_plan_and_implement_graph(config).compile()
    state = await graph.ainvoke({"prompt": PLAN_PROMPT}, context=Context(config=config))

    assert state["status"] is TaskStatus.COMPLETED
    plan_messages = sent_messages(server, REASONING_MODEL)
    assert plan_messages[0] == {"role": "system", "content": "You plan; you never write code."}
    assert plan_messages[-1]["role"] == "user"
    assert plan_messages[-1]["content"] == f"PLAN IN THREE LINES: {PLAN_PROMPT}"
    code_messages = sent_messages(server, CODING_MODEL)
    assert code_messages[-1]["content"] == (
        f"CODE ONLY. Task: {PLAN_PROMPT} / Plan: 1. parse 2. validate 3. test"
    )
    # The config's system_prompt still wins for the coder (no prompts.system given).
    assert code_messages[0] == {"role": "system", "content": "You are an expert software engineer."}

    # The task's history shows which template and which messages each call used.
    prompts = {e.step: e.data["prompt"] for e in state["history"] if e.kind == "model_call"}
    assert prompts["plan"]["template"] == "models.reasoner.prompts.plan"
    assert prompts["plan"]["system"] == "models.reasoner.prompts.system"
    assert prompts["implement"]["template"] == "models.coder.prompts.implement"
    assert prompts["implement"]["messages"][-1]["content"] == code_messages[-1]["content"]


async def test_the_packaged_styles_reach_the_request(
    tmp_path: Path, server: LocalModelServer
) -> None:
    config = load_config(
        write_config(tmp_path, with_prompts(server.url, "ollama", "stepwise", "terse"))
    )
    server.script(CODING_MODEL, ["x = 1"])
    graph = build_route_graph(config).compile()
    await graph.ainvoke(
        {"prompt": "Write a Python function that adds two numbers"},
        context=Context(config=config),
    )
    (user,) = [m for m in sent_messages(server, CODING_MODEL) if m["role"] == "user"]
    assert user["content"] == packaged_template("answer", "terse").render(
        prompt="Write a Python function that adds two numbers"
    )


def config_error(tmp_path: Path, model_lines: str) -> str:
    text = f"models:\n  - name: coder\n    model: ollama:deepseek-coder\n{model_lines}"
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, text))
    return str(caught.value)


def test_a_template_using_a_value_its_step_lacks_is_refused_with_the_allowed_ones(
    tmp_path: Path,
) -> None:
    message = config_error(tmp_path, "    prompts:\n      plan: 'Plan {prompt} using {code}'\n")
    assert "modelyard.yaml:5" in message
    assert "models[0].prompts.plan" in message
    assert "uses {code}" in message and "it may use {prompt}" in message


def test_a_stray_brace_is_refused_saying_how_to_write_one(tmp_path: Path) -> None:
    message = config_error(tmp_path, "    prompts:\n      answer: 'Answer {prompt'\n")
    assert "models[0].prompts.answer" in message and "{{ or }}" in message


def test_a_missing_prompt_file_is_refused_with_its_full_path(tmp_path: Path) -> None:
    message = config_error(tmp_path, "    prompts: {implement: prompts/mine.md}\n")
    assert "models[0].prompts.implement" in message
    assert str(tmp_path / "prompts" / "mine.md") in message
    assert "relative to the config file's folder" in message


def test_an_unknown_style_is_refused_listing_the_packaged_ones(tmp_path: Path) -> None:
    message = config_error(tmp_path, "    prompts: chatty\n")
    assert "no prompt style 'chatty'" in message
    assert "stepwise, terse" in message


def test_a_folder_of_your_own_is_a_style(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "answer.md").write_text("MINE: {prompt}\n", encoding="utf-8")
    text = "models:\n  - name: coder\n    model: ollama:deepseek-coder\n    prompts: mine\n"
    config: ModelyardConfig = load_config(write_config(tmp_path, text))
    template = step_template(config.models[0], "answer")
    assert template.render(prompt="hi") == "MINE: hi"
    assert step_template(config.models[0], "plan").source == "prompts/plan.md"


def test_a_style_folder_of_your_own_is_checked_at_load(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "answer.md").write_text("Q: {question}\n", encoding="utf-8")
    message = config_error(tmp_path, "    prompts: mine\n")
    assert str(tmp_path / "mine" / "answer.md") in message and "uses {question}" in message


def test_a_value_hidden_in_a_format_spec_is_refused(tmp_path: Path) -> None:
    message = config_error(tmp_path, "    prompts:\n      answer: 'Q {prompt:{width}}'\n")
    assert "uses {width}" in message


def test_one_line_of_text_ending_in_md_is_a_template_not_a_file(tmp_path: Path) -> None:
    text = (
        "models:\n  - name: coder\n    model: ollama:deepseek-coder\n"
        "    prompts:\n      answer: '{prompt} Write the findings to notes.md'\n"
    )
    config = load_config(write_config(tmp_path, text))
    assert step_template(config.models[0], "answer").render(prompt="P") == (
        "P Write the findings to notes.md"
    )


def test_a_template_file_edited_while_running_fails_the_task_clearly(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    answer = tmp_path / "mine" / "answer.md"
    answer.write_text("A: {prompt}\n", encoding="utf-8")
    text = "models:\n  - name: coder\n    model: ollama:deepseek-coder\n    prompts: mine\n"
    config = load_config(write_config(tmp_path, text))
    assert step_template(config.models[0], "answer").render(prompt="x") == "A: x"
    answer.write_text("B: {question}\n", encoding="utf-8")
    os.utime(answer, ns=(1, 1))  # a different mtime however fast the write was
    with pytest.raises(ConfigError) as caught:
        step_template(config.models[0], "answer").render(prompt="x")
    assert str(answer) in str(caught.value) and "may use {prompt}" in str(caught.value)
