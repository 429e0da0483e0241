"""Endpoint secrets: spec-valid `whsec_` secrets, and their encryption at rest.

A Standard Webhooks secret is `whsec_` + standard base64 of 24 to 64 random bytes; receivers'
libraries base64-decode what follows the prefix, so anything else verifies differently (or not
at all) in one library or another.

Staff-registered secrets are needed in clear to sign, so they cannot be hashed; they are
encrypted with Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`) under keys that live in
the service's environment only, so a database dump or a backup alone does not yield them:

- `INVIGILATOR_WEBHOOK_ENCRYPTION_KEY`: comma-separated Fernet keys; the first encrypts, all
  decrypt (rotation: put the new key first, restart, and every secret is re-encrypted with it).
- Always also a key derived from `INVIGILATOR_SECRET_KEY` (HKDF-SHA256): the default when no
  encryption key is set, and a decryption fallback afterwards, so setting one later loses nothing.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from invigilator.config import Settings

PREFIX = "whsec_"
MIN_BYTES, MAX_BYTES = 24, 64
_DERIVATION_INFO = b"invigilator webhook endpoint secrets v1"


def new_secret() -> str:
    """A fresh spec-valid secret: 32 random bytes."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_problem(secret: str) -> str | None:
    """Why `secret` is not a spec-valid signing secret (None when it is). Never quotes it."""
    if not secret.startswith(PREFIX):
        return "must start with whsec_"
    try:
        raw = base64.b64decode(secret[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return "must be whsec_ followed by standard base64 (A-Z a-z 0-9 + /, padded with =)"
    if not MIN_BYTES <= len(raw) <= MAX_BYTES:
        return f"must encode {MIN_BYTES} to {MAX_BYTES} bytes (it encodes {len(raw)})"
    return None


class SecretUnreadable(Exception):
    """A stored secret that none of the configured keys decrypts."""


def derived_key(secret_key: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_DERIVATION_INFO)
    return base64.urlsafe_b64encode(hkdf.derive(secret_key.encode()))


def parse_keys(values: Sequence[str]) -> list[bytes]:
    """The configured Fernet keys; ValueError (without the key) for one that is not."""
    keys = []
    for position, value in enumerate(values, 1):
        try:
            Fernet(value.encode())
        except (ValueError, binascii.Error):
            raise ValueError(
                f"INVIGILATOR_WEBHOOK_ENCRYPTION_KEY: key {position} is not a Fernet key "
                "(32 bytes, URL-safe base64; make one with `python -c 'from cryptography.fernet "
                "import Fernet; print(Fernet.generate_key().decode())'`)"
            ) from None
        keys.append(value.encode())
    return keys


class SecretBox:
    """Encrypts and decrypts endpoint secrets; `keys[0]` encrypts."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one key")
        self._primary = Fernet(keys[0])
        self._all = MultiFernet([Fernet(k) for k in keys])

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        configured = parse_keys([k.get_secret_value() for k in settings.webhook_encryption_key])
        fallback = (
            [derived_key(settings.secret_key.get_secret_value())] if settings.secret_key else []
        )
        return cls([*configured, *fallback])

    def encrypt(self, secret: str) -> str:
        return self._primary.encrypt(secret.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._all.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable from None

    def current(self, token: str) -> bool:
        """Encrypted with the key that encrypts now (else `reseal` would re-encrypt it)."""
        try:
            self._primary.decrypt(token.encode())
        except InvalidToken:
            return False
        return True

    def reseal(self, token: str) -> str:
        """The same secret under the current key."""
        try:
            return self._all.rotate(token.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable from None
