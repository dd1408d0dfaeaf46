"""Reading request bodies: JSON whose errors name their field; multipart uploads read once, as they arrive."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import anyio.from_thread
from fastapi import Request, Response
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from api.routing import OneHopRoute
from loraq.core.errors import InvalidRequest

# --- JSON --------------------------------------------------------------------------------------------------


class TooLargeInteger:
    """Stands in for a JSON integer too long for Python to read, so that validation names its field."""

    def __repr__(self) -> str:
        return "<integer too large>"


def _parse_int(digits: str) -> int | TooLargeInteger:
    try:
        return int(digits)
    except ValueError:  # past sys.get_int_max_str_digits()
        return TooLargeInteger()


def parse_json(raw: str | bytes) -> Any:
    """json.loads, but an integer too large to read becomes a TooLargeInteger instead of failing the body."""
    return json.loads(raw, parse_int=_parse_int)


class _JSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class JSONBodyRoute(OneHopRoute):
    """A route whose JSON body is parsed by parse_json."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            return await handler(_JSONRequest(request.scope, request.receive))

        return handle


# --- multipart ---------------------------------------------------------------------------------------------


def request_chunks(request: Request) -> Iterator[bytes]:
    """The body as it arrives, for a sync route (run in a worker thread) to read chunk by chunk."""
    stream: AsyncIterator[bytes] = request.stream()

    async def next_chunk() -> bytes | None:
        return await anext(stream, None)

    while (chunk := anyio.from_thread.run(next_chunk)) is not None:
        if chunk:
            yield chunk


# Past these, a form is not one that a client of this API sends: refuse it rather than hold it.
MAX_FIELD_BYTES = 1024
MAX_PARTS = 16


class MultipartForm:
    """A multipart/form-data body read once, as it arrives: small text fields, and one file part
    whose bytes are handed on (`file_chunks`) without being kept.

    Fields may come before or after the file; `fields_before_file` has those before it, `finish`
    reads the rest. Every mistake is an InvalidRequest naming the field.
    """

    def __init__(
        self, body: Iterator[bytes], content_type: str | None, *, file_field: str, text_fields: frozenset[str]
    ) -> None:
        self._body = body
        self.file_field = file_field
        self.text_fields = text_fields
        media_type, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if media_type != b"multipart/form-data" or not boundary:
            raise InvalidRequest(
                f"send multipart/form-data with the fields {self._field_list()}", param=file_field
            )
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._on_part_begin,
                    "on_header_field": self._on_header_field,
                    "on_header_value": self._on_header_value,
                    "on_header_end": self._on_header_end,
                    "on_headers_finished": self._on_headers_finished,
                    "on_part_data": self._on_part_data,
                    "on_part_end": self._on_part_end,
                },
            )
        except FormParserError as error:
            raise InvalidRequest(f"bad multipart boundary: {error}", param=file_field) from error
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self._parts = 0
        self._headers: dict[str, str] = {}
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._part: str | None = None  # the field the current part is for
        self._value = bytearray()
        self._file_data: list[bytes] = []  # file bytes parsed but not yet handed on
        self._file_state = "ahead"  # ahead -> open -> read
        self._body_ended = False

    def fields_before_file(self) -> dict[str, str]:
        """Read up to the file's first byte; the text fields sent before it."""
        while self._file_state == "ahead":
            if not self._read():
                raise InvalidRequest(
                    f"{self.file_field}: required: send the dataset as a file part named '{self.file_field}'",
                    param=self.file_field,
                )
        return dict(self.fields)

    def file_chunks(self) -> Iterator[bytes]:
        """The file's bytes, once, as they arrive."""
        self.fields_before_file()
        while True:
            while self._file_data:
                yield self._file_data.pop(0)
            if self._file_state == "read":
                return
            if not self._read():
                raise InvalidRequest(
                    f"{self.file_field}: the body ended inside the file", param=self.file_field
                )

    def finish(self) -> dict[str, str]:
        """Read to the end of the body (the file must have been read); every text field, each required."""
        assert self._file_state == "read", "read file_chunks() first"
        while self._read():
            pass
        if self._parser.state != MultipartState.END:
            raise InvalidRequest(
                "the multipart body ended before its closing boundary", param=self.file_field
            )
        if missing := sorted(self.text_fields - self.fields.keys()):
            raise InvalidRequest(
                f"{missing[0]}: required: send a '{missing[0]}' form field", param=missing[0]
            )
        return dict(self.fields)

    def _field_list(self) -> str:
        return ", ".join(f"'{name}'" for name in sorted(self.text_fields)) + f" and '{self.file_field}'"

    def _read(self) -> bool:
        """Parse the next chunk of the body; False once the body has ended."""
        if self._body_ended:
            return False
        chunk = next(self._body, None)
        if chunk is None:
            self._body_ended = True
            return False
        try:
            self._parser.write(chunk)
        except FormParserError as error:
            raise InvalidRequest(f"malformed multipart body: {error}", param=self.file_field) from error
        return True

    # The parser's callbacks, called from within _parser.write.

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise InvalidRequest(f"more than {MAX_PARTS} form parts; send {self._field_list()}")
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._header_name.decode("latin-1").lower()] = self._header_value.decode("latin-1")
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition"))
        name = options.get(b"name", b"").decode("utf-8", errors="replace")
        filename = options.get(b"filename")
        if name == self.file_field:
            if filename is None:
                raise InvalidRequest(
                    f"{name}: must be a file (a form part with a filename), not a text field", param=name
                )
            if self._file_state != "ahead":
                raise InvalidRequest(f"{name}: send one file", param=name)
            self.filename = filename.decode("utf-8", errors="replace")
            self._file_state = "open"
        elif name in self.text_fields:
            if filename is not None:
                raise InvalidRequest(f"{name}: must be a text field, not a file", param=name)
            if name in self.fields:
                raise InvalidRequest(f"{name}: send it once", param=name)
            self._value.clear()
        else:
            raise InvalidRequest(
                f"unknown form field '{name}': send {self._field_list()}", param=name or None
            )
        self._part = name

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part == self.file_field:
            self._file_data.append(data[start:end])
            return
        self._value += data[start:end]
        if len(self._value) > MAX_FIELD_BYTES:
            raise InvalidRequest(f"{self._part}: longer than {MAX_FIELD_BYTES} bytes", param=self._part)

    def _on_part_end(self) -> None:
        if self._part == self.file_field:
            self._file_state = "read"
        elif self._part is not None:
            try:
                self.fields[self._part] = self._value.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InvalidRequest(f"{self._part}: not valid UTF-8", param=self._part) from error
        self._part = None
