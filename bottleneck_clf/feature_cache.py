"""A content-addressed store of per-image VGG16 features, so no image is encoded twice with the same settings.

Key: the sha256 of the image file's bytes, inside a folder named by a fingerprint of everything that changes
a feature (a digest of the code that makes it, weights digest, image size, interpolation, pooling, precision,
library versions, the machine that computes: features.fingerprint and features.made_on). Renaming or moving
a file, or changing the split, keeps its entry; one changed byte, one changed setting, one edited line of
that code or another machine is a miss.

It lives outside DVC on purpose (README, "Feature cache"): its content depends on the history of runs, not
only on the current inputs, so as a DVC output it would make dvc.lock depend on that history.

Several processes may use one cache at once (clones, queued experiments, a prune): entries appear by rename,
a reader tolerates an entry vanishing, prune never removes a folder that is not empty or locked, and a writer
recreates a folder that prune removed under it. A process encodes its misses holding the fingerprint's lock
(`FeatureCache.encoding`), so two that need the same new images at once encode them once: the second waits,
then finds them in the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bottleneck_clf.atomic import write_shared
from bottleneck_clf.paths import cache_dir

try:
    import fcntl
except ImportError:  # not POSIX: no lock; two processes may then encode the same image, into identical bytes
    fcntl = None

FINGERPRINT_FILE = "fingerprint.json"
LOCK_FILE = ".lock"
ENTRY_NAME = re.compile(r"[0-9a-f]{64}\.npy")  # an image's sha256: FeatureCache.path
KEY_NAME = re.compile(r"[0-9a-f]{20}")  # fingerprint_key
# A writer finishes an entry in milliseconds; a temporary file this old belongs to a killed process.
STALE_TMP_SECONDS = 3600


def feature_cache_dir() -> Path:
    """BOTTLENECK_FEATURE_CACHE, else `features/` in the user cache, shared by clones and DVC experiments."""
    override = os.environ.get("BOTTLENECK_FEATURE_CACHE")
    return Path(override) if override else cache_dir() / "features"


def fingerprint_key(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:20]


class FeatureCache:
    """One fingerprint's entries: `<root>/<key>/<sha[:2]>/<sha>.npy`, each written atomically.

    A cache that cannot be written (read-only, full disk, not a folder) warns once and turns into a read-only
    one: the run goes on and computes what it cannot store.
    """

    def __init__(self, root: str | Path, fingerprint: dict):
        self.fingerprint = fingerprint
        self.key = fingerprint_key(fingerprint)
        self.directory = Path(root) / self.key
        self.writable = True
        try:
            self._make_directory()
        except OSError as exc:
            self._give_up_writing(exc)

    def path(self, sha256: str) -> Path:
        return self.directory / sha256[:2] / f"{sha256}.npy"

    def get(self, sha256: str, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray | None:
        """The entry, or None when it is missing, damaged or not of `shape` and `dtype`."""
        path = self.path(sha256)
        try:
            value = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            # Missing, or damaged (disk full, foreign file): a miss; the next put replaces it.
            return None
        if value.shape != tuple(shape) or value.dtype != np.dtype(dtype):
            # Assigned into the output it would broadcast silently; recomputing is the only safe answer.
            return None
        # The pruning age counts from the last use, not the first write. A prune may have removed the entry
        # since np.load read it (or the cache is read-only): the value in hand is still right.
        with contextlib.suppress(OSError):
            os.utime(path)
        return value

    def put(self, sha256: str, value: np.ndarray) -> None:
        if not self.writable:
            return
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(value), allow_pickle=False)
        path = self.path(sha256)
        try:
            try:
                self._write_in_place(path, buffer.getvalue())
            except FileNotFoundError:
                # A concurrent prune removed the (then empty) folders between our check and our write.
                self._write_in_place(path, buffer.getvalue())
        except OSError as exc:
            self._give_up_writing(exc)

    @contextlib.contextmanager
    def encoding(self) -> Iterator[None]:
        """Hold this fingerprint's lock (an flock on `<folder>/.lock`) while encoding misses.

        Another process that needs the same new images waits here, then finds them in the cache (re-check
        after entering). The kernel drops the lock when its holder dies, so a killed run blocks no one. A cache
        that cannot be written is not locked: there is nothing to share.
        """
        fd = self._lock() if self.writable and fcntl is not None else None
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)  # releases the lock

    def _lock(self) -> int | None:
        path = self.directory / LOCK_FILE
        while True:
            try:
                self._make_directory()  # (again, if prune removed it)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileNotFoundError:
                continue  # a concurrent prune removed the folder between the two calls
            except OSError as exc:
                self._give_up_writing(exc)
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"feature cache {self.directory}: another process is encoding with these settings; waiting "
                      "for it, then reading its features", file=sys.stderr, flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
            # Prune may have removed the lock file while we waited: a lock on a removed file excludes no one.
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    return fd
            os.close(fd)

    def _write_in_place(self, path: Path, data: bytes) -> None:
        if not path.parent.is_dir():
            self._make_directory()  # (again, if prune removed it since)
            path.parent.mkdir(exist_ok=True)
        write_shared(path, data)

    def _make_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        description = self.directory / FINGERPRINT_FILE
        if not description.exists():
            write_shared(description, json.dumps(self.fingerprint, indent=2, sort_keys=True).encode())

    def _give_up_writing(self, exc: OSError) -> None:
        self.writable = False
        print(f"warning: feature cache {self.directory}: cannot write ({exc}); this run goes on without storing "
              "features. Free space, or point BOTTLENECK_FEATURE_CACHE at a writable folder.", file=sys.stderr)


class Pruned(NamedTuple):
    entries: int  # .npy entries removed
    leftovers: int  # temporary files of killed writers removed
    freed: int  # bytes


def prune(root: str | Path, older_than_days: float | None = None) -> Pruned:
    """Delete entries unused for `older_than_days` (all entries when None).

    Temporary files older than STALE_TMP_SECONDS (killed writers) go too; younger ones may be a live writer's.
    Safe beside running readers and writers: files are unlinked one by one (a reader already holding an entry
    keeps its value) and folders are removed only when empty (os.rmdir fails on a folder being written into)
    and not locked by a process encoding into them.
    """
    root = Path(root)
    now = time.time()
    cutoff = None if older_than_days is None else now - older_than_days * 86400
    entries = leftovers = freed = 0
    if not root.is_dir():
        return Pruned(0, 0, 0)
    # Only what this cache writes: BOTTLENECK_FEATURE_CACHE may point at a folder that holds other files too.
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and is_cache_folder(p)):
        try:
            for path in folder.glob("??/*.npy"):
                if ENTRY_NAME.fullmatch(path.name) and path.name.startswith(path.parent.name):
                    size = _remove_if_older(path, cutoff)
                    entries, freed = entries + (size is not None), freed + (size or 0)
            for path in [*folder.glob(".*.tmp"), *folder.glob("??/.*.tmp")]:
                size = _remove_if_older(path, now - STALE_TMP_SECONDS)
                leftovers, freed = leftovers + (size is not None), freed + (size or 0)
            _remove_if_empty(folder)
        except FileNotFoundError:
            continue  # a concurrent prune removed the folder under us
    return Pruned(entries, leftovers, freed)


def is_cache_folder(folder: Path) -> bool:
    """A fingerprint's folder: named by fingerprint_key, or described by its fingerprint.json (a folder whose
    description a killed writer never finished still has the name)."""
    return bool(KEY_NAME.fullmatch(folder.name)) or (folder / FINGERPRINT_FILE).is_file()


def _remove_if_older(path: Path, cutoff: float | None) -> int | None:
    """Unlink `path` if last modified before `cutoff` (always when None); its size, or None if kept or gone."""
    try:
        stat = path.stat()
        if cutoff is not None and stat.st_mtime >= cutoff:
            return None
        path.unlink()
    except FileNotFoundError:
        return None  # a concurrent prune was first
    return stat.st_size


def _remove_if_empty(folder: Path) -> None:
    """Remove the shard folders, then the fingerprint folder, each only if nothing but its description and an
    unheld lock file is left."""
    for shard in folder.iterdir():
        if shard.is_dir():
            _rmdir(shard)
    if any(p.name not in (FINGERPRINT_FILE, LOCK_FILE) for p in folder.iterdir()):
        return
    lock = folder / LOCK_FILE
    fd = None
    if fcntl is not None and lock.exists():
        try:
            fd = os.open(lock, os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a process is encoding into this folder (or the file just went)
            if fd is not None:
                os.close(fd)
            return
    try:
        lock.unlink(missing_ok=True)  # a waiter that locked it sees the file gone and locks a new one
        (folder / FINGERPRINT_FILE).unlink(missing_ok=True)
        # A writer that started just now recreates the folder and its description (FeatureCache._write_in_place).
        _rmdir(folder)
    finally:
        if fd is not None:
            os.close(fd)


def _rmdir(folder: Path) -> None:
    # Not empty (a writer is filling it) or already gone: either way it is not ours to remove.
    with contextlib.suppress(OSError):
        folder.rmdir()
