"""The free space a disk-full error names: one wording for every writer (checkpoints, bundles, reports, logs)."""

from __future__ import annotations

import shutil
from pathlib import Path


def free_space(path: Path) -> str:
    """"12.3 MB free on the disk of PATH" (MB = 2**20 bytes, the space this account may use on the disk of ``path``
    or of its nearest existing folder above), or "free space on the disk of PATH unknown (reason)"."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError as exc:
        return f"free space on the disk of {path} unknown ({exc.strerror or exc})"
    return f"{free / 2**20:.1f} MB free on the disk of {path}"
