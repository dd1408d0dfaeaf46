"""Signing secrets at rest: encrypted with the operator's key when one is set, else stored as they are.

Unlike API keys, which are hashed, a signing secret must be recoverable: the server signs each delivery
with it. With LORAQ_WEBHOOK_SECRETS_KEY set (a Fernet key: AES-128-CBC with an HMAC-SHA256 tag), a copy of
the database alone forges nothing; without it, whoever reads the database can sign as loraq.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

SEALED_PREFIX = "fernet:"


class UnsealError(Exception):
    """A sealed secret that the configured key cannot open (no key, or another one)."""


def seal(secret: str, key: str | None) -> str:
    """What to store for `secret`: its encryption under `key`, or the secret itself when there is no key."""
    if not key:
        return secret
    return SEALED_PREFIX + Fernet(key.encode()).encrypt(secret.encode()).decode()


def unseal(stored: str, key: str | None) -> str:
    """The secret back from what was stored; a secret stored before the key was set reads as it is."""
    if not stored.startswith(SEALED_PREFIX):
        return stored
    if not key:
        raise UnsealError("the signing secret is encrypted, but LORAQ_WEBHOOK_SECRETS_KEY is not set")
    try:
        return Fernet(key.encode()).decrypt(stored.removeprefix(SEALED_PREFIX).encode()).decode()
    except InvalidToken as wrong:
        raise UnsealError("the signing secret does not decrypt with LORAQ_WEBHOOK_SECRETS_KEY") from wrong
