"""Acting on the audit in prepare: the exclude list, the pHash column and the near-duplicate switch."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import COLORS, make_class_folders, make_drawn_presplit, resized_copy, update_params, write_shapes

from bottleneck_clf.dataset import read_manifest
from bottleneck_clf.images import open_rgb
from bottleneck_clf.near_duplicates import phash
from stages import prepare


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def outputs(project):
    out = project / "data/prepared"
    return (read_manifest(out / "manifest.csv"), json.loads((out / "report.json").read_text()),
            read_csv(out / "excluded.csv"))


def test_exclude_list_leaves_files_out_and_says_why(project, capsys):
    raw = make_class_folders(project / "data/raw", per_class=10)
    (project / "data/exclude.txt").write_text(
        "# suspects from metrics/audit/label_issues.csv\n\n"
        "cats/003.png  # a dog\n"
        "dogs/007.png\n"
        "dogs/gone.png  # already deleted\n", encoding="utf-8")
    prepare.main()
    entries, report, excluded = outputs(project)
    paths = {e.path for e in entries}
    assert "cats/003.png" not in paths and "dogs/007.png" not in paths and len(paths) == 18
    assert (raw / "cats/003.png").exists()  # left out, never deleted
    assert excluded == [{"path": "cats/003.png", "reason": "listed in exclude.txt line 3: a dog"},
                        {"path": "dogs/007.png", "reason": "listed in exclude.txt line 4"}]
    assert report["excluded"] == 2 and report["images"] == 18
    printed = capsys.readouterr().out
    assert "prepare: left out 2 file(s) listed in data/exclude.txt; see data/prepared/excluded.csv" in printed
    assert "warning: 1 entr(ies) of data/exclude.txt match no file under data/raw: dogs/gone.png" in printed


def test_the_committed_exclude_list_excludes_nothing(project):
    make_class_folders(project / "data/raw", per_class=5)
    prepare.main()
    entries, report, excluded = outputs(project)
    assert report["excluded"] == 0 and excluded == [] and len(entries) == 10


@pytest.mark.parametrize(("line", "message"), [
    ("/home/me/cats/003.png", r"exclude.txt line 2: '/home/me/cats/003.png' must be a path inside data/raw"),
    ("../elsewhere/003.png", r"exclude.txt line 2: '../elsewhere/003.png' must be a path inside data/raw"),
    ("data/raw/cats/003.png", r"exclude.txt line 2: 'data/raw/cats/003.png' starts with the raw data folder; "
                              r"write it relative to data/raw \(as 'cats/003.png'\)"),
])
def test_bad_exclude_entries_name_the_line_and_the_fix(project, line, message):
    make_class_folders(project / "data/raw", per_class=5)
    (project / "data/exclude.txt").write_text(f"# header\n{line}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        prepare.main()
    assert not (project / "data/prepared").exists()


def test_exclude_list_that_is_not_text(project):
    make_class_folders(project / "data/raw", per_class=5)
    (project / "data/exclude.txt").write_bytes(b"cats/\xff\xfe.png\n")
    with pytest.raises(ValueError, match=r"data/exclude.txt: not UTF-8 text .*save it as UTF-8"):
        prepare.main()


def test_manifest_carries_the_perceptual_hash(project):
    make_class_folders(project / "data/raw", per_class=5)
    prepare.main()
    entries, _, _ = outputs(project)
    for e in entries:
        assert e.phash == phash(open_rgb(project / "data/raw" / e.path)) and len(e.phash) == 16


def presplit_with_a_leak(project):
    make_drawn_presplit(project / "data/raw", {"train": 6, "validation": 3})


def test_near_duplicates_across_splits_are_counted_and_kept(project, capsys):
    presplit_with_a_leak(project)
    prepare.main()
    entries, report, _ = outputs(project)
    assert {e.path: e.split for e in entries}["validation/cats/copy-of-000.jpg"] == "validation"
    assert report["near_duplicates"] == {"setting": "keep", "pairs": 1, "pairs_across_splits": 1}
    assert "1 near-duplicate pair(s) by perceptual hash, 1 across splits" in capsys.readouterr().out


def test_one_split_moves_the_near_duplicate_into_its_twins_split(project):
    presplit_with_a_leak(project)
    update_params(project, {"prepare": {"near_duplicates": "one_split"}})
    prepare.main()
    entries, report, _ = outputs(project)
    split = {e.path: e.split for e in entries}
    assert split["validation/cats/copy-of-000.jpg"] == "train"
    assert sum(s == "validation" for s in split.values()) == 6  # nothing else moved
    assert report["near_duplicates"]["pairs_across_splits"] == 0 and report["moved"] == 1
    assert read_csv(project / "data/prepared/moved.csv") == [
        {"path": "validation/cats/copy-of-000.jpg", "from_split": "validation", "to_split": "train"}]


def test_one_split_keeps_near_duplicates_together_in_a_seeded_split(project):
    raw = project / "data/raw"
    for c, name in enumerate(("cats", "dogs")):
        for n in range(10):
            write_shapes(raw / name / f"{n:03d}.png", COLORS[name], seed=1000 * c + n)
    for n in range(4):
        resized_copy(raw / f"cats/{n:03d}.png", raw / f"cats/copy-{n}.jpg")

    def apart(seed: int, setting: str) -> int:
        update_params(project, {"base": {"seed": seed}, "prepare": {"near_duplicates": setting}})
        prepare.main()
        entries, report, _ = outputs(project)
        split = {e.path: e.split for e in entries}
        leaks = sum(split[f"cats/{n:03d}.png"] != split[f"cats/copy-{n}.jpg"] for n in range(4))
        assert report["near_duplicates"] == {"setting": setting, "pairs": 4, "pairs_across_splits": leaks}
        return leaks

    assert sum(apart(seed, "keep") for seed in (1, 2, 3)) > 0  # left alone, the split separates some pairs
    assert [apart(seed, "one_split") for seed in (1, 2, 3)] == [0, 0, 0]
