"""/v1/files through the client: upload (retry-safe), list, read, and download checked against its sha256."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import httpx

from loraq.client.errors import ChecksumMismatch
from loraq.client.http import Http
from loraq.client.objects import FileObject, Page

FINE_TUNE = "fine-tune"


class Files:
    def __init__(self, http: Http) -> None:
        self._http = http

    def upload(
        self, path: Path | str, *, purpose: str = FINE_TUNE, idempotency_key: str | None = None
    ) -> FileObject:
        """Upload a dataset; a retry sends the same Idempotency-Key, so it never stores the file twice."""
        path = Path(path)
        key = idempotency_key or f"loraq-upload-{uuid.uuid4()}"

        def send(http: httpx.Client) -> httpx.Response:
            with path.open("rb") as file:  # opened again for each attempt: a retry sends every byte
                return http.post(
                    "/v1/files",
                    data={"purpose": purpose},
                    files={"file": (path.name, file)},
                    headers={"Idempotency-Key": key},
                )

        response = self._http.call(send, replayable=True, idempotency_key=key)
        return FileObject.model_validate(response.json())

    def list(
        self, *, purpose: str | None = None, limit: int | None = None, after: str | None = None
    ) -> Page[FileObject]:
        answer = self._http.get("/v1/files", purpose=purpose, limit=limit, after=after)
        return Page[FileObject].model_validate(answer)

    def get(self, file_id: str) -> FileObject:
        return FileObject.model_validate(self._http.get(f"/v1/files/{file_id}"))

    def delete(self, file_id: str) -> None:
        self._http.delete(f"/v1/files/{file_id}")

    def download(self, file_id: str, dest: Path | str) -> Path:
        """Write a file's content to dest, and check it against the file's sha256 before it lands there."""
        dest = Path(dest)
        expected = self.get(file_id).sha256
        partial = dest.with_name(f".{dest.name}.part")
        digest = hashlib.sha256()

        def send(http: httpx.Client) -> httpx.Response:
            nonlocal digest
            digest = hashlib.sha256()  # a retry starts again from the first byte
            with http.stream("GET", f"/v1/files/{file_id}/content") as response:
                if response.status_code < 400:
                    with partial.open("wb") as out:
                        for chunk in response.iter_bytes():
                            digest.update(chunk)
                            out.write(chunk)
                else:
                    response.read()
                return response

        try:
            self._http.call(send, replayable=True)
            if expected is not None and digest.hexdigest() != expected:
                raise ChecksumMismatch(
                    f"file {file_id}: downloaded bytes hash to {digest.hexdigest()}, the API says {expected}"
                )
            os.replace(partial, dest)
        finally:
            partial.unlink(missing_ok=True)
        return dest
