"""/v1/workers: the worker processes that registered lately, and whether each is alive (admin only)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AdminKey, SessionDep, SettingsDep
from api.routing import OneHopRoute
from api.schemas.common import ListPublic
from api.schemas.workers import WorkerPublic
from loraq.workers import service

router = APIRouter(prefix="/v1/workers", tags=["workers (admin)"], route_class=OneHopRoute)


@router.get("", response_model=ListPublic[WorkerPublic])
def list_workers(_admin: AdminKey, session: SessionDep, settings: SettingsDep) -> ListPublic[WorkerPublic]:
    live = {worker.id for worker in service.live_workers(session, settings=settings)}
    workers = [
        WorkerPublic.model_validate(worker).model_copy(update={"live": worker.id in live})
        for worker in service.recent_workers(session)
    ]
    return ListPublic[WorkerPublic](data=workers)
