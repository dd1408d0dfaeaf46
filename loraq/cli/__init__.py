"""The `loraq` command line, on loraq.client: needs only the client's dependencies (no torch, no server)."""

from loraq.cli.app import main, run

__all__ = ["main", "run"]
