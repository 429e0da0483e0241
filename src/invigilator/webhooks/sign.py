"""Webhook signatures as the Standard Webhooks specification has them (standardwebhooks.com):

    webhook-id:        the event id (the body's `id`; the same for every attempt)
    webhook-timestamp: unix seconds of this attempt
    webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>"> [v1,<…> …]

The key is the base64 after `whsec_`. Signing goes through the `standardwebhooks` package, the
one receivers verify with, so the two cannot drift apart. Several secrets (a rotation under
way) give several signatures, space-separated: a receiver holding either secret accepts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook

ID, TIMESTAMP, SIGNATURE = "webhook-id", "webhook-timestamp", "webhook-signature"


def headers(
    secrets: Sequence[str], event_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The three headers for `body`, signed now (or at `timestamp`) with each of `secrets`."""
    if not secrets:
        raise ValueError("no secret to sign with")
    t = int(time.time()) if timestamp is None else timestamp
    at = datetime.fromtimestamp(t, UTC)
    text = body.decode()
    signatures = [Webhook(secret).sign(event_id, at, text) for secret in secrets]
    return {ID: event_id, TIMESTAMP: str(t), SIGNATURE: " ".join(signatures)}
