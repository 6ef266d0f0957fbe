"""The prepare stage on real image folders: layouts, splits, bad files, and the messages users see."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections import Counter

import pytest
from conftest import make_class_folders, make_presplit_folders, update_params, write_image

from bottleneck_clf.dataset import read_manifest
from stages import prepare


def run_prepare(project):
    prepare.main()
    out = project / "data/prepared"
    entries = read_manifest(out / "manifest.csv")
    report = json.loads((out / "report.json").read_text())
    with open(out / "skipped.csv", newline="") as handle:
        skipped = list(csv.DictReader(handle))
    return entries, report, skipped


def test_by_class_split_is_stratified_and_seeded(project):
    make_class_folders(project / "data/raw", per_class=10, classes=("cats", "dogs", "birds"))
    entries, report, skipped = run_prepare(project)
    assert report["layout"] == "by_class"
    assert report["classes"] == ["birds", "cats", "dogs"]
    assert skipped == []
    counts = Counter((e.split, e.label) for e in entries)
    for label in report["classes"]:
        assert (counts["train", label], counts["validation", label], counts["test", label]) == (6, 2, 2)
    first = {e.path: e.split for e in entries}

    prepare.main()
    assert {e.path: e.split for e in read_manifest(project / "data/prepared/manifest.csv")} == first

    update_params(project, {"base": {"seed": 7}})
    entries, _, _ = run_prepare(project)
    assert {e.path: e.split for e in entries} != first


def test_manifest_hashes_are_file_sha256(project):
    import hashlib

    make_class_folders(project / "data/raw", per_class=5)
    entries, _, _ = run_prepare(project)
    for e in entries:
        assert e.sha256 == hashlib.sha256((project / "data/raw" / e.path).read_bytes()).hexdigest()


def test_presplit_layout_is_kept(project):
    make_presplit_folders(project / "data/raw", {"train": 4, "validation": 2, "test": 2})
    entries, report, _ = run_prepare(project)
    assert report["layout"] == "pre_split"
    assert all(e.path.split("/")[0] == e.split for e in entries)
    assert report["counts"]["test"] == {"cats": 2, "dogs": 2}


def test_presplit_class_in_one_split_only_names_the_folder(project):
    raw = make_presplit_folders(project / "data/raw", {"train": 4, "validation": 2})
    (raw / "validation/dogs").rename(raw / "validation/Dogs")  # a typo: the class now misses validation
    with pytest.raises(ValueError) as error:
        prepare.main()
    message = str(error.value)
    assert message.startswith("data/raw/validation/Dogs: class 'Dogs' has usable images in validation/ "
                              "but none in train/")
    assert "typo (of 'dogs'?)" in message
    assert not (project / "data/prepared").exists()


def test_presplit_class_missing_from_test_is_refused(project):
    raw = make_presplit_folders(project / "data/raw", {"train": 4, "validation": 2, "test": 2})
    for path in (raw / "test/cats").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match=r"^data/raw/train/cats: class 'cats' has usable images in train/, validation/ "
                                         r"but none in test/"):
        prepare.main()


def test_zero_test_fraction_makes_no_test_split(project):
    make_class_folders(project / "data/raw", per_class=5)
    update_params(project, {"prepare": {"test_fraction": 0.0}})
    _, report, _ = run_prepare(project)
    assert set(report["counts"]) == {"train", "validation"}


def test_duplicates_share_a_split(project):
    raw = make_class_folders(project / "data/raw", per_class=10)
    for n in range(3):
        shutil.copy(raw / "cats" / f"{n:03d}.png", raw / "cats" / f"copy {n}.png")
    entries, report, _ = run_prepare(project)
    split = {e.path: e.split for e in entries}
    for n in range(3):
        assert split[f"cats/{n:03d}.png"] == split[f"cats/copy {n}.png"]
    assert report["duplicate_files"] == 3


def test_same_bytes_in_two_classes_skips_both(project):
    raw = make_class_folders(project / "data/raw", per_class=10)
    shutil.copy(raw / "cats/000.png", raw / "dogs/looks-like-a-cat.png")
    entries, _, skipped = run_prepare(project)
    paths = {e.path for e in entries}
    assert "cats/000.png" not in paths and "dogs/looks-like-a-cat.png" not in paths
    reasons = {row["path"]: row["reason"] for row in skipped}
    assert "labelled dogs" in reasons["cats/000.png"]
    assert "labelled cats" in reasons["dogs/looks-like-a-cat.png"]


def bad_files(raw):
    (raw / "cats/empty.jpg").write_bytes(b"")
    (raw / "cats/notes.jpg").write_text("not an image")
    good = (raw / "dogs/000.png").read_bytes()
    (raw / "dogs/truncated.png").write_bytes(good[: len(good) // 2])
    (raw / "cats/.DS_Store").write_bytes(b"\x00\x01")
    (raw / "dogs/Thumbs.db").write_bytes(b"\x00\x01")
    write_image(raw / "dogs/bitmap named jpeg.jpg", (40, 80, 200), seed=99, fmt="BMP")


def test_bad_files_are_skipped_and_reported(project, capsys):
    raw = make_class_folders(project / "data/raw", per_class=10)
    bad_files(raw)
    entries, report, skipped = run_prepare(project)
    reasons = {row["path"]: row["reason"] for row in skipped}
    assert set(reasons) == {"cats/empty.jpg", "cats/notes.jpg", "dogs/truncated.png"}
    assert reasons["cats/empty.jpg"] == "empty file (0 bytes)"
    assert "cannot decode" in reasons["dogs/truncated.png"] or "Pillow" in reasons["dogs/truncated.png"]
    assert "dogs/bitmap named jpeg.jpg" in {e.path for e in entries}  # decoded by content, not extension
    assert report["images"] == 21 and report["skipped"] == 3
    assert "skipped 3 unusable file(s); see data/prepared/skipped.csv" in capsys.readouterr().out


def test_bad_files_fail_when_asked(project):
    raw = make_class_folders(project / "data/raw", per_class=10)
    bad_files(raw)
    update_params(project, {"prepare": {"on_bad_image": "fail"}})
    with pytest.raises(ValueError) as error:
        prepare.main()
    message = str(error.value)
    assert "3 unusable file(s)" in message and "empty.jpg: empty file" in message
    assert not (project / "data/prepared").exists()


def test_one_class_is_refused_before_work(project):
    make_class_folders(project / "data/raw", per_class=4, classes=("cats",))
    with pytest.raises(ValueError, match=r"at least two classes .* found 'cats' \(4\)"):
        prepare.main()


def test_small_class_names_class_and_counts(project):
    raw = make_class_folders(project / "data/raw", per_class=10)
    for path in sorted((raw / "dogs").iterdir())[3:]:
        path.unlink()
    # With a broken file and on_bad_image=fail, the size error shows it came before any decoding.
    (raw / "cats/broken.jpg").write_bytes(b"")
    update_params(project, {"prepare": {"on_bad_image": "fail", "small_classes": "fail"}})
    with pytest.raises(ValueError, match=r"class 'dogs' has 3 file\(s\), too few .*needs at least 5"):
        prepare.main()


def test_loose_file_is_refused_with_fix(project):
    raw = make_class_folders(project / "data/raw", per_class=5)
    write_image(raw / "stray.png", (1, 2, 3), seed=1)
    with pytest.raises(ValueError, match=r"stray.png: expected <class>/<file>; move the file into a class folder"):
        prepare.main()


def test_missing_raw_folder_says_what_to_do(project):
    with pytest.raises(ValueError, match="raw data folder not found.*bottleneck demo"):
        prepare.main()


def test_non_ascii_and_spaces_in_names(project):
    raw = make_class_folders(project / "data/raw", per_class=5, classes=("cats", "dogs"))
    (raw / "cats").rename(raw / "chats noirs")
    write_image(raw / "chats noirs" / "été 1.png", (200, 60, 40), seed=500)
    entries, report, _ = run_prepare(project)
    assert "chats noirs/été 1.png" in {e.path for e in entries}
    assert report["classes"] == ["chats noirs", "dogs"]


def test_a_file_name_that_is_not_utf8_is_refused_naming_it(project):
    """A name the file system holds as bytes that are not UTF-8 (Latin-1 from an old camera or a zip made on
    Windows): the manifest is UTF-8 text, so prepare stops, names the file as the bytes it is, and writes
    nothing."""
    raw = make_class_folders(project / "data/raw", per_class=5)
    write_image(raw / "cats" / os.fsdecode(b"caf\xe9.png"), (200, 60, 40), seed=500)
    with pytest.raises(ValueError, match=r"^b'data/raw/cats/caf\\xe9\.png': its name is not UTF-8 text; rename "
                                         r"the file or its folder$"):
        prepare.main()
    assert not (project / "data/prepared").exists()


def test_a_file_that_cannot_be_read_is_skipped_with_the_reason(project):
    """A listed file whose bytes cannot be read (here a link to a kernel file that fails every read, a real
    I/O error even for root), or a link whose target is gone, is reported like an undecodable one, not a
    traceback and not left out without a word."""
    raw = make_class_folders(project / "data/raw", per_class=10)
    (raw / "cats/unreadable.png").symlink_to("/proc/self/mem")
    (raw / "dogs/moved.png").symlink_to(project / "elsewhere/moved.png")  # a link whose photo was moved away
    entries, report, skipped = run_prepare(project)
    assert sorted((row["path"], row["reason"]) for row in skipped) == [
        ("cats/unreadable.png", "a link to /proc/self/mem: cannot read the file (Input/output error)"),
        ("dogs/moved.png", f"a link to {project / 'elsewhere/moved.png'}: cannot read the file (No such file or "
                           "directory)")]
    assert report["skipped"] == 2 and {"cats/unreadable.png", "dogs/moved.png"}.isdisjoint(e.path for e in entries)


@pytest.mark.parametrize("target", ["gone", "there"])
def test_a_link_in_place_of_a_class_folder_is_one_message(project, target):
    """A class folder that is a link: rglob would not enter it, so its photos would be missing without a word."""
    raw = make_class_folders(project / "data/raw", per_class=5)
    elsewhere = project / "elsewhere/birds"
    if target == "there":
        make_class_folders(project / "elsewhere", per_class=5, classes=("birds",))
    (raw / "birds").symlink_to(elsewhere)
    message = (rf"^data/raw/birds: a link to {elsewhere}, which does not exist; remove the link$" if target == "gone"
               else rf"^data/raw/birds: a link to the folder {elsewhere}, and prepare reads only folders that are "
                    r"really there; move or copy that folder to data/raw/birds \(links to files are fine\)$")
    with pytest.raises(ValueError, match=message):
        prepare.main()
    assert not (project / "data/prepared").exists()


@pytest.mark.parametrize(
    ("size", "test_fraction", "expected"),
    [
        (1, 0.2, {"train": 1}),
        (2, 0.2, {"train": 1, "test": 1}),
        (3, 0.2, {"train": 1, "test": 1, "validation": 1}),
        (4, 0.2, {"train": 2, "test": 1, "validation": 1}),
        (2, 0.0, {"train": 1, "validation": 1}),
    ],
)
def test_few_shot_classes_follow_the_rule(project, size, test_fraction, expected):
    """A class too small for the fractions: train first, then one to test, one to validation, rest to train.
    The large classes beside it are split exactly as they would be alone."""
    raw = make_class_folders(project / "data/raw", per_class=10, classes=("cats", "dogs"))
    make_class_folders(raw, per_class=size, classes=("birds",), start_seed=5000)
    update_params(project, {"prepare": {"test_fraction": test_fraction}})
    entries, report, _ = run_prepare(project)
    got = Counter(e.split for e in entries if e.label == "birds")
    assert got == Counter(expected)
    missing = {split for split in ("validation", "test") if split in report["counts"] and split not in expected}
    assert {s for s, labels in report["classes_missing_from"].items() if "birds" in labels} == missing

    shutil.rmtree(raw / "birds")
    alone, _, _ = run_prepare(project)
    assert {e.path: e.split for e in entries if e.label != "birds"} == {e.path: e.split for e in alone}


def test_few_shot_split_is_seeded(project):
    raw = make_class_folders(project / "data/raw", per_class=10, classes=("cats", "dogs"))
    make_class_folders(raw, per_class=3, classes=("birds",), start_seed=5000)
    first, _, _ = run_prepare(project)
    again, _, _ = run_prepare(project)
    assert [(e.path, e.split) for e in first] == [(e.path, e.split) for e in again]
    splits_by_seed = set()
    for seed in range(6):
        update_params(project, {"base": {"seed": seed}})
        entries, _, _ = run_prepare(project)
        splits_by_seed.add(tuple(sorted((e.path, e.split) for e in entries if e.label == "birds")))
    assert len(splits_by_seed) > 1, "the few-shot split should follow the seed"
