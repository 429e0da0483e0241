"""Which database this process uses: DATABASE_URL when given, else the embedded one."""

from __future__ import annotations

from dataclasses import dataclass

from invigilator.config import Settings
from invigilator.db.embedded import start_embedded
from invigilator.db.url import mask_url


@dataclass(frozen=True)
class Database:
    url: str
    embedded: bool

    @property
    def label(self) -> str:
        """What to print: the kind of database and its masked address."""
        kind = "embedded PostgreSQL" if self.embedded else "PostgreSQL"
        return f"{kind} at {mask_url(self.url)}"


def choose_database(settings: Settings, override: str | None = None) -> Database:
    if override:
        return Database(override, embedded=False)
    if settings.database_url is not None:
        return Database(settings.database_url.get_secret_value(), embedded=False)
    return Database(start_embedded(settings.data_dir), embedded=True)
