"""Outputs that appear whole or not at all.

Every stage writes into a temporary sibling and renames it into place only when it is complete, so an
interrupted run (Ctrl-C, kill -9) never leaves a file or folder that looks finished.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put straight back, at import, before threads
    os.umask(mask)
    return mask


UMASK = _read_umask()


def _mode_for(target: Path, default: int) -> int:
    """The permissions an output gets: those of the file it replaces, else what open() and mkdir() would give
    (mkstemp and mkdtemp make 0600 and 0700, private to the user, whatever the umask)."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        return default & ~UMASK


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside `target` (same suffix); it replaces `target` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", suffix="".join(target.suffixes), dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _mode_for(target, 0o666))
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `target`; it replaces `target` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A killed run (kill -9 skips the cleanup below) leaves its half-written folder, or, killed between the
    # two renames, the previous output as `.old-<pid>`; DVC runs one stage at a time per repository, so any
    # such leftover is stale.
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for stale in target.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, _mode_for(target, 0o777))
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_shared(target: Path, data: bytes) -> None:
    """`data` into `target` by temporary file and rename, for files several processes may write at once.

    Not atomic_path: its sweep of stale temporary files would delete a concurrent writer's. The temporary name,
    `.<name>.<random>.tmp`, is what feature_cache.prune removes once old (a killed writer's).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # a cache other users may share reads as the umask allows
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        # Concurrent writers of one key write identical bytes; the rename makes each appear whole.
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | Path, data: object) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(target: str | Path, header: tuple[str, ...], rows) -> None:
    """A CSV with `header`, then `rows`; Unix line ends."""
    with atomic_path(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
