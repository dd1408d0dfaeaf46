"""/v1/projects: an admin key creates projects and issues or revokes their API keys."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from api.bodies import JSONBodyRoute
from api.deps import AdminKey, CurrentKey, ObjectId, SessionDep
from api.routing import OneHopRoute
from api.schemas.common import ListPublic, list_of
from api.schemas.projects import ApiKeyCreated, ApiKeyPublic, ProjectCreate, ProjectPublic
from loraq.projects import service

router = APIRouter(prefix="/v1/projects", tags=["projects (admin)"], route_class=JSONBodyRoute)
me_router = APIRouter(prefix="/v1", tags=["projects"], route_class=OneHopRoute)


class Me(BaseModel):
    object: Literal["api_key.identity"] = "api_key.identity"
    project_id: str
    project_name: str
    is_admin: bool


@me_router.get("/me", response_model=Me)
def who_am_i(key: CurrentKey, session: SessionDep) -> Me:
    """The project the request's API key belongs to, and whether the key is an admin key."""
    project = service.get_project(session, key.project_id)
    return Me(project_id=project.id, project_name=project.name, is_admin=key.is_admin)


@router.post("", response_model=ProjectPublic)
def create_project(body: ProjectCreate, _admin: AdminKey, session: SessionDep) -> ProjectPublic:
    return ProjectPublic.model_validate(service.create_project(session, **body.model_dump()))


@router.get("", response_model=ListPublic[ProjectPublic])
def list_projects(_admin: AdminKey, session: SessionDep) -> ListPublic[ProjectPublic]:
    return list_of(service.list_projects(session), ProjectPublic.model_validate)


@router.get("/{project_id}", response_model=ProjectPublic)
def get_project(project_id: ObjectId, _admin: AdminKey, session: SessionDep) -> ProjectPublic:
    return ProjectPublic.model_validate(service.get_project(session, project_id))


@router.post("/{project_id}/api_keys", response_model=ApiKeyCreated)
def create_api_key(project_id: ObjectId, _admin: AdminKey, session: SessionDep) -> ApiKeyCreated:
    key, secret = service.issue_key(session, project_id=project_id)
    return ApiKeyCreated(**ApiKeyPublic.model_validate(key).model_dump(), value=secret)


@router.get("/{project_id}/api_keys", response_model=ListPublic[ApiKeyPublic])
def list_api_keys(project_id: ObjectId, _admin: AdminKey, session: SessionDep) -> ListPublic[ApiKeyPublic]:
    return list_of(service.list_keys(session, project_id=project_id), ApiKeyPublic.model_validate)


@router.delete("/{project_id}/api_keys/{key_id}", response_model=ApiKeyPublic)
def revoke_api_key(
    project_id: ObjectId, key_id: ObjectId, _admin: AdminKey, session: SessionDep
) -> ApiKeyPublic:
    return ApiKeyPublic.model_validate(service.revoke_key(session, project_id=project_id, key_id=key_id))
