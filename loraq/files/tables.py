"""Files: uploaded datasets and the result bundles workers produce."""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from loraq.core.db import Base
from loraq.core.ids import new_id, unix_seconds


class File(Base):
    __tablename__ = "files"
    # Lists are a project's rows newest first: one index serves the filter and the order.
    __table_args__ = (
        Index("ix_files_project_id_seq", "project_id", "seq"),
        Index("ix_files_project_id_purpose_seq", "project_id", "purpose", "seq"),  # ?purpose=fine-tune
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, default=lambda: new_id("file-"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32), default="processed")
    format: Mapped[str | None] = mapped_column(String(32), default=None)
    examples: Mapped[int | None] = mapped_column(Integer, default=None)
    storage_key: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=unix_seconds)
