"""/v1/models: the base models this server allows, and the adapters this project trained."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ProjectId, SessionDep, SettingsDep
from api.routing import OneHopRoute
from api.schemas.common import ListPublic
from api.schemas.models import ModelPublic
from loraq.base_models.catalog import list_base_models
from loraq.jobs import repository as jobs_repository

router = APIRouter(prefix="/v1/models", tags=["models"], route_class=OneHopRoute)


@router.get("", response_model=ListPublic[ModelPublic])
def list_models(project_id: ProjectId, session: SessionDep, settings: SettingsDep) -> ListPublic[ModelPublic]:
    bases = [
        ModelPublic(id=m.name, created=m.created_at, owned_by="system", kind="base")
        for m in list_base_models(settings)
    ]
    adapters = [
        ModelPublic(
            id=job.fine_tuned_model or "",
            created=job.finished_at or job.created_at,
            owned_by=project_id,
            kind="adapter",
        )
        for job in jobs_repository.list_fine_tuned_models(session, project_id=project_id)
    ]
    return ListPublic[ModelPublic](data=bases + adapters)
