"""ChatOllama that asks for the whole answer at once when nobody streams its tokens, and
carries every Ollama option itself."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult
from langchain_ollama import ChatOllama


class WholeAnswerChatOllama(ChatOllama):
    """`ChatOllama` whose non-streaming path does not stream.

    LangChain calls `_agenerate` when no handler streams the tokens (a plain `ainvoke`, a
    graph run without `stream_mode="messages"`), and `_astream` when one does.
    langchain-ollama streams in both and, in the first, folds the chunks back into one
    answer: one JSON parse, message chunk, merge and callback per token, for tokens nobody
    sees (with a real model, hundreds per answer). Here that path asks Ollama for the whole
    answer (`"stream": false`) in one response; streaming is as before.

    ChatOllama has no field for several Ollama options (min_p, typical_p, penalties,
    num_keep, ...); `ollama_options` holds all of them and goes with every request that
    passes no `options` of its own. (A bound `options` argument would do the same, but
    the binding copies the whole run config, callbacks and all, on every call.)
    """

    ollama_options: dict[str, Any] | None = None
    """The request's `options` (all of Ollama's), instead of the per-option fields."""

    def _chat_params(
        self, messages: list[BaseMessage], stop: list[str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        if self.ollama_options is not None:
            kwargs.setdefault("options", self.ollama_options)
        return super()._chat_params(messages, stop, **kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if kwargs.setdefault("stream", False):
            return await super()._agenerate(messages, stop, run_manager, **kwargs)
        # Without a run manager: the whole answer is no token stream to report.
        return await super()._agenerate(messages, stop, None, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if kwargs.setdefault("stream", False):
            return super()._generate(messages, stop, run_manager, **kwargs)
        return super()._generate(messages, stop, None, **kwargs)
