"""Public ids: a type prefix and 24 random characters, never derived from user input."""

import secrets
import string
import time

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def unix_seconds() -> int:
    """Now, in whole seconds since the epoch: every created_at."""
    return int(time.time())
