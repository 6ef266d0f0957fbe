"""Atomic outputs: a rerun clears what a killed run left behind, whichever moment it was killed at."""

from __future__ import annotations

import os

import pytest

from bottleneck_clf.atomic import atomic_dir


def test_rerun_removes_leftovers_of_a_run_killed_between_the_renames(tmp_path):
    # What kill -9 between atomic_dir's two renames leaves: the previous output moved aside as .old-<pid>,
    # the new one still under its temporary name, and no output folder at all.
    old = tmp_path / ".features.old-4242"
    half = tmp_path / ".features.tmp-abc123"
    for folder, text in ((old, "previous run"), (half, "killed run")):
        folder.mkdir()
        (folder / "meta.json").write_text(text)

    with atomic_dir(tmp_path / "features") as tmp:
        (tmp / "meta.json").write_text("this run")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["features"]
    assert (tmp_path / "features/meta.json").read_text() == "this run"


def test_other_outputs_leftovers_are_not_touched(tmp_path):
    other = tmp_path / ".features-extra.old-4242"
    other.mkdir()
    with atomic_dir(tmp_path / "features") as tmp:
        (tmp / "meta.json").write_text("this run")
    assert other.is_dir()



def mode(path) -> int:
    return path.stat().st_mode & 0o7777


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_get_the_permissions_the_umask_gives(tmp_path, umask):
    """Not mkstemp's private 0600 / mkdtemp's 0700: a model others on the machine (or a web server) should read
    is as readable as any file the user makes; a file that is replaced keeps its own permissions."""
    from bottleneck_clf.atomic import atomic_path, write_shared

    before = os.umask(umask)
    try:
        with atomic_path(tmp_path / "model.keras") as tmp:
            tmp.write_text("model")
        with atomic_dir(tmp_path / "classifier") as tmp:
            (tmp / "classes.json").write_text("{}")
        write_shared(tmp_path / "entry.npy", b"features")
    finally:
        os.umask(before)
    assert mode(tmp_path / "model.keras") == mode(tmp_path / "entry.npy") == 0o666 & ~umask
    assert mode(tmp_path / "classifier") == 0o777 & ~umask

    os.chmod(tmp_path / "model.keras", 0o640)
    with atomic_path(tmp_path / "model.keras") as tmp:
        tmp.write_text("a newer model")
    assert mode(tmp_path / "model.keras") == 0o640 and (tmp_path / "model.keras").read_text() == "a newer model"
