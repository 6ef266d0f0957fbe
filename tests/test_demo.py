"""The demo image set: real PNGs from scikit-learn's bundled digits, never over the user's images."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bottleneck_clf import demo
from bottleneck_clf.demo import write_demo_set
from bottleneck_clf.errors import UserError
from bottleneck_clf.images import list_files


def test_writes_ten_classes_of_pngs(tmp_path):
    raw = tmp_path / "raw"
    write_demo_set(raw, per_class=3, size=48)
    files = list_files(raw)
    assert len(files) == 30
    assert sorted({f.parts[0] for f in files}) == [str(d) for d in range(10)]
    with Image.open(raw / files[0]) as image:
        assert image.size == (48, 48) and image.format == "PNG"


def test_rerun_is_byte_identical_and_can_shrink(tmp_path):
    raw = tmp_path / "raw"
    write_demo_set(raw, per_class=3)
    first = {p: (raw / p).read_bytes() for p in list_files(raw)}
    write_demo_set(raw, per_class=3)
    assert {p: (raw / p).read_bytes() for p in list_files(raw)} == first
    write_demo_set(raw, per_class=2)
    assert len(list_files(raw)) == 20


def test_never_overwrites_user_images(tmp_path):
    raw = tmp_path / "raw"
    (raw / "cats").mkdir(parents=True)
    (raw / "cats" / "mine.jpg").write_bytes(b"precious")
    with pytest.raises(UserError, match="already holds 1 files that are not the demo"):
        write_demo_set(raw, per_class=2)
    assert (raw / "cats" / "mine.jpg").read_bytes() == b"precious"
    assert list_files(raw) == [Path("cats/mine.jpg")]


@pytest.mark.parametrize("out", ["notes.txt", "notes.txt/raw"], ids=["the-file", "below-it"])
def test_out_at_or_below_a_file_is_one_message_and_keeps_the_file(tmp_path, out):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"notes.txt is a file, not a folder; pass --out a folder"):
        write_demo_set(tmp_path / out, per_class=2)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def snapshot(raw):
    return {p: p.read_bytes() for p in raw.rglob("*") if p.is_file()}


def test_rerun_keeps_an_image_the_user_added_to_the_demo_folder(tmp_path):
    raw = tmp_path / "raw"
    write_demo_set(raw, per_class=2)
    (raw / "7" / "mine.png").write_bytes(b"my own seven")
    before = snapshot(raw)
    with pytest.raises(UserError, match=r"(?s)7/mine\.png: not written by the demo.*Nothing was deleted"):
        write_demo_set(raw, per_class=2)
    assert snapshot(raw) == before


def test_rerun_refuses_when_a_demo_file_was_changed(tmp_path):
    raw = tmp_path / "raw"
    write_demo_set(raw, per_class=2)
    (raw / "0" / "000.png").write_bytes(b"edited by the user")
    before = snapshot(raw)
    with pytest.raises(UserError, match=r"0/000\.png: changed since the demo wrote it"):
        write_demo_set(raw, per_class=3)
    assert snapshot(raw) == before


def test_marker_without_a_file_list_deletes_nothing(tmp_path):
    raw = tmp_path / "raw"
    (raw / "cats").mkdir(parents=True)
    (raw / "cats" / "mine.jpg").write_bytes(b"precious")
    (raw / demo.MARKER).write_text("written by python -m stages.demo_data\n")  # an older demo's marker
    with pytest.raises(UserError, match="does not list the files the demo wrote"):
        write_demo_set(raw, per_class=2)
    assert (raw / "cats" / "mine.jpg").read_bytes() == b"precious"
