"""The `loraq` command: the API's files, jobs and models from a shell or a CI pipeline."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence

import typer

from loraq.cli import files, jobs, models
from loraq.cli.common import Invocation
from loraq.cli.config import ConfigError
from loraq.cli.exits import EXIT_CODES_HELP, ExitCode
from loraq.cli.jobspec import SpecError
from loraq.cli.output import console
from loraq.client import APIError, InvalidRequestError, LoraqClientError, UnreachableError, WaitTimeout

app = typer.Typer(
    name="loraq",
    help="loraq's REST API from the command line: upload data, train, follow, gate, download. "
    "Every command takes --api-url, --api-key and --json.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(files.app, name="files")
app.add_typer(jobs.app, name="jobs")
app.add_typer(models.app, name="models")


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line; its exit code (see EXIT_CODES_HELP)."""
    try:
        result = app(args=list(argv) if argv is not None else None, prog_name="loraq", standalone_mode=False)
    except typer.Abort:
        return 130
    except (ConfigError, SpecError) as error:
        error_shape = {"message": str(error), "type": "invalid_request_error"}
        return _fail(str(error), ExitCode.INVALID_REQUEST, error_shape)
    except InvalidRequestError as error:
        return _fail(str(error), ExitCode.INVALID_REQUEST, error.as_dict())
    except APIError as error:  # a 5xx the retries did not outlast
        return _fail(str(error), ExitCode.UNREACHABLE, error.as_dict())
    except (UnreachableError, WaitTimeout) as error:
        kind = "timeout" if isinstance(error, WaitTimeout) else "unreachable"
        return _fail(str(error), ExitCode.UNREACHABLE, {"message": str(error), "type": kind})
    except LoraqClientError as error:
        return _fail(str(error), ExitCode.FAILED, {"message": str(error), "type": "error"})
    except Exception as error:
        if not _is_usage_error(error):
            raise
        error.show()  # type: ignore[attr-defined]
        return ExitCode.INVALID_REQUEST
    return int(result) if isinstance(result, int) else ExitCode.SUCCEEDED


def _is_usage_error(error: Exception) -> bool:
    """A bad flag or argument (exit 3, not click's 2, which means cancelled here). typer carries its own
    copy of click, so its ClickException is known by what it has, not by its class."""
    return callable(getattr(error, "show", None)) and isinstance(getattr(error, "exit_code", None), int)


def _fail(message: str, code: ExitCode, error: Mapping[str, object]) -> int:
    console(stderr=True).print(f"loraq: error: {message}", highlight=False, markup=False)
    if Invocation.json:
        sys.stdout.write(json.dumps({"error": error, "exit_code": int(code)}, indent=2) + "\n")
    return code


def main() -> None:
    sys.exit(run())
