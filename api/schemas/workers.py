"""Workers on the wire (admin only): which worker processes are alive, and on what they train."""

from __future__ import annotations

from typing import Literal

from api.schemas.common import PublicModel


class WorkerPublic(PublicModel):
    id: str
    object: Literal["worker"] = "worker"
    hostname: str
    pid: int
    device: str
    compute_dtype: str
    started_at: int
    heartbeat_at: float
    stopped_at: int | None
    live: bool = False
