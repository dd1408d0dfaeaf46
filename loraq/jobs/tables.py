"""Fine-tuning jobs, their events and their checkpoints.

Each table has an integer `seq` (insertion order, the cursor for lists) and a public string id.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from loraq.core.db import Base
from loraq.core.ids import new_id, unix_seconds


class Job(Base):
    __tablename__ = "jobs"
    # Lists are a project's rows newest first: one index serves the filter and the order.
    __table_args__ = (
        Index("ix_jobs_project_id_seq", "project_id", "seq"),
        Index("ix_jobs_project_id_status_seq", "project_id", "status", "seq"),  # ?status=running
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, default=lambda: new_id("ftjob-"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(255))  # as asked: a base model, or an ft: model to continue
    base_model: Mapped[str] = mapped_column(String(255))  # the base LLM it trains on, whatever `model` is
    # Continued training: the job whose adapter this one starts from.
    parent_job_id: Mapped[str | None] = mapped_column(String(64), default=None)
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), default=None)
    suffix: Mapped[str | None] = mapped_column(String(64), default=None)
    seed: Mapped[int] = mapped_column(BigInteger)
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON, default=None)
    method: Mapped[dict[str, Any]] = mapped_column(JSON)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    adapter: Mapped[dict[str, Any]] = mapped_column(JSON)
    export: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    status: Mapped[str] = mapped_column(String(32), index=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    result_files: Mapped[list[str]] = mapped_column(JSON, default=list)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(255), default=None)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, default=None)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Inputs the base and the tuned adapter answer (JobCreate.samples; None: the first validation ones).
    samples: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    sample_max_new_tokens: Mapped[int] = mapped_column(Integer, default=64, server_default="64")
    # Worker-written: the base model's valid loss and the tuned ones (the job's `evaluation` object),
    # and the base model's answers to the samples ({"input", "reference", "base_output"} each).
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Deferred: only a worker resuming the job reads it; a page of jobs would decode every answer for nothing.
    base_samples: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None, deferred=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=unix_seconds)
    started_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # The lease: which worker runs the job and until when, unless it renews.
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    published_at: Mapped[float | None] = mapped_column(Float, default=None)


class JobEvent(Base):
    __tablename__ = "job_events"
    # A job's events newest first, a page at a time, however many steps logged metrics.
    __table_args__ = (Index("ix_job_events_job_id_seq", "job_id", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, default=lambda: new_id("ftevent-"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=unix_seconds)
    level: Mapped[str] = mapped_column(String(16), default="info")
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16), default="message")
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (Index("ix_checkpoints_job_id_seq", "job_id", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, default=lambda: new_id("ftckpt-"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The full state to resume from, and its size (it counts against the project's storage). None once
    # deleted: only the newest checkpoint of a running job keeps it.
    storage_key: Mapped[str | None] = mapped_column(String(255), default=None)
    resume_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # The checkpoint's adapter as a downloadable bundle (a result file of the job's project).
    result_file: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[int] = mapped_column(BigInteger, default=unix_seconds)

    @property
    def fine_tuned_model_checkpoint(self) -> str:
        """OpenAI's name for a checkpoint's model."""
        return f"{self.job_id}:ckpt-step-{self.step_number}"


class JobSample(Base):
    """The tuned adapter's answer to one sample input at one evaluation, beside the base model's."""

    __tablename__ = "job_samples"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, default=lambda: new_id("ftsample-"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    index: Mapped[int] = mapped_column(Integer)
    input: Mapped[Any] = mapped_column(JSON)  # a messages list, or a prompt string
    reference: Mapped[str | None] = mapped_column(Text, default=None)
    base_output: Mapped[str] = mapped_column(Text)
    output: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger, default=unix_seconds)
