"""Small files written whole: readers in other processes see the old content or the new, never a part."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Write beside `path` under a name of this write's own, then rename over it (atomic on one
    filesystem). A writer killed midway leaves a `<name>.<hex>.partial` file and `path` untouched."""
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
