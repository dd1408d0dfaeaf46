"""Chat requests in flight: the API writes one, a worker's chat process writes its answer, the API reads it.

A row lives only while its request waits: the API deletes it once answered or given up on, so no chat
content stays stored. Rows of a crashed API are deleted by later requests once past every wait.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from loraq.core.db import Base
from loraq.core.ids import new_id, unix_seconds


class ChatStatus:
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class ChatRequest(Base):
    __tablename__ = "chat_requests"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, default=lambda: new_id("chatcmpl-"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(255))  # as asked: a base model or an ft: model
    base_model: Mapped[str] = mapped_column(String(255))
    # An ft: model's adapter: its job's id (the adapter's name in the worker) and its bundle's storage key.
    adapter_id: Mapped[str | None] = mapped_column(String(64), default=None)
    adapter_key: Mapped[str | None] = mapped_column(String(255), default=None)
    generation: Mapped[dict[str, Any]] = mapped_column(JSON)  # ChatCompletionCreate.generation
    status: Mapped[str] = mapped_column(String(16), default=ChatStatus.QUEUED)
    # The worker's answer: {"content", "finish_reason", "usage", "loraq"}, or an error to pass on.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[int] = mapped_column(BigInteger, default=unix_seconds, index=True)
