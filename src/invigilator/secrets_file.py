"""Local-only credentials for `invigilator serve` when none are configured.

Kept in the data directory in a file only its owner can read; never in the repository.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LocalSecrets:
    secret_key: str
    admin_key: str
    created: bool  # True when this call generated them (the only time the key is printed)
    path: Path


def load_or_create(data_dir: Path) -> LocalSecrets:
    path = data_dir / "local-secrets.json"
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise PermissionError(f"{path} must be readable by its owner only (chmod 600)")
        data = json.loads(path.read_text("utf-8"))
        return LocalSecrets(data["secret_key"], data["admin_key"], created=False, path=path)
    data_dir.mkdir(parents=True, exist_ok=True)
    data = {"secret_key": secrets.token_urlsafe(32), "admin_key": secrets.token_urlsafe(24)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    return LocalSecrets(data["secret_key"], data["admin_key"], created=True, path=path)
