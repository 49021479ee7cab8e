"""ChatOllama that asks for the whole answer at once when nobody streams its tokens."""

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
    """

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
