"""Worker processes as they last reported themselves."""

from __future__ import annotations

from sqlalchemy import BigInteger, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from loraq.core.db import Base
from loraq.core.ids import unix_seconds


class Worker(Base):
    __tablename__ = "workers"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # host:pid:random, as in the leases it takes; unique per process start.
    id: Mapped[str] = mapped_column(String(128), unique=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(255))  # what it trains on, e.g. "cpu" or "cuda (NVIDIA H100)"
    compute_dtype: Mapped[str] = mapped_column(String(32))  # what "auto" resolves to there
    started_at: Mapped[int] = mapped_column(BigInteger, default=unix_seconds)
    heartbeat_at: Mapped[float] = mapped_column(Float, index=True)
    stopped_at: Mapped[int | None] = mapped_column(BigInteger, default=None)
