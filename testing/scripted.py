"""Scripted chat models: in-process stand-ins for real models, for tests, notebooks and demos."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Annotated, Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field

Reply = str | AIMessage | BaseException
Respond = Callable[[list[BaseMessage]], str | AIMessage]


def count_tokens(text: str) -> int:
    """Return a deterministic token estimate: one token per word, at least one."""
    return max(1, len(text.split()))


class ScriptedChatModel(GenericFakeChatModel):
    """A chat model whose answers are scripted: a list of replies, a function, or an echo.

    Replies are served in order and the last one repeats; an exception in the list is
    raised instead of answering. Every call's messages are kept in `calls`.
    """

    messages: Iterator[AIMessage | str] = Field(default_factory=lambda: iter(()))
    replies: list[Annotated[BaseException | str | AIMessage, Field(union_mode="left_to_right")]] = (
        Field(default_factory=list)
    )
    """Answers in order; the last repeats. An exception is raised when its turn comes; an
    AIMessage with `tool_calls` calls tools (streamed as tool-call chunks)."""
    respond: Respond | None = None
    """Computes the answer from the messages, when `replies` is empty."""
    name_for_echo: str = "scripted"
    """Named in the default echo answer."""
    delay: float = 0.0
    """Seconds to wait before answering (async calls sleep without blocking the loop)."""
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    """The messages of every call, in order."""

    @property
    def _llm_type(self) -> str:
        return "scripted-chat-model"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:
        """Return this model unchanged: scripted answers ignore tools (script the calls)."""
        return self

    def _reply(self, messages: list[BaseMessage]) -> AIMessage:
        self.calls.append(list(messages))
        index = len(self.calls) - 1
        if self.replies:
            reply = self.replies[min(index, len(self.replies) - 1)]
            if isinstance(reply, BaseException):
                raise reply
            answer: str | AIMessage = reply
        elif self.respond is not None:
            answer = self.respond(messages)
        else:
            last = str(messages[-1].content) if messages else ""
            answer = f"[{self.name_for_echo}] Answer to: {last[:80]}"
        message = answer if isinstance(answer, AIMessage) else AIMessage(content=answer)
        text = str(message.content) + "".join(json.dumps(c["args"]) for c in message.tool_calls)
        prompt_text = " ".join(str(m.content) for m in messages)
        usage = UsageMetadata(
            input_tokens=count_tokens(prompt_text),
            output_tokens=count_tokens(text),
            total_tokens=count_tokens(prompt_text) + count_tokens(text),
        )
        return message.model_copy(update={"usage_metadata": usage})

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.delay:
            time.sleep(self.delay)
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.delay:
            await asyncio.sleep(self.delay)
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages))])

    def _chunks(self, message: AIMessage) -> Iterator[ChatGenerationChunk]:
        text = str(message.content)
        pieces = [p for p in re.split(r"(\s+)", text) if p]
        for piece in pieces:
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece, id=message.id))
        if message.tool_calls:
            chunks = [
                tool_call_chunk(
                    name=call["name"], args=json.dumps(call["args"]), id=call["id"], index=index
                )
                for index, call in enumerate(message.tool_calls)
            ]
            yield ChatGenerationChunk(
                message=AIMessageChunk(content="", id=message.id, tool_call_chunks=chunks)
            )
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="", id=message.id, usage_metadata=message.usage_metadata,
                chunk_position="last",
            )
        )  # fmt: skip

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        if self.delay:
            time.sleep(self.delay)
        for chunk in self._chunks(self._reply(messages)):
            if run_manager:
                run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        if self.delay:
            await asyncio.sleep(self.delay)
        for chunk in self._chunks(self._reply(messages)):
            if run_manager:
                await run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk


def tool_calls(*calls: tuple[str, dict[str, Any]], content: str = "") -> AIMessage:
    """Return a scripted reply that calls tools: `tool_calls(("read_file", {"path": "a"}))`."""
    return AIMessage(
        content=content,
        tool_calls=[
            {"name": name, "args": args, "id": f"call_{index}", "type": "tool_call"}
            for index, (name, args) in enumerate(calls)
        ],
    )


def cycle_replies(*replies: str) -> Respond:
    """Return a respond function that cycles through `replies` forever."""
    iterator = itertools.cycle(replies)
    return lambda _messages: next(iterator)
