"""The setup guide (docs/setup-guide.md, a verbatim copy of the seed) as test data: its SQL
blocks are run exactly as written."""

from __future__ import annotations

import re
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "setup-guide.md"


def sql_blocks(section_title: str) -> list[str]:
    """The ```sql blocks of the guide section whose heading contains `section_title`."""
    text = GUIDE.read_text("utf-8")
    sections = re.split(r"^## ", text, flags=re.MULTILINE)
    (section,) = [s for s in sections if section_title in s.splitlines()[0]]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.DOTALL)


def statements(block: str) -> list[str]:
    """Split a block into statements, dropping comment-only lines and psql meta-commands."""
    lines = [
        line
        for line in block.splitlines()
        if line.strip() and not line.strip().startswith("--") and not line.startswith("\\")
    ]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
