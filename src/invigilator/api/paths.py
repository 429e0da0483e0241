"""Paths more than one part of the HTTP layer must agree on."""

from __future__ import annotations

#: The heartbeat: answered by its route, and, when ordinary, by the fast path in front of the
#: middleware stack; metrics, logs and rate limits treat it apart (most of the traffic).
HEARTBEAT_PATH = "/api/v1/sessions/{candidate_id}/heartbeat"
