"""/v1/projects: an admin key creates projects and issues or revokes their API keys."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AdminKey, SessionDep
from api.schemas import ApiKeyCreated, ApiKeyPublic, ListPublic, ProjectCreate, ProjectPublic, list_of
from loraq import projects

router = APIRouter(prefix="/v1/projects", tags=["projects (admin)"])


@router.post("", response_model=ProjectPublic)
def create_project(body: ProjectCreate, _admin: AdminKey, session: SessionDep) -> ProjectPublic:
    return ProjectPublic.of(projects.create_project(session, **body.model_dump()))


@router.get("", response_model=ListPublic[ProjectPublic])
def list_projects(_admin: AdminKey, session: SessionDep) -> ListPublic[ProjectPublic]:
    return list_of(projects.list_projects(session), ProjectPublic.of)


@router.get("/{project_id}", response_model=ProjectPublic)
def get_project(project_id: str, _admin: AdminKey, session: SessionDep) -> ProjectPublic:
    return ProjectPublic.of(projects.get_project(session, project_id))


@router.post("/{project_id}/api_keys", response_model=ApiKeyCreated)
def create_api_key(project_id: str, _admin: AdminKey, session: SessionDep) -> ApiKeyCreated:
    key, secret = projects.issue_key(session, project_id=project_id)
    return ApiKeyCreated(**ApiKeyPublic.of(key).model_dump(), value=secret)


@router.get("/{project_id}/api_keys", response_model=ListPublic[ApiKeyPublic])
def list_api_keys(project_id: str, _admin: AdminKey, session: SessionDep) -> ListPublic[ApiKeyPublic]:
    return list_of(projects.list_keys(session, project_id=project_id), ApiKeyPublic.of)


@router.delete("/{project_id}/api_keys/{key_id}", response_model=ApiKeyPublic)
def revoke_api_key(project_id: str, key_id: str, _admin: AdminKey, session: SessionDep) -> ApiKeyPublic:
    return ApiKeyPublic.of(projects.revoke_key(session, project_id=project_id, key_id=key_id))
