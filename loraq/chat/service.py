"""Chat completions: check and store a request, then turn the worker's answer into OpenAI's shape."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from loraq.base_models.catalog import list_base_models
from loraq.chat import repository
from loraq.chat.spec import ChatCompletionCreate
from loraq.chat.tables import ChatRequest, ChatStatus
from loraq.core.errors import InvalidRequest, LoraqError, NotFound, ServiceUnavailable
from loraq.core.ids import unix_seconds
from loraq.core.settings import Settings
from loraq.files import repository as files_repository
from loraq.jobs import repository as jobs_repository

FINE_TUNED_PREFIX = "ft:"


class GatewayTimeout(LoraqError):
    status_code = 504
    type = "server_error"
    code = "timeout"


def create_request(
    session: Session, *, project_id: str, request: ChatCompletionCreate, settings: Settings
) -> ChatRequest:
    """Store a chat request for a worker, once its model is one this project may use."""
    max_new_tokens = _max_new_tokens(request, settings)
    generation = request.generation(max_new_tokens)
    row = ChatRequest(project_id=project_id, model=request.model, generation=generation)
    if request.model.startswith(FINE_TUNED_PREFIX):
        job = jobs_repository.get_fine_tuned(session, project_id=project_id, name=request.model)
        if job is None or not job.result_files:
            raise _model_not_found(request.model)
        bundle = files_repository.get_file(session, project_id=project_id, file_id=job.result_files[0])
        row.base_model, row.adapter_id, row.adapter_key = job.base_model, job.id, bundle.storage_key
    elif request.model in {model.name for model in list_base_models(settings)}:
        row.base_model = request.model
    else:
        raise _model_not_found(request.model)
    # Requests of an API process that died while waiting: nobody will read them.
    repository.delete_created_before(session, unix_seconds() - int(settings.chat_timeout_seconds) - 60)
    return repository.add_request(session, row)


def collect(session: Session, *, project_id: str, request_id: str) -> dict[str, Any] | None:
    """The finished answer in OpenAI's shape (the request's row is deleted), or None while it runs."""
    row = repository.get_request(session, project_id=project_id, request_id=request_id)
    if row is None:
        raise ServiceUnavailable("the chat request was lost; send it again")
    if row.status not in (ChatStatus.DONE, ChatStatus.FAILED):
        return None
    repository.delete_request(session, project_id=project_id, request_id=request_id)
    if row.error is not None:
        raise _stored_error(row.error)
    assert row.result is not None
    return completion(row, row.result)


def withdraw(session: Session, *, project_id: str, request_id: str) -> None:
    """Delete a request no worker was told of."""
    repository.delete_request(session, project_id=project_id, request_id=request_id)


def give_up(session: Session, *, project_id: str, request_id: str, waited: float) -> LoraqError:
    """The error for a request no answer came for in time; the request is deleted, so no worker answers it."""
    row = repository.get_request(session, project_id=project_id, request_id=request_id)
    repository.delete_request(session, project_id=project_id, request_id=request_id)
    if row is not None and row.status == ChatStatus.QUEUED:
        return ServiceUnavailable(
            f"no chat worker took this request within {waited:g}s: is a loraq-worker running?"
        )
    return GatewayTimeout(f"the chat worker did not finish this answer within {waited:g}s")


def completion(row: ChatRequest, result: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's chat.completion object, with loraq's model-cache counters under "loraq"."""
    prompt_tokens, completion_tokens = result["prompt_tokens"], result["completion_tokens"]
    return {
        "id": row.id,
        "object": "chat.completion",
        "created": row.created_at,
        "model": row.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result["content"], "refusal": None},
                "finish_reason": result["finish_reason"],
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": None,
        "loraq": result["loraq"],
    }


def _max_new_tokens(request: ChatCompletionCreate, settings: Settings) -> int:
    requested, field = request.requested_max_tokens
    cap = settings.chat_max_completion_tokens
    if requested is not None and requested > cap:
        raise InvalidRequest(f"{field} must be at most {cap} on this server", param=field, code="too_large")
    return requested or cap


def _model_not_found(model: str) -> NotFound:
    # OpenAI's words and code; another project's ft: model is as unknown as one never trained.
    return NotFound(
        f"The model {model!r} does not exist or you do not have access to it; GET /v1/models lists yours",
        param="model",
        code="model_not_found",
    )


def _stored_error(error: dict[str, Any]) -> LoraqError:
    """The worker's error as the API answers it: its status, type, param and code."""
    answer = LoraqError(error["message"], param=error.get("param"), code=error.get("code"))
    answer.status_code = int(error.get("status", 500))
    answer.type = str(error.get("type", "server_error"))
    return answer
