"""`loraq files`: upload a dataset, list, show, download."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loraq.cli.common import with_output
from loraq.cli.output import Output

app = typer.Typer(help="Upload and fetch files: datasets and result bundles.", no_args_is_help=True)

FileId = Annotated[str, typer.Argument(help="The file's id (file-...).", show_default=False)]
FIELDS = ("id", "filename", "purpose", "bytes", "examples", "format", "status", "sha256", "created_at")
COLUMNS = ("id", "filename", "purpose", "bytes", "examples", "created_at")


@app.command()
@with_output
def upload(
    output: Output,
    path: Annotated[
        Path, typer.Argument(help="A JSONL dataset.", exists=True, dir_okay=False, show_default=False)
    ],
    purpose: Annotated[str, typer.Option(help="The file's purpose.")] = "fine-tune",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the new file's id.")] = False,
) -> None:
    """Upload a dataset; it is validated as it streams in (a retry never stores it twice)."""
    with output.client() as client:
        uploaded = client.files.upload(path, purpose=purpose)
    if quiet and not output.json:
        output.out.print(uploaded.id)
    else:
        output.item(uploaded, FIELDS)


@app.command("list")
@with_output
def list_files(
    output: Output,
    purpose: Annotated[str | None, typer.Option(help="Only this purpose.", show_default=False)] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many.", show_default=False)] = None,
) -> None:
    """List this project's files, newest first."""
    with output.client() as client:
        page = client.files.list(purpose=purpose, limit=limit)
    output.table(page.data, COLUMNS)


@app.command()
@with_output
def get(output: Output, file_id: FileId) -> None:
    """Show one file."""
    with output.client() as client:
        output.item(client.files.get(file_id), FIELDS)


@app.command()
@with_output
def download(
    output: Output,
    file_id: FileId,
    out: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write it (default: its filename).", show_default=False),
    ] = None,
) -> None:
    """Download a file's content, checked against its sha256."""
    with output.client() as client:
        dest = out or Path(Path(client.files.get(file_id).filename).name or file_id)
        client.files.download(file_id, dest)
    if output.json:
        output.document({"id": file_id, "path": str(dest)})
    else:
        output.out.print(f"{file_id} -> {dest}", highlight=False)
