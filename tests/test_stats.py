"""Unit tests of model stats, selection from stats, and the stats store (no model calls)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from modelyard.configs import ModelConfig, load_config
from modelyard.configs.persistence import PersistenceError, open_store
from modelyard.configs.schema import (
    CooldownSettings,
    PersistenceSettings,
    SelectionSettings,
)
from modelyard.nodes import StatsBook
from modelyard.routers import rank_models, select_model
from modelyard.state import (
    CooldownReason,
    Health,
    ModelCall,
    ModelCallError,
    ModelErrorKind,
    ModelStats,
    NoModelAvailableError,
    Requirements,
    Step,
    TaskType,
)

T = TaskType
NOW = 1_000_000.0
COOLDOWN = CooldownSettings(allowed_fails=3, cooldown_seconds=60, max_wait_seconds=5)


def fail(stats: ModelStats, *, kind: str = "server_error", retry_after: float | None = None,
         now: float = NOW, cap: float = 30.0) -> ModelStats:  # fmt: skip
    return stats.after_failure(
        kind=kind,
        message=f"{kind}: boom",
        retry_after=retry_after,
        alpha=0.2,
        allowed_fails=COOLDOWN.allowed_fails,
        cooldown_seconds=COOLDOWN.cooldown_seconds,
        max_retry_after=cap,
        now=now,
    )


def succeed(stats: ModelStats, latency_ms: float = 100.0, now: float = NOW) -> ModelStats:
    return stats.after_success(
        latency_ms=latency_ms,
        first_token_ms=None,
        input_tokens=10,
        output_tokens=20,
        cost=0.5,
        alpha=0.2,
        reset_success_rate=1.0,
        now=now,
    )


# --- ModelStats -----------------------------------------------------------------------------


def test_success_and_latency_are_moving_averages() -> None:
    stats = ModelStats.initial("m", success_rate=1.0, latency_ms=1000.0)
    stats = succeed(stats, latency_ms=500.0)
    assert stats.latency_ms == pytest.approx(0.2 * 500 + 0.8 * 1000)
    stats = fail(stats)
    assert stats.success_rate == pytest.approx(0.8)
    assert (stats.calls, stats.successes, stats.failures) == (2, 1, 1)
    assert stats.failures_by_kind == {"server_error": 1}
    assert (stats.input_tokens, stats.output_tokens, stats.cost) == (10, 20, 0.5)
    assert stats.latency_ms == pytest.approx(900.0)  # failures do not move the latency


def test_allowed_fails_consecutive_failures_cool_a_model_down() -> None:
    stats = ModelStats(model="m")
    stats = fail(fail(stats))
    assert stats.health(NOW, 3, 10) is Health.OK
    stats = fail(stats)
    assert stats.consecutive_failures == 3
    assert stats.cooldown_until == NOW + 60
    assert stats.cooldown_reason is CooldownReason.FAILURES
    assert stats.health(NOW + 59, 3, 10) is Health.COOLING
    assert stats.health(NOW + 61, 3, 10) is Health.TRIAL


def test_a_success_between_failures_resets_the_count() -> None:
    stats = fail(fail(succeed(fail(fail(ModelStats(model="m"))))))
    assert stats.consecutive_failures == 2
    assert stats.cooldown_until is None


def test_a_rate_limit_cools_down_at_once_for_retry_after_capped() -> None:
    stats = fail(ModelStats(model="m"), kind="rate_limited", retry_after=5.0)
    assert stats.cooldown_until == NOW + 5
    assert stats.cooldown_reason is CooldownReason.RATE_LIMITED
    capped = fail(ModelStats(model="m"), kind="rate_limited", retry_after=3600, cap=30)
    assert capped.cooldown_until == NOW + 30
    no_header = fail(ModelStats(model="m"), kind="rate_limited")
    assert no_header.cooldown_until is None  # counts towards allowed_fails like any failure


def test_a_failed_trial_cools_down_again_after_one_call() -> None:
    cooled = fail(fail(fail(ModelStats(model="m"))))
    later = NOW + 61
    assert cooled.health(later, 3, 10) is Health.TRIAL
    again = fail(cooled.claim_trial(later), now=later)
    assert again.cooldown_until == later + 60
    assert again.health(later + 1, 3, 10) is Health.COOLING


def test_a_successful_trial_brings_the_model_back() -> None:
    cooled = fail(fail(fail(ModelStats(model="m"))))
    assert cooled.success_rate < 0.6
    back = succeed(cooled.claim_trial(NOW + 61), now=NOW + 62)
    assert back.health(NOW + 62, 3, 10) is Health.OK
    assert (back.consecutive_failures, back.cooldown_until, back.cooldown_reason) == (0, None, None)
    assert back.success_rate == 1.0  # starts over from the config's initial figure


def test_a_trial_under_way_keeps_others_off_until_the_timeout() -> None:
    cooled = fail(fail(fail(ModelStats(model="m"))))
    on_trial = cooled.claim_trial(NOW + 61)
    assert on_trial.health(NOW + 62, 3, trial_timeout=10) is Health.ON_TRIAL
    assert on_trial.health(NOW + 72, 3, trial_timeout=10) is Health.TRIAL


# --- selection from stats ----------------------------------------------------------------------


def model(name: str, **fields: Any) -> ModelConfig:
    fields.setdefault("roles", ["code_generation"])
    return ModelConfig.model_validate({"name": name, "model": f"ollama:{name}", **fields})


def rank(models: list[ModelConfig], stats: dict[str, ModelStats], **kwargs: Any) -> Any:
    return rank_models(
        task_type=T.CODE_GENERATION,
        models=models,
        requirements=kwargs.pop("requirements", Requirements()),
        prompt_tokens=kwargs.pop("prompt_tokens", 100),
        stats=stats,
        cooldown=COOLDOWN,
        now=NOW,
        **kwargs,
    )


def test_a_model_that_keeps_failing_loses_to_a_weaker_one() -> None:
    strong = model("strong", capabilities={"code_generation": 0.9})
    weak = model("weak", capabilities={"code_generation": 0.6})
    assert [c.model for c in rank([strong, weak], {}).ranked] == ["strong", "weak"]
    flaky = ModelStats(model="strong", success_rate=0.4)
    ranking = rank([strong, weak], {"strong": flaky})
    assert [c.model for c in ranking.ranked] == ["weak", "strong"]
    assert ranking.ranked[1].factors["success_rate"] == 0.4


def test_latency_and_cost_are_relative_to_the_candidates() -> None:
    fast = model("fast", cost={"input_per_1k": 1.0, "output_per_1k": 1.0})
    slow = model("slow", cost={"input_per_1k": 0.5, "output_per_1k": 0.5})
    stats = {"fast": ModelStats(model="fast", latency_ms=200), "slow": ModelStats(
        model="slow", latency_ms=800)}  # fmt: skip
    by_name = {c.model: c for c in rank([fast, slow], stats).ranked}
    assert by_name["fast"].factors["latency"] == 1.0
    assert by_name["slow"].factors["latency"] == 0.25
    assert by_name["slow"].factors["cost"] == 1.0
    assert by_name["fast"].factors["cost"] == 0.5


def test_weights_and_provider_preference_decide_between_equal_models() -> None:
    local = model("local")
    cloud = ModelConfig(name="cloud", model="openai:gpt-4o-mini", roles=["code_generation"])
    settings = SelectionSettings(provider_preference={"openai": 1.0})
    ranking = rank([local, cloud], {}, settings=settings)
    assert ranking.ranked[0].model == "cloud"
    assert ranking.ranked[0].score - ranking.ranked[1].score == pytest.approx(0.05)
    no_provider = SelectionSettings(provider_preference={"openai": 1.0}, weights={"provider": 0.0})
    assert rank([local, cloud], {}, settings=no_provider).ranked[0].model == "local"  # tie: first


def test_a_cooled_down_model_is_filtered_with_when_it_returns() -> None:
    a, b = model("a", capabilities={"code_generation": 0.9}), model("b")
    cooled = fail(fail(fail(ModelStats(model="a"))), now=NOW - 10)
    ranking = rank([a, b], {"a": cooled})
    assert [c.model for c in ranking.ranked] == ["b"]
    assert ranking.filtered["a"] == (
        "cooled down for 50.0 s more (3 consecutive failures, last server_error)"
    )
    assert ranking.back_in == {"a": pytest.approx(50.0)}


def test_a_model_back_from_cooldown_gets_the_trial_first() -> None:
    weak = model("weak", capabilities={"code_generation": 0.1})
    strong = model("strong", capabilities={"code_generation": 0.9})
    cooled = fail(fail(fail(ModelStats(model="weak"))), now=NOW - 61)
    selection = select_model(
        step=Step.ANSWER,
        task_type=T.CODE_GENERATION,
        models=[strong, weak],
        requirements=Requirements(),
        prompt_tokens=10,
        stats={"weak": cooled},
        cooldown=COOLDOWN,
        now=NOW,
    )
    assert (selection.model, selection.trial) == ("weak", True)
    assert selection.reason.startswith("weak is back from a cooldown; this call is its trial")


def test_min_availability_leaves_out_a_flaky_model_until_it_has_rested() -> None:
    a, b = model("a", capabilities={"code_generation": 0.9}), model("b")
    flaky = ModelStats(model="a", success_rate=0.3, last_call_at=NOW - 10)
    settings = SelectionSettings(min_availability=0.5)
    ranking = rank([a, b], {"a": flaky}, settings=settings)
    assert "success rate 0.30 is below min_availability 0.50" in ranking.filtered["a"]
    rested = flaky.model_copy(update={"last_call_at": NOW - 61})
    ranked = rank([a, b], {"a": rested}, settings=settings).ranked
    assert (ranked[0].model, ranked[0].trial) == ("a", True)


def test_explain_breaks_each_score_down_by_factor() -> None:
    a, b = model("a", capabilities={"code_generation": 0.9}), model("b", roles=["general"])
    selection = select_model(
        step=Step.ANSWER,
        task_type=T.CODE_GENERATION,
        models=[a, b],
        requirements=Requirements(),
        prompt_tokens=10,
        stats={"a": ModelStats(model="a", success_rate=0.5, latency_ms=500)},
        explain=True,
    )
    (only,) = selection.ranking
    assert only.factors == {
        "capability": 0.9, "success_rate": 0.5, "latency": 1.0, "cost": 1.0, "provider": 0.0
    }  # fmt: skip
    assert only.score == pytest.approx(0.4 * 0.9 + 0.3 * 0.5 + 0.15 + 0.1)
    assert selection.excluded == {"b": "does not have the code_generation role"}
    assert "capability 0.90 · success_rate 0.50" in selection.reason


def test_no_candidate_left_says_which_filter_removed_each_model() -> None:
    small = model("small", context_window=512)
    failed = model("failed")
    cooled = model("cooled")
    with pytest.raises(NoModelAvailableError) as info:
        select_model(
            step=Step.ANSWER,
            task_type=T.CODE_GENERATION,
            models=[small, failed, cooled],
            requirements=Requirements(),
            prompt_tokens=600,
            stats={"cooled": fail(fail(fail(ModelStats(model="cooled"))))},
            cooldown=COOLDOWN,
            excluded={"failed"},
            now=NOW + 1,
        )
    error = info.value
    assert error.reasons == {
        "small": "the prompt (~600 tokens) does not fit its 512-token context window",
        "failed": "already failed for this task",
        "cooled": "cooled down for 59.0 s more (3 consecutive failures, last server_error)",
    }
    assert error.back_in == {"cooled": pytest.approx(59.0)}
    assert "Wait for a cooled-down model to come back" in str(error)


def test_after_a_context_overflow_only_larger_windows_qualify() -> None:
    small, big = model("small", context_window=4096), model("big", context_window=32768)
    ranking = rank([small, big], {}, larger_than=4096)
    assert [c.model for c in ranking.ranked] == ["big"]
    assert "not larger than the 4096 tokens" in ranking.filtered["small"]


# --- the stats store ---------------------------------------------------------------------------


CONFIG = load_config("default")


def call(model_name: str = "coder") -> ModelCall:
    return ModelCall(
        step="answer", model=model_name, provider="ollama", latency_ms=120.0,
        first_token_ms=30.0, input_tokens=5, output_tokens=7, cost=0.0,
    )  # fmt: skip


async def test_concurrent_updates_in_one_process_are_not_lost(tmp_path: Path) -> None:
    settings = PersistenceSettings(url=str(tmp_path / "nested" / "stats.db"))
    async with open_store(settings) as store:
        book = StatsBook(store, CONFIG)
        await asyncio.gather(*(book.record_success(call()) for _ in range(40)))
        error = ModelCallError(ModelErrorKind.TIMEOUT, model="coder", url="u", detail="slow")
        await asyncio.gather(*(book.record_failure(error) for _ in range(5)))
    async with open_store(settings) as store:
        coder = (await StatsBook(store, CONFIG).snapshot())["coder"]
    assert (coder.calls, coder.successes, coder.failures) == (45, 40, 5)
    assert coder.output_tokens == 280
    assert coder.first_token_ms == pytest.approx(30.0)
    assert coder.cooldown_reason is CooldownReason.FAILURES


async def test_models_never_called_have_their_configured_initial_stats() -> None:
    config = CONFIG.model_copy(deep=True)
    config.models[0].initial_stats.latency_ms = 2500.0
    async with open_store(PersistenceSettings(url="memory")) as store:
        stats = await StatsBook(store, config).snapshot()
    assert stats["reasoner"].latency_ms == 2500.0 and stats["reasoner"].calls == 0


async def test_an_unusable_stats_path_says_what_to_do(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PersistenceError) as info:
        async with open_store(PersistenceSettings(url=str(blocker / "stats.db"))):
            pass
    assert str(blocker / "stats.db") in str(info.value)
    assert "persistence.url" in str(info.value)


async def test_an_unreachable_postgres_names_it_without_the_password() -> None:
    url = "postgresql://me:s3cret@127.0.0.1:1/nowhere"
    with pytest.raises(PersistenceError) as info:
        async with open_store(PersistenceSettings(url=url)):
            pass
    assert "postgresql://me:***@127.0.0.1:1/nowhere" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_late_results_during_a_cooldown_leave_it_as_it_is() -> None:
    cooled = fail(fail(fail(ModelStats(model="m"))))  # cooled until NOW + 60
    late_failure = fail(cooled, now=NOW + 5)
    assert late_failure.cooldown_until == NOW + 60  # not pushed back
    assert late_failure.failures == 4
    late_success = succeed(cooled, now=NOW + 5)
    assert late_success.cooldown_until == NOW + 60  # not ended by a call sent before it
    assert late_success.health(NOW + 5, 3, 10) is Health.COOLING
    assert late_success.successes == 1
