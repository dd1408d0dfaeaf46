"""What every repository shares: newest-first cursor pages, and the database's liveness probe."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Select, text
from sqlalchemy.orm import Session

from loraq.core.errors import InvalidRequest

Row = TypeVar("Row")


@dataclass
class Page(Generic[Row]):
    items: Sequence[Row]
    has_more: bool


def paginate(
    session: Session, statement: Select[Any], table: Any, *, after: str | None, limit: int, rows: bool = False
) -> Page[Any]:
    """Newest first; `after` is the id of the last item of the previous page. The statement's one entity
    each, or with `rows`, its rows of columns."""
    if after is not None:
        after_seq = session.scalar(statement.with_only_columns(table.seq).where(table.id == after))
        if after_seq is None:
            raise InvalidRequest(f"after: no such object in this list: {after}", param="after")
        statement = statement.where(table.seq < after_seq)
    newest_first = statement.order_by(table.seq.desc()).limit(limit + 1)
    items = (session.execute(newest_first) if rows else session.scalars(newest_first)).all()
    return Page(items=items[:limit], has_more=len(items) > limit)


def ping(connection: Connection) -> None:
    """Raise unless the database answers a trivial query."""
    connection.execute(text("SELECT 1"))
