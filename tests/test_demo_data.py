"""The demo image set: real PNGs from scikit-learn's bundled digits, never over the user's images."""

from __future__ import annotations

import pytest
from PIL import Image

from bottleneck_clf.images import list_files
from stages import demo_data


def test_writes_ten_classes_of_pngs(tmp_path):
    raw = tmp_path / "raw"
    demo_data.main(["--out", str(raw), "--per-class", "3", "--size", "48"])
    files = list_files(raw)
    assert len(files) == 30
    assert sorted({f.parts[0] for f in files}) == [str(d) for d in range(10)]
    with Image.open(raw / files[0]) as image:
        assert image.size == (48, 48) and image.format == "PNG"


def test_rerun_is_byte_identical_and_can_shrink(tmp_path):
    raw = tmp_path / "raw"
    demo_data.main(["--out", str(raw), "--per-class", "3"])
    first = {p: (raw / p).read_bytes() for p in list_files(raw)}
    demo_data.main(["--out", str(raw), "--per-class", "3"])
    assert {p: (raw / p).read_bytes() for p in list_files(raw)} == first
    demo_data.main(["--out", str(raw), "--per-class", "2"])
    assert len(list_files(raw)) == 20


def test_never_overwrites_user_images(tmp_path):
    raw = tmp_path / "raw"
    (raw / "cats").mkdir(parents=True)
    (raw / "cats" / "mine.jpg").write_bytes(b"precious")
    with pytest.raises(SystemExit, match="already holds 1 files that are not the demo"):
        demo_data.main(["--out", str(raw), "--per-class", "2"])
    assert (raw / "cats" / "mine.jpg").read_bytes() == b"precious"
    assert list_files(raw) == [list_files(raw)[0]]
