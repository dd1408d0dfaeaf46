"""What a command prints: one JSON document with --json, a readable table or lines without."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from loraq.cli.config import Connection, resolve
from loraq.client import Client


@dataclass
class Output:
    """The connection flags and how to print, as every command receives them."""

    api_url: str | None
    api_key: str | None
    json: bool

    def client(self) -> Client:
        return connect(resolve(self.api_url, self.api_key))

    @property
    def out(self) -> Console:
        return console(stderr=False)

    @property
    def err(self) -> Console:
        return console(stderr=True)

    def document(self, value: Any) -> None:
        """Print one JSON document on stdout."""
        sys.stdout.write(json.dumps(plain(value), indent=2) + "\n")

    def table(self, rows: Sequence[BaseModel], columns: Sequence[str], *, title: str | None = None) -> None:
        """A list: one JSON document, or a table of these columns."""
        if self.json:
            self.document([row.model_dump(mode="json") for row in rows])
            return
        table = Table(*columns, title=title, box=None, header_style="bold")
        for row in rows:
            table.add_row(*(cell(getattr(row, column, None), column) for column in columns))
        self.out.print(table)

    def item(self, value: BaseModel | Mapping[str, Any], fields: Iterable[str] | None = None) -> None:
        """One object: its JSON, or its fields (these, or all of them) as `name: value` lines."""
        if self.json:
            self.document(value)
            return
        values = plain(value)
        for name in values if fields is None else fields:
            self.out.print(f"[bold]{name}[/bold]: {cell(values.get(name), name)}", highlight=False)


def connect(connection: Connection) -> Client:
    return Client(connection.api_url, connection.api_key)


def console(*, stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # A log (not a terminal) gets wide lines, so that ids are never cut or wrapped.
    return Console(file=stream, width=None if stream.isatty() else 200, soft_wrap=not stream.isatty())


def plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def cell(value: Any, name: str = "") -> str:
    """A value as a person reads it, by the API's naming: `created` and `*_at` are Unix times (shown in
    UTC), `*_bytes` a size (every value of a `*_bytes` object too); an object is `key=value, ...`. --json
    keeps them raw."""
    value = plain(value)
    if value is None or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) and (name == "created" or name.endswith("_at")):
        return timestamp(value)
    if isinstance(value, int) and name.endswith("bytes"):
        return size(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        # The values of a `memory_bytes` object are sizes, whatever their own names.
        sizes = name.endswith("_bytes")
        return ", ".join(f"{key}={cell(item, name if sizes else key)}" for key, item in value.items())
    if isinstance(value, list):
        return ", ".join(cell(item, name) for item in value)
    return str(value)


def size(count: int) -> str:
    """Bytes in binary units, to one decimal: 435161817 is 415.0 MiB."""
    if count < 1024:
        return f"{count} B"
    scaled = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        scaled /= 1024
        if scaled < 1024 or unit == "TiB":
            break
    return f"{scaled:.1f} {unit}"


def timestamp(seconds: float | None = None) -> str:
    """UTC, to the second, as a CI log line starts."""
    moment = datetime.now(UTC) if seconds is None else datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
