"""A content-addressed store of per-image VGG16 features, so no image is encoded twice with the same settings.

Key: the sha256 of the image file's bytes, inside a folder named by a fingerprint of everything that changes
a feature (weights digest, architecture, image size, interpolation, preprocessing, pooling, precision,
batch size, library versions). Renaming or moving a file, or changing the split, keeps its entry; one
changed byte or one changed setting is a miss.

It lives outside DVC on purpose (README, "Feature cache"): its content depends on the history of runs, not
only on the current inputs, so as a DVC output it would make dvc.lock depend on that history.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bottleneck_clf.weight_sources import cache_dir

FINGERPRINT_FILE = "fingerprint.json"


def feature_cache_dir() -> Path:
    """BOTTLENECK_FEATURE_CACHE, else `features/` in the user cache, shared by clones and DVC experiments."""
    override = os.environ.get("BOTTLENECK_FEATURE_CACHE")
    return Path(override) if override else cache_dir() / "features"


def fingerprint_key(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:20]


class FeatureCache:
    """One fingerprint's entries: `<root>/<key>/<sha[:2]>/<sha>.npy`, each written atomically."""

    def __init__(self, root: str | Path, fingerprint: dict):
        self.fingerprint = fingerprint
        self.key = fingerprint_key(fingerprint)
        self.directory = Path(root) / self.key
        self.directory.mkdir(parents=True, exist_ok=True)
        description = self.directory / FINGERPRINT_FILE
        if not description.exists():
            self._write(description, json.dumps(fingerprint, indent=2, sort_keys=True).encode())

    def path(self, sha256: str) -> Path:
        return self.directory / sha256[:2] / f"{sha256}.npy"

    def get(self, sha256: str) -> np.ndarray | None:
        path = self.path(sha256)
        try:
            value = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (ValueError, OSError, EOFError):
            # A damaged entry (disk full, foreign file) is a miss; the next put replaces it.
            return None
        os.utime(path)  # the pruning age counts from the last use, not the first write
        return value

    def put(self, sha256: str, value: np.ndarray) -> None:
        path = self.path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, np.ascontiguousarray(value), allow_pickle=False)
            # Concurrent writers of one key write identical bytes; the rename makes each appear whole.
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _write(self, target: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)


def prune(root: str | Path, older_than_days: float | None = None, keep: set[str] | None = None) -> tuple[int, int]:
    """Delete entries unused for `older_than_days` (all entries when None), sparing fingerprints in `keep`.

    Returns (files removed, bytes freed).
    """
    root = Path(root)
    keep = keep or set()
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    removed = freed = 0
    if not root.exists():
        return 0, 0
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name in keep:
            continue
        for entry in folder.rglob("*.npy"):
            stat = entry.stat()
            if cutoff is None or stat.st_mtime < cutoff:
                entry.unlink(missing_ok=True)
                removed += 1
                freed += stat.st_size
        if not any(folder.rglob("*.npy")):
            shutil.rmtree(folder, ignore_errors=True)
    return removed, freed
