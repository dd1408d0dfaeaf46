"""SmolLM2 converted once per checkout, not once per deployment: tests link it into each fresh home."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from pathlib import Path

from loraq.base_models.catalog import SMOLLM2_MODEL_NAME

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "var" / "test-cache"


@functools.cache
def cached_smollm2() -> Path:
    """The converted model under var/test-cache, keyed by the GGUF, the converter and transformers."""
    from worker.smollm2 import CONVERSION_VERSION, ensure_smollm2, find_gguf

    key = hashlib.sha256()
    key.update(find_gguf().sha256().encode())
    key.update(f"{CONVERSION_VERSION} {importlib.metadata.version('transformers')}".encode())
    return ensure_smollm2(CACHE / f"smollm2-{key.hexdigest()[:16]}")


def link_smollm2(models_dir: Path) -> Path:
    """Offer the cached model in `models_dir`, so the deployment's first start has nothing to convert."""
    models_dir.mkdir(parents=True, exist_ok=True)
    link = models_dir / SMOLLM2_MODEL_NAME
    if not link.exists():
        link.symlink_to(cached_smollm2(), target_is_directory=True)
    return link
