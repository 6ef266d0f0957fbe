"""`dvc repro` on a data/raw that mixes every known kind of bad file with good images."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil

import pytest
from conftest import dvc, make_class_folders, write_image
from PIL import Image

pytestmark = pytest.mark.slow


def tree_digest(root) -> dict[str, str]:
    """sha256 of every file under root, hidden ones included, by relative path."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def add_messy_files(raw) -> dict[str, str]:
    """Write good-but-odd and bad files; return {path: expected reason fragment} for the bad ones."""
    cats, dogs = raw / "cats", raw / "dogs"
    # usable, though unusual
    Image.new("RGBA", (40, 40), (200, 60, 40, 128)).save(cats / "alpha.png")
    Image.new("CMYK", (40, 40), (0, 150, 150, 0)).save(cats / "cmyk.jpg")
    Image.new("I;16", (40, 40), 30000).save(dogs / "sixteen-bit.png")
    Image.new("L", (40, 40), 90).save(dogs / "gray.jpg")
    Image.new("P", (40, 40), 3).save(dogs / "palette.png")
    Image.new("RGB", (40, 40), (40, 80, 200)).save(dogs / "really a bitmap.jpg", format="BMP")
    exif = Image.Exif()
    exif[0x0112] = 6
    (cats / "rotated phone photo.jpg").write_bytes(jpeg_bytes(Image.new("RGB", (60, 40), (210, 50, 50)),
                                                               exif=exif.tobytes()))
    write_image(cats / "chat noir é.png", (190, 70, 30), seed=321)
    shutil.copy(cats / "001.png", cats / "001 copy.png")  # exact duplicate: same split as its twin
    # system files: ignored without a word
    (cats / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (dogs / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    # unusable
    (cats / "empty.jpg").write_bytes(b"")
    (dogs / "notes.jpg").write_text("a text file with an image's name")
    good = (dogs / "000.png").read_bytes()
    (dogs / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.new("1", (14000, 14000)).save(cats / "huge scan.png")  # 196 Mpx, over twice Pillow's limit
    shutil.copy(dogs / "001.png", cats / "dog in the cat folder.png")
    return {
        "cats/empty.jpg": "empty file",
        "dogs/notes.jpg": "not an image",
        "dogs/truncated.png": "",
        "cats/huge scan.png": "decompression-bomb",
        "cats/dog in the cat folder.png": "conflicting labels",
        "dogs/001.png": "conflicting labels",
    }


def test_repro_on_messy_folder(dvc_repo):
    raw = make_class_folders(dvc_repo / "data/raw", per_class=10)
    expected_bad = add_messy_files(raw)
    before = tree_digest(raw)

    result = dvc(dvc_repo, "repro")
    assert f"skipped {len(expected_bad)} unusable file(s); see data/prepared/skipped.csv" in result.stdout

    with open(dvc_repo / "data/prepared/skipped.csv", newline="", encoding="utf-8") as handle:
        skipped = {row["path"]: row["reason"] for row in csv.DictReader(handle)}
    assert set(skipped) == set(expected_bad)
    for path, fragment in expected_bad.items():
        assert fragment in skipped[path], (path, skipped[path])

    report = json.loads((dvc_repo / "data/prepared/report.json").read_text())
    # 20 drawn images + 9 odd-but-good files - 1 (dogs/001.png, in conflict) = 28
    assert report["images"] == 28 and report["duplicate_files"] == 1
    metrics = json.loads((dvc_repo / "metrics/eval/metrics.json").read_text())
    assert metrics["images"] == sum(report["counts"][metrics["split"]].values())
    assert tree_digest(raw) == before  # nothing in data/raw was changed, moved or deleted
