"""Keys for the models benchmarks cache between runs: a model made by other code or settings is never
reused."""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cache_key(phases: tuple[str, ...], **settings: object) -> str:
    """12 hex digits of sha256 over the source of components/common and the given phases, and the settings."""
    digest = hashlib.sha256()
    for folder in ("common", *phases):
        for path in sorted((ROOT / "components" / folder).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    digest.update(repr(sorted(settings.items())).encode())
    return digest.hexdigest()[:12]
