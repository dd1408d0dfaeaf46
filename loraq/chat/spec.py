"""A chat completion request as OpenAI's API takes it, with the parts loraq serves."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from loraq.core.text import PlainText


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"]
    text: PlainText


class ChatMessage(BaseModel):
    """One turn; OpenAI's list of text parts is joined into one string."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant"]
    content: PlainText | Annotated[list[TextPart], Field(min_length=1)]
    name: Annotated[str, Field(max_length=64)] | None = None  # accepted as OpenAI does; templates ignore it

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionCreate(BaseModel):
    """The body of POST /v1/chat/completions. Fields loraq cannot honour are refused, never ignored."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: Annotated[str, Field(min_length=1, max_length=255)]
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=1000)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="The older name of max_completion_tokens."
    )
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    seed: int | None = None
    stop: (
        Annotated[PlainText, Field(min_length=1)]
        | Annotated[list[Annotated[PlainText, Field(min_length=1)]], Field(max_length=4)]
        | None
    ) = None
    n: Annotated[int, Field(ge=1, le=1, description="Only 1: one answer per request.")] = 1
    stream: bool = False
    user: Annotated[str, Field(max_length=256)] | None = None  # OpenAI's end-user id: accepted, unused

    @model_validator(mode="after")
    def _no_streaming(self) -> ChatCompletionCreate:
        if self.stream:
            raise PydanticCustomError(
                "invalid_combination",
                "stream is not supported: ask without stream for the whole answer at once",
                {"field": "stream"},
            )
        return self

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def requested_max_tokens(self) -> tuple[int | None, str]:
        """The answer's length limit as asked, and the field that asked it (for errors)."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"

    def generation(self, max_new_tokens: int) -> dict[str, Any]:
        """What a worker needs to answer: the turns as plain strings and the sampling settings."""
        return {
            "messages": [{"role": m.role, "content": m.text} for m in self.messages],
            "max_new_tokens": max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": self.stop_strings,
        }
