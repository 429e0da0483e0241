"""What a running app holds: settings, the store, keys and limits (on `app.state.runtime`)."""

from __future__ import annotations

from dataclasses import dataclass

from invigilator.config import Settings
from invigilator.domain import Policy
from invigilator.heartbeats import HeartbeatBatcher
from invigilator.store import SessionStore
from invigilator.validation import Limits


@dataclass
class Runtime:
    settings: Settings
    store: SessionStore
    secret_key: str
    admin_keys: list[bytes]
    heartbeats: HeartbeatBatcher

    @property
    def policy(self) -> Policy:
        return self.store.policy

    @property
    def limits(self) -> Limits:
        s = self.settings
        return Limits(
            max_answers_bytes=s.max_answers_bytes,
            max_answer_bytes=s.max_answer_bytes,
            max_answers_per_save=s.max_answers_per_save,
            max_sections=s.max_sections,
            max_json_depth=s.max_json_depth,
        )
