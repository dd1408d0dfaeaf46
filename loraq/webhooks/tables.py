"""Webhook endpoints, the deliveries of events to them (the outbox), and each delivery's attempts."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from loraq.core.db import Base
from loraq.core.ids import new_id, unix_seconds


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_project_id_seq", "project_id", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, default=lambda: new_id("wh_"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(String(512), default=None)
    # Not hashed as API keys are: the server signs every delivery with it, so it must be recoverable.
    # Encrypted with LORAQ_WEBHOOK_SECRETS_KEY when the operator set one, else stored as is (sealing.py).
    secret: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[int] = mapped_column(BigInteger, default=unix_seconds)


class WebhookDelivery(Base):
    """One event for one endpoint: written with the job's change, sent (and retried) by the workers."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_endpoint_id_seq", "endpoint_id", "seq"),
        # The senders' scan: pending deliveries by when they are due.
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        # The reconciler's prune, every 15 s on every worker: without it, a scan of the whole table
        # whenever nothing is old enough to delete (90 ms at 500,000 deliveries; 0.06 ms with it).
        Index("ix_webhook_deliveries_created_at", "created_at"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Also the `webhook-id` header: the same on every attempt, so a receiver can drop duplicates.
    id: Mapped[str] = mapped_column(String(64), unique=True, default=lambda: new_id("msg_"))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)  # the exact body sent, and signed
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | succeeded | failed
    # Attempts since it was (re)queued: the position in the retry schedule.
    tries: Mapped[int] = mapped_column(Integer, default=0)
    # When a sender may take it next; a claim pushes it a lease ahead, so one whose sender died comes back.
    next_attempt_at: Mapped[float | None] = mapped_column(Float, default=None)
    claim_token: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[int] = mapped_column(BigInteger, default=unix_seconds)


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempted_at: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    response_excerpt: Mapped[str | None] = mapped_column(Text, default=None)  # its start, for debugging
    duration_ms: Mapped[int] = mapped_column(Integer)
