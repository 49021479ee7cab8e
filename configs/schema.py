"""The pydantic schema every model config is checked against."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from modelyard.configs.grants import ToolGrants
from modelyard.configs.templates import PROMPTS_DIR, STEP_FIELDS, prompt_styles, template_problem
from modelyard.state import TaskType

#: Providers with a client of their own here; everything else goes through init_chat_model.
OPENAI_COMPATIBLE = {
    "lmstudio": "http://localhost:1234/v1",
    "vllm": "http://localhost:8000/v1",
    "llamacpp": "http://localhost:8080/v1",
    "openai_compatible": None,
}
INIT_CHAT_MODEL_PROVIDERS = frozenset(
    {
        "anthropic", "anthropic_bedrock", "azure_ai", "azure_openai", "baseten", "bedrock",
        "bedrock_converse", "cohere", "deepseek", "fireworks", "google_anthropic_vertex",
        "google_genai", "google_vertexai", "groq", "huggingface", "ibm", "litellm", "meta",
        "mistralai", "nvidia", "openrouter", "perplexity", "together", "upstage", "xai",
    }
)  # fmt: skip
KNOWN_PROVIDERS = frozenset({"ollama", "openai", *OPENAI_COMPATIBLE, *INIT_CHAT_MODEL_PROVIDERS})
DEFAULT_OLLAMA_URL = "http://localhost:11434"
OPENAI_API_URL = "https://api.openai.com/v1"
MAIN_ROLE_ALL = "chatcompletions"
POST_ROLE = "postcompletions"
_V = TypeVar("_V")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GenerationOptions(_Strict):
    """Sampling and runtime options; Ollama gets all of them, OpenAI the ones it knows."""

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    typical_p: float | None = Field(default=None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: int | None = None
    stop: list[str] | None = None
    # Ollama runtime options (https://github.com/ollama/ollama/blob/main/docs/api.md)
    num_ctx: int | None = Field(default=None, ge=1)
    num_predict: int | None = Field(default=None, ge=-2)
    num_keep: int | None = Field(default=None, ge=-1)
    num_batch: int | None = Field(default=None, ge=1)
    num_gpu: int | None = Field(default=None, ge=-1)
    main_gpu: int | None = Field(default=None, ge=0)
    num_thread: int | None = Field(default=None, ge=0)
    mirostat: Literal[0, 1, 2] | None = None
    mirostat_eta: float | None = Field(default=None, ge=0.0)
    mirostat_tau: float | None = Field(default=None, ge=0.0)
    repeat_last_n: int | None = Field(default=None, ge=-1)
    repeat_penalty: float | None = Field(default=None, ge=0.0)
    tfs_z: float | None = Field(default=None, ge=0.0)
    penalize_newline: bool | None = None
    numa: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def set_values(self) -> dict[str, Any]:
        """Return the options that are set, by name."""
        return self.model_dump(exclude_none=True)

    def ollama_options(self) -> dict[str, Any]:
        """Return Ollama's `options` object (`max_tokens` becomes `num_predict`)."""
        options = self.set_values()
        max_tokens = options.pop("max_tokens", None)
        if max_tokens is not None and "num_predict" not in options:
            options["num_predict"] = max_tokens
        return options

    def openai_params(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return (parameters OpenAI's API has, the rest for an OpenAI-compatible server)."""
        options = self.set_values()
        native = {k: options.pop(k) for k in list(options) if k in OPENAI_NATIVE_OPTIONS}
        return native, options


OPENAI_NATIVE_OPTIONS = frozenset(
    {"temperature", "top_p", "max_tokens", "frequency_penalty", "presence_penalty", "seed", "stop"}
)


def known_provider_keys(value: dict[str, _V]) -> dict[str, _V]:
    """Return `value` when every key is a known provider; else raise naming the unknown ones."""
    unknown = sorted(set(value) - KNOWN_PROVIDERS)
    if unknown:
        raise PydanticCustomError(
            "unknown_provider",
            "unknown provider {names}; known providers: {known}",
            {"names": ", ".join(unknown), "known": ", ".join(sorted(KNOWN_PROVIDERS))},
        )
    return value


class Cost(_Strict):
    """Price in the config's currency per 1,000 tokens."""

    input_per_1k: float = Field(default=0.0, ge=0.0)
    output_per_1k: float = Field(default=0.0, ge=0.0)

    def of(self, input_tokens: int, output_tokens: int) -> float:
        """Return the cost of one call."""
        return (input_tokens * self.input_per_1k + output_tokens * self.output_per_1k) / 1000


class Supports(_Strict):
    """What a model can do besides plain chat."""

    streaming: bool = True
    tools: bool = False


class PostCompletion(_Strict):
    """A step a model runs after the main completion, with its task text."""

    task: str = Field(min_length=1)
    tools: ToolGrants = Field(default_factory=ToolGrants)
    """What the step may use: `git_diff`, `read_files`, `write_files` (see `configs.grants`)."""


class PromptSettings(_Strict):
    """A model's own prompts: a packaged style, and templates that replace single steps.

    A template is the text itself, or the path of a `.md`/`.txt` file relative to the
    config file's folder. Templates fill in `{prompt}`, `{plan}`, ... (see `STEP_FIELDS`).
    """

    style: str | None = None
    """A folder of templates under `configs/prompts/` (`terse` for small coding models,
    `stepwise` for reasoning models), or the path of a folder of your own."""
    system: str | None = None
    """The system prompt; takes the place of `system_prompt` and the style's `system.md`."""
    answer: str | None = None
    plan: str | None = None
    implement: str | None = None
    review: str | None = None
    revise: str | None = None
    classify: str | None = None
    post_complete: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _style_shorthand(cls, data: Any) -> Any:
        return {"style": data} if isinstance(data, str) else data

    @field_validator("style")
    @classmethod
    def _known_style(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or (PROMPTS_DIR / value).is_dir():
            return value
        folder = _config_dir(info) / value
        if folder.is_dir():
            for step in STEP_FIELDS:
                path = folder / f"{step}.md"
                problem = template_problem(step, _text(path)) if path.is_file() else None
                if problem:
                    raise PydanticCustomError(
                        "prompt_template",
                        "{path}: {problem}",
                        {"path": str(path), "problem": problem},
                    )
            return str(folder.resolve())
        raise PydanticCustomError(
            "unknown_prompt_style",
            "no prompt style '{style}': packaged styles are {styles}, or give the path of a "
            "folder of <step>.md files",
            {"style": value, "styles": ", ".join(prompt_styles())},
        )

    @field_validator(*STEP_FIELDS, "system")
    @classmethod
    def _template(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        text = value
        if _names_a_file(value):
            path = _config_dir(info) / value.strip()
            try:
                text = path.read_text(encoding="utf-8").strip("\n")
            except OSError as exc:
                raise PydanticCustomError(
                    "prompt_file",
                    "cannot read prompt file {path}: {reason}; give a path relative to the "
                    "config file's folder, or write the template itself",
                    {"path": str(path), "reason": exc.strerror or str(exc)},
                ) from None
        step = info.field_name or ""
        problem = None if step == "system" else template_problem(step, text)
        if problem:
            raise PydanticCustomError("prompt_template", "{problem}", {"problem": problem})
        return text


def _names_a_file(value: str) -> bool:
    """Whether a template value is a file's path: one word ending in `.md` or `.txt`."""
    value = value.strip()
    return value.endswith((".md", ".txt")) and not any(c.isspace() for c in value)


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PydanticCustomError(
            "prompt_file",
            "cannot read prompt file {path}: {reason}",
            {"path": str(path), "reason": str(exc)},
        ) from None


def _config_dir(info: ValidationInfo) -> Path:
    """Return the folder relative paths in the config are read from (its file's folder)."""
    folder = (info.context or {}).get("config_dir")
    return Path(folder) if folder else Path.cwd()


class InitialStats(_Strict):
    """A model's figures before it has been called: where its moving averages start."""

    success_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    latency_ms: float = Field(default=1000.0, gt=0.0)


class ModelConfig(_Strict):
    """One model entry: where it runs, what it is for, how it is called."""

    name: str = Field(min_length=1)
    """The name used in routing, overrides and logs."""
    model: str = Field(min_length=1)
    """The model id the provider knows (`phi3:mini`, `gpt-4o-mini`)."""
    provider: str
    """`ollama`, `openai`, `lmstudio`, `vllm`, `llamacpp`, `openai_compatible`, or any
    provider `init_chat_model` knows."""
    base_url: str | None = None
    """The server's URL; defaults to the provider's entry under `providers`, then its usual."""
    api_key: SecretStr | None = None
    """The key, from the environment (`${OPENAI_API_KEY}`); never printed."""
    roles: list[TaskType] = Field(default_factory=list)
    """Task types this model serves as a main step."""
    post_completions: list[PostCompletion] = Field(default_factory=list)
    """Steps this model runs after the main completion."""
    capabilities: dict[TaskType, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=dict
    )
    """How good the model is at each task type, 0.0 to 1.0 (missing: 0.5)."""
    cost: Cost = Field(default_factory=Cost)
    context_window: int = Field(default=4096, ge=256)
    """Tokens the model accepts, prompt and answer together."""
    supports: Supports = Field(default_factory=Supports)
    options: GenerationOptions = Field(default_factory=GenerationOptions)
    system_prompt: str | None = None
    """The system prompt (`prompts.system` takes its place when both are set)."""
    prompts: PromptSettings = Field(default_factory=PromptSettings)
    """The model's prompt style and per-step templates (see `configs/prompts/`)."""
    timeout: float = Field(default=120.0, gt=0.0)
    """Seconds before a request to this model is abandoned, waiting for the next bytes of
    its answer: the whole answer when nobody streams its tokens, else each chunk."""
    initial_stats: InitialStats = Field(default_factory=InitialStats)
    """What selection assumes of the model before its first call."""
    auto_pull: bool | None = None
    """Pull the model through Ollama's `/api/pull` when its server lacks it, before the
    first task that needs it. Unset: on for Ollama models; only Ollama models can pull."""

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return normalise_model_entry(data)

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str, info: ValidationInfo) -> str:
        if value in KNOWN_PROVIDERS:
            return value
        reference = (info.data or {}).get("model", "")
        if not value:
            prefix = reference.partition(":")[0] if ":" in reference else ""
            not_one = f" ('{prefix}' is not a provider)" if prefix else ""
            raise PydanticCustomError(
                "missing_provider",
                "model '{reference}' names no known provider{not_one}; write it as "
                "'ollama:{reference}', 'openai:{reference}' or '<provider>:{reference}', "
                "or set provider. Known providers: {known}",
                {
                    "reference": reference,
                    "not_one": not_one,
                    "known": ", ".join(sorted(KNOWN_PROVIDERS)),
                },
            )
        raise PydanticCustomError(
            "unknown_provider",
            "unknown provider '{provider}'; known providers: {known}",
            {"provider": value, "known": ", ".join(sorted(KNOWN_PROVIDERS))},
        )

    @field_validator("auto_pull")
    @classmethod
    def _pull_needs_ollama(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        provider = (info.data or {}).get("provider")
        if value and provider is not None and provider != "ollama":
            raise PydanticCustomError(
                "auto_pull_not_ollama",
                "auto_pull works with Ollama models only (it pulls through /api/pull), and "
                "this model's provider is '{provider}'; remove auto_pull and make the model "
                "available on its server yourself",
                {"provider": provider},
            )
        return value

    @property
    def protocol(self) -> Literal["ollama", "openai", "init_chat_model"]:
        """Return which client family talks to this model."""
        if self.provider == "ollama":
            return "ollama"
        if self.provider == "openai" or self.provider in OPENAI_COMPATIBLE:
            return "openai"
        return "init_chat_model"

    @property
    def pulls_missing(self) -> bool:
        """Whether modelyard pulls this model when its server lacks it (see `auto_pull`)."""
        return self.protocol == "ollama" if self.auto_pull is None else self.auto_pull

    @property
    def reference(self) -> str:
        """Return `provider:model`, as written in configs."""
        return f"{self.provider}:{self.model}"

    def capability(self, task_type: TaskType) -> float:
        """Return the capability score for a task type (0.5 when the config says nothing)."""
        return self.capabilities.get(task_type, 0.5)


def split_reference(reference: str) -> tuple[str, str]:
    """Split `provider:model` into its parts; `local_x` means an Ollama model `x`.

    Returns ("", reference) when the reference names no known provider.
    """
    if reference.startswith("local_"):
        return "ollama", reference.removeprefix("local_")
    prefix, sep, rest = reference.partition(":")
    if sep and prefix in KNOWN_PROVIDERS and rest:
        return prefix, rest
    return "", reference


def _roles(raw: Any) -> tuple[Any, list[dict[str, Any]]]:
    """Split a roles list into main task types and post-completion steps."""
    if not isinstance(raw, list):
        return raw, []
    main: list[Any] = []
    post: list[dict[str, Any]] = []
    for entry in raw:
        if entry == MAIN_ROLE_ALL:
            main.extend(t.value for t in TaskType)
        elif isinstance(entry, dict) and POST_ROLE in entry:  # with `tools:` beside it
            post.append(
                {"task": entry[POST_ROLE]} | {k: v for k, v in entry.items() if k != POST_ROLE}
            )
        else:
            main.append(entry)
    return list(dict.fromkeys(main)) if all(isinstance(m, str) for m in main) else main, post


def normalise_model_entry(data: dict[str, Any]) -> dict[str, Any]:
    """Turn the formats modelyard grew from into the current schema's fields."""
    data = dict(data)
    if "model_name_for_api" in data:
        data.setdefault("model", data.pop("model_name_for_api"))
    if "max_context_length" in data:
        data.setdefault("context_window", data.pop("max_context_length"))
    supports = dict(data.get("supports") or {})
    if "supports_streaming" in data:
        supports.setdefault("streaming", data.pop("supports_streaming"))
    if "supports_function_calling" in data:
        supports.setdefault("tools", data.pop("supports_function_calling"))
    if supports:
        data["supports"] = supports
    usage = data.get("resource_usage")
    if isinstance(usage, dict) and "cost_per_kilo_total_tokens" in usage:
        per_1k = usage["cost_per_kilo_total_tokens"]
        data.setdefault("cost", {"input_per_1k": per_1k, "output_per_1k": per_1k})
        data.pop("resource_usage")
    capabilities = data.get("capabilities")
    if isinstance(capabilities, list):
        data["capabilities"] = {name: 1.0 for name in capabilities}
    if "roles" in data:
        main, post = _roles(data["roles"])
        data["roles"] = main
        if post:
            data["post_completions"] = [*data.get("post_completions", []), *post]

    reference = data.get("model")
    name = data.get("name")
    if reference is None and isinstance(name, str):
        reference = name
    if isinstance(reference, str):
        provider, model_id = split_reference(reference)
        explicit = data.get("provider")
        if explicit:
            # `provider: ollama` + `model: ollama:phi3` or `model: phi3` both mean phi3.
            model_id = model_id if provider == explicit else reference
            provider = explicit
        data["provider"] = provider
        data["model"] = model_id
        if name is None:
            data["name"] = reference
        elif isinstance(name, str) and name.startswith("local_") and name == reference:
            data["name"] = name
    elif "provider" not in data:
        data["provider"] = ""
    return data


class ProviderSettings(_Strict):
    """Defaults for every model of one provider."""

    base_url: str | None = None
    api_key: SecretStr | None = None


class RetrySettings(_Strict):
    """How a failing model call is retried before modelyard gives up on that model."""

    max_attempts: int = Field(default=3, ge=1, le=20)
    """Calls per step on one model, the first included; then the step falls back."""
    initial_interval: float = Field(default=0.5, ge=0.0)
    """Seconds before the first retry."""
    backoff_factor: float = Field(default=2.0, ge=1.0)
    """Each retry waits this many times longer than the one before."""
    max_interval: float = Field(default=10.0, ge=0.0)
    """The longest wait between two retries."""
    jitter: bool = True
    """Add up to a second of random wait, so that clients do not retry in step."""
    max_retry_after: float = Field(default=30.0, ge=0.0)
    """The longest Retry-After a retry waits for; a longer one falls back to another model."""


class SelectionWeights(_Strict):
    """How much each factor counts in a candidate's score; every factor is 0.0 to 1.0."""

    capability: float = Field(default=0.4, ge=0.0)
    """The model's configured capability for the task type."""
    success_rate: float = Field(default=0.3, ge=0.0)
    """The success-rate moving average."""
    latency: float = Field(default=0.15, ge=0.0)
    """The latency moving average; 1.0 for the fastest candidate, lower for slower ones."""
    cost: float = Field(default=0.1, ge=0.0)
    """1.0 for the cheapest candidate for this prompt, 0.0 for the dearest."""
    provider: float = Field(default=0.05, ge=0.0)
    """The provider's entry in `provider_preference`."""


class SelectionSettings(_Strict):
    """How the selector ranks models and how fast it learns from calls."""

    weights: SelectionWeights = Field(default_factory=SelectionWeights)
    provider_preference: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=dict
    )
    """Preference per provider, 0.0 to 1.0 (missing: 0.0), e.g. {ollama: 1.0, openai: 0.5}."""
    min_availability: float = Field(default=0.0, ge=0.0, le=1.0)
    """Leave out models whose success rate fell below this (they get a trial call after
    `cooldown.cooldown_seconds` without calls)."""
    alpha: float = Field(default=0.2, gt=0.0, le=1.0)
    """Weight of the newest call in the success-rate and latency moving averages."""
    expected_output_tokens: int = Field(default=500, ge=0)
    """Answer length assumed when comparing costs."""

    @field_validator("provider_preference")
    @classmethod
    def _known_providers(cls, value: dict[str, float]) -> dict[str, float]:
        return known_provider_keys(value)


class CooldownSettings(_Strict):
    """When a failing model is rested, for how long, and how long a task waits for one."""

    allowed_fails: int = Field(default=3, ge=1)
    """Consecutive failed calls before a model is cooled down."""
    cooldown_seconds: float = Field(default=60.0, ge=0.0)
    """How long a cooled-down model is left out; then one trial call decides."""
    max_wait_seconds: float = Field(default=30.0, ge=0.0)
    """How long a task waits for a model to come back when every candidate is cooled down."""


class PersistenceSettings(_Strict):
    """Where modelyard keeps what outlives a process: per-model stats, the task queue and
    the tasks' checkpoints, all in one database."""

    url: str = ".modelyard/modelyard.db"
    """A SQLite file (made with its folder when missing), `memory` for a store that lives
    and dies with the process, or a `postgresql://` URL."""

    @property
    def backend(self) -> Literal["sqlite", "memory", "postgres"]:
        """Return which database the URL names."""
        if self.url == "memory":
            return "memory"
        if self.url.startswith(("postgresql://", "postgres://")):
            return "postgres"
        return "sqlite"


class RunnerSettings(_Strict):
    """How the task runner works through its queue."""

    workers: int = Field(default=4, ge=1, le=4096)
    """Tasks run at once (async workers; a local Ollama serves a few at a time)."""
    durability: Literal["sync", "async", "exit"] = "sync"
    """When a task's checkpoints are written (LangGraph's `durability`): `sync` before each
    next step starts, so a step that completed is never run again after a crash; `async`
    while the next step runs (a crash can repeat the last step); `exit` only at the end."""
    freeze_heap: bool = True
    """While a runner (or distributed worker) runs, keep the garbage collector's full passes
    off the objects alive when it started (`gc.freeze()`, undone at shutdown): a full pass
    over a loaded interpreter stops the event loop for about 100 ms. Turn it off when the
    application manages the collector itself."""
    heartbeat_seconds: float = Field(default=5.0, gt=0, le=3600)
    """Distributed workers (`modelyard worker`): how often each says it is alive."""
    stalled_after_seconds: float = Field(default=30.0, gt=0, le=86400)
    """Distributed workers: a worker silent this long is taken for dead, and its tasks are
    resumed by the others from their last checkpoints. Keep it several heartbeats long: a
    live worker taken for dead would have its tasks run twice at once."""

    @model_validator(mode="after")
    def _stalled_after_heartbeats(self) -> RunnerSettings:
        if self.stalled_after_seconds < 2 * self.heartbeat_seconds:
            raise ValueError(
                f"stalled_after_seconds ({self.stalled_after_seconds:g}) must be at least twice "
                f"heartbeat_seconds ({self.heartbeat_seconds:g}), or live workers would be "
                "taken for dead"
            )
        return self


ClassifierMethod = Literal["keyword", "embedding", "llm", "hybrid"]
EMBEDDING_PROVIDERS = frozenset({"ollama", "openai", "sentence-transformers", *OPENAI_COMPATIBLE})


class EmbeddingSettings(_Strict):
    """Which LangChain embeddings model the embedding classifier uses, and where."""

    model: str
    """`provider:name`: `ollama:nomic-embed-text`, `openai:text-embedding-3-small`,
    `lmstudio:...` (any OpenAI-compatible server), `sentence-transformers:NAME_OR_PATH`, or
    `minilm` for all-MiniLM-L6-v2 from the `semantic` extra, offline."""
    base_url: str | None = None
    """The server; default: the provider's `base_url` in `providers`, then the server of
    the first configured model of that provider, then the provider's usual URL."""
    api_key: SecretStr | None = None
    """For OpenAI and compatible servers; default: the provider's key."""
    batch_size: int = Field(default=32, ge=1, le=4096)
    """Texts per embedding request when classifying or embedding the exemplars."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"model": data} if isinstance(data, str) else data

    @field_validator("model")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value == "minilm":
            return value
        provider, sep, name = value.partition(":")
        if not sep or not name:
            raise PydanticCustomError(
                "embedding_model",
                "embedding model '{value}' needs a provider: write provider:name, e.g. "
                "ollama:nomic-embed-text, openai:text-embedding-3-small, "
                "sentence-transformers:all-MiniLM-L6-v2, or minilm",
                {"value": value},
            )
        if provider not in EMBEDDING_PROVIDERS:
            raise PydanticCustomError(
                "embedding_provider",
                "unknown embeddings provider '{provider}'; expected one of: {choices}",
                {"provider": provider, "choices": ", ".join(sorted(EMBEDDING_PROVIDERS))},
            )
        return value

    @property
    def provider(self) -> str:
        """The provider part of `model` (`sentence-transformers` for `minilm`)."""
        return "sentence-transformers" if self.model == "minilm" else self.model.partition(":")[0]


class ClassifierThresholds(_Strict):
    """When the hybrid cascade stops at a method: its confidence at or above the threshold."""

    keyword: float = Field(default=0.9, ge=0.0, le=1.0)
    """The keyword classifier decides when its confidence reaches this (1.0: never)."""
    embedding: float = Field(default=0.5, ge=0.0, le=1.0)
    """The embedding classifier decides when its confidence reaches this; below it the
    LLM is asked (when the cascade has one)."""


class ClassifierSettings(_Strict):
    """How a task's type is decided when the caller does not give it."""

    method: ClassifierMethod = "keyword"
    """`keyword` (patterns, no model), `embedding` (nearest task type by meaning), `llm`
    (a configured model judges), or `hybrid`: keyword when sure, else embedding, else LLM."""
    embeddings: EmbeddingSettings | None = None
    """The embeddings model, for `embedding` and `hybrid`."""
    model: str | None = None
    """The configured model that judges for `llm` and `hybrid`; default: the model most
    capable of planning (the reasoning model)."""
    llm: bool = True
    """Whether `hybrid` asks the LLM when the embedding classifier is unsure."""
    thresholds: ClassifierThresholds = Field(default_factory=ClassifierThresholds)
    exemplars: str | None = None
    """A JSONL file (or a folder of them) of `{"text": ..., "label": ...}` exemplars,
    relative to the config's folder; default: the packaged exemplars."""
    cache_dir: str = ".modelyard/embeddings"
    """Where the exemplars' embeddings are cached, one file per embeddings model."""

    @model_validator(mode="after")
    def _needs_embeddings(self) -> ClassifierSettings:
        if self.method in ("embedding", "hybrid") and self.embeddings is None:
            raise ValueError(
                f"classifier method {self.method!r} needs an embeddings model: set "
                "classifier.embeddings, e.g. ollama:nomic-embed-text or minilm"
            )
        return self


class ModelyardConfig(_Strict):
    """A whole config: the models and the settings beside them."""

    models: list[ModelConfig] = Field(min_length=1)
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    cooldown: CooldownSettings = Field(default_factory=CooldownSettings)
    persistence: PersistenceSettings = Field(default_factory=PersistenceSettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    classifier: ClassifierSettings = Field(default_factory=ClassifierSettings)
    source: str = Field(default="<python>", exclude=True)
    """Where the config was read from, for error messages."""

    @model_validator(mode="after")
    def _unique_names(self, info: ValidationInfo) -> ModelyardConfig:
        if info.context and info.context.get("cross_checked"):
            return self
        seen: dict[str, int] = {}
        for index, model in enumerate(self.models):
            if model.name in seen:
                raise ValueError(
                    f"model name {model.name!r} is used twice (models[{seen[model.name]}] "
                    f"and models[{index}]); names must be unique"
                )
            seen[model.name] = index
        judge = self.classifier.model
        if judge is not None and judge not in seen:
            raise ValueError(
                f"classifier.model {judge!r} is not a configured model; expected one of: "
                f"{', '.join(seen)}"
            )
        return self

    @field_validator("providers")
    @classmethod
    def _known_provider_keys(cls, value: dict[str, ProviderSettings]) -> dict[str, Any]:
        return known_provider_keys(value)

    @property
    def model_names(self) -> list[str]:
        """Return every model's name, in config order."""
        return [m.name for m in self.models]

    def base_url_for(self, model: ModelConfig) -> str | None:
        """Return the URL a model's requests go to (`host:port` gets `http://`, as Ollama does)."""
        url = self._configured_url(model)
        if url and "://" not in url:
            url = f"http://{url}"
        return url

    def _configured_url(self, model: ModelConfig) -> str | None:
        if model.base_url:
            return model.base_url
        settings = self.providers.get(model.provider)
        if settings and settings.base_url:
            return settings.base_url
        if model.provider == "ollama":
            return DEFAULT_OLLAMA_URL
        if model.provider in OPENAI_COMPATIBLE:
            return OPENAI_COMPATIBLE[model.provider]
        if model.provider == "openai":
            return OPENAI_API_URL
        return None

    def is_local_openai_server(self, model: ModelConfig) -> bool:
        """Whether a model talks the OpenAI protocol to a server other than OpenAI's own."""
        return model.protocol == "openai" and self.base_url_for(model) != OPENAI_API_URL

    def api_key_for(self, model: ModelConfig) -> SecretStr | None:
        """Return the API key for a model, from its entry or its provider's settings."""
        if model.api_key is not None:
            return model.api_key
        settings = self.providers.get(model.provider)
        return settings.api_key if settings else None
