"""The options every command takes: where the server is, its key, and --json."""

from __future__ import annotations

from typing import Annotated

import typer

from loraq.cli.options import shared_options
from loraq.cli.output import Output

ApiUrl = Annotated[
    str | None,
    typer.Option(
        "--api-url",
        help="The server, e.g. http://127.0.0.1:8000. Else LORAQ_API_URL, else the config file.",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        help="The API key (never printed). Else LORAQ_API_KEY, else the config file.",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of text.")]


class Invocation:
    """What the error handler needs to know about the command that ran: whether it promised JSON."""

    json = False


def _output(api_url: str | None, api_key: str | None, json_output: bool) -> Output:
    Invocation.json = json_output
    return Output(api_url=api_url, api_key=api_key, json=json_output)


with_output = shared_options(
    "output", {"api_url": (ApiUrl, None), "api_key": (ApiKey, None), "json_output": (Json, False)}, _output
)
