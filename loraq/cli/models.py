"""`loraq models`: the base models the server offers and the adapters this project trained."""

from __future__ import annotations

import typer

from loraq.cli.common import with_output
from loraq.cli.output import Output

app = typer.Typer(help="Base models and trained adapters.", no_args_is_help=True)


@app.command("list")
@with_output
def list_models(output: Output) -> None:
    """List the base models (to train on) and this project's adapters (ft:...)."""
    with output.client() as client:
        output.table(client.models.list().data, ("id", "kind", "owned_by", "created"))
