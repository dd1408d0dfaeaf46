"""Shapes every resource shares: OpenAI's list envelope and error body."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from loraq.core.repository import Page


class PublicModel(BaseModel):
    """A wire model read straight from a table row's attributes."""

    # By attribute from a row; by field name from a stored answer (an Idempotency-Key replay).
    model_config = ConfigDict(from_attributes=True, populate_by_name=True)


Item = TypeVar("Item", bound=BaseModel)


class ListPublic(BaseModel, Generic[Item]):
    object: Literal["list"] = "list"
    data: list[Item]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


def list_of(page: Page[Any] | Sequence[Any], to_public: Callable[[Any], Item]) -> ListPublic[Item]:
    items, has_more = (page.items, page.has_more) if isinstance(page, Page) else (page, False)
    data = [to_public(item) for item in items]
    return ListPublic[Item](
        data=data,
        has_more=has_more,
        first_id=data[0].id if data else None,  # type: ignore[attr-defined]
        last_id=data[-1].id if data else None,  # type: ignore[attr-defined]
    )


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


# What any route may answer with an ErrorResponse (the app documents each on every route).
ERROR_STATUSES = (400, 401, 403, 404, 409, 413, 429, 503)


def errors_as_json() -> dict[int | str, dict[str, Any]]:
    """The error answers of a route whose own answer is not JSON: FastAPI would document them in that
    route's media type (text/plain for /metrics), though every error is an ErrorResponse in JSON."""
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    return {code: {"description": HTTPStatus(code).phrase, "content": content} for code in ERROR_STATUSES}
