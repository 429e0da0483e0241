"""What a running app holds: settings, the service and the keys (on `app.state.runtime`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import AsyncConnectionPool

from invigilator.analytics import RecentSummaries
from invigilator.config import Settings
from invigilator.domain import Policy
from invigilator.service import Sessions


@dataclass
class Runtime:
    settings: Settings
    sessions: Sessions
    secret_key: str
    admin_keys: list[bytes]
    pool: AsyncConnectionPool[Any]  # the main pool: analytics, webhooks, readiness, metrics
    summaries: RecentSummaries = field(default_factory=RecentSummaries)  # the charts' source

    @property
    def policy(self) -> Policy:
        return self.sessions.policy
