"""Outputs that appear whole or not at all.

Every stage writes into a temporary sibling and renames it into place only when it is complete, so an
interrupted run (Ctrl-C, kill -9) never leaves a file or folder that looks finished.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


def _create(parent: Path, prefix: str, suffix: str = "", folder: bool = False) -> tuple[Path, int | None]:
    """A new file (and its open descriptor) or folder in `parent` with a random name, made with the permissions
    the umask gives a plain open() or mkdir(): mkstemp and mkdtemp make 0600 and 0700, private to the user,
    whatever the umask, and a model others on the machine should read would not be readable."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            if folder:
                os.mkdir(path, 0o777)
                return path, None
            return path, os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: no free temporary name starting {prefix}")


def _keep_mode(new: Path, replaced: Path) -> None:
    """A file or folder that replaces another keeps the permissions the user gave the old one."""
    with contextlib.suppress(FileNotFoundError):
        os.chmod(new, replaced.stat().st_mode & 0o7777)


def nearest_existing(path: Path) -> Path:
    """`path` or the nearest of its parents that exists: where a folder for an output would be made (a file
    there means it cannot be)."""
    return next(parent for parent in (path, *path.absolute().parents) if parent.exists())


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside `target` (same suffix); it replaces `target` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        stale.unlink(missing_ok=True)
    tmp_path, fd = _create(target.parent, f".{target.name}.tmp-", "".join(target.suffixes))
    os.close(fd)
    try:
        yield tmp_path
        _keep_mode(tmp_path, target)
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
    tmp, _ = _create(target.parent, f".{target.name}.tmp-", folder=True)
    try:
        yield tmp
        _keep_mode(tmp, target)
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
    tmp, fd = _create(target.parent, f".{target.name}.", ".tmp")
    try:
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
