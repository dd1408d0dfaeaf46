"""/v1/chat/completions: answered by a worker's chat process while the request waits, holding no thread."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter

from api.bodies import JSONBodyRoute
from api.deps import ProjectId, SettingsDep
from api.schemas.chat import ChatCompletionPublic
from api.schemas.common import ErrorResponse
from loraq.chat import service
from loraq.chat.spec import ChatCompletionCreate
from loraq.core.broker import publish_chat
from loraq.core.db import session_scope
from loraq.core.errors import ServiceUnavailable
from loraq.core.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/chat/completions", tags=["chat"], route_class=JSONBodyRoute)

# The first looks come quickly (a loaded model answers a short prompt in a fraction of a second), then
# less often, so a long answer costs a few queries a second.
FIRST_POLL_SECONDS, MAX_POLL_SECONDS = 0.02, 0.25


@router.post(
    "", response_model=ChatCompletionPublic, responses={504: {"model": ErrorResponse}}, summary="Chat"
)
async def create_chat_completion(
    body: ChatCompletionCreate, project_id: ProjectId, settings: SettingsDep
) -> dict[str, Any]:
    """Answer a conversation with a base model or one of this project's ft: models (OpenAI's shape)."""
    request_id = await anyio.to_thread.run_sync(_store_and_publish, body, project_id, settings)
    started = time.monotonic()
    pause = FIRST_POLL_SECONDS
    while True:
        answer = await anyio.to_thread.run_sync(_collect, project_id, request_id)
        if answer is not None:
            return answer
        waited = time.monotonic() - started
        if waited >= settings.chat_timeout_seconds:
            raise await anyio.to_thread.run_sync(_give_up, project_id, request_id, waited)
        await anyio.sleep(min(pause, settings.chat_timeout_seconds - waited))
        pause = min(pause * 1.5, MAX_POLL_SECONDS)


# Each step below is its own short transaction: the request must be committed before a worker can read
# it, and the wait between steps holds no connection. So these use session_scope, not the request's session.


def _store_and_publish(body: ChatCompletionCreate, project_id: str, settings: Settings) -> str:
    with session_scope() as session:
        row = service.create_request(session, project_id=project_id, request=body, settings=settings)
        request_id = row.id
    try:
        publish_chat(request_id)
    except Exception as error:
        log.warning("could not publish chat request %s", request_id, exc_info=True)
        with session_scope() as session:
            service.withdraw(session, project_id=project_id, request_id=request_id)
        raise ServiceUnavailable("the chat queue is unavailable; retry shortly") from error
    return request_id


def _collect(project_id: str, request_id: str) -> dict[str, Any] | None:
    with session_scope() as session:
        return service.collect(session, project_id=project_id, request_id=request_id)


def _give_up(project_id: str, request_id: str, waited: float) -> Exception:
    with session_scope() as session:
        return service.give_up(session, project_id=project_id, request_id=request_id, waited=round(waited))
