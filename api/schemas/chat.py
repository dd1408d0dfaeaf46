"""Chat completions on the wire: OpenAI's chat.completion object, plus loraq's model-cache counters."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ChatAnswerPublic(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoicePublic(BaseModel):
    index: int
    message: ChatAnswerPublic
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatUsagePublic(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCountersPublic(BaseModel):
    """How often the answering chat process has loaded a base model and an adapter since it started."""

    worker: str = Field(description="The chat process that answered (host:pid).")
    base_loads: int
    adapter_loads: int


class ChatCompletionPublic(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoicePublic]
    usage: ChatUsagePublic
    system_fingerprint: None = None
    loraq: ChatCountersPublic
