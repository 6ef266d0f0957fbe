"""Atomic outputs: a rerun clears what a killed run left behind, whichever moment it was killed at."""

from __future__ import annotations

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
