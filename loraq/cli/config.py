"""Where the command finds its server and key: flags, then LORAQ_API_URL / LORAQ_API_KEY, then a file."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_API_URL = "http://127.0.0.1:8000"
CONFIG_KEYS = frozenset({"api_url", "api_key"})


class ConfigError(ValueError):
    """A configuration the command cannot use (exit 3)."""


@dataclass(frozen=True)
class Connection:
    api_url: str
    api_key: str = field(repr=False)  # never shown: not in errors, --json or a repr


def config_path(env: Mapping[str, str]) -> Path:
    """$LORAQ_CONFIG, else $XDG_CONFIG_HOME/loraq/config.toml (~/.config by default)."""
    if env.get("LORAQ_CONFIG"):
        return Path(env["LORAQ_CONFIG"]).expanduser()
    base = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "loraq" / "config.toml"


def read_config(path: Path, *, required: bool) -> dict[str, str]:
    if not path.is_file():
        if required:
            raise ConfigError(f"config file {path} does not exist")
        return {}
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"config file {path}: {error}") from error
    unknown = sorted(set(values) - CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"config file {path}: unknown key {unknown[0]!r} (known: api_url, api_key)")
    if not all(isinstance(value, str) for value in values.values()):
        raise ConfigError(f"config file {path}: api_url and api_key must be strings")
    return dict(values)


def resolve(api_url: str | None, api_key: str | None, env: Mapping[str, str] = os.environ) -> Connection:
    """The first of flag, environment and config file that gives each value."""
    file = read_config(config_path(env), required=bool(env.get("LORAQ_CONFIG")))
    url = api_url or env.get("LORAQ_API_URL") or file.get("api_url") or DEFAULT_API_URL
    key = api_key or env.get("LORAQ_API_KEY") or file.get("api_key")
    if not key:
        raise ConfigError(
            "no API key: pass --api-key, set LORAQ_API_KEY, or put api_key in " + str(config_path(env))
        )
    return Connection(api_url=url.rstrip("/"), api_key=key)
