"""The misclassified gallery: the most confidently wrong images, drawn whatever the files hold."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_image
from PIL import Image

from bottleneck_clf.gallery import THUMB, Mistake, draw_gallery, worst_mistakes

CLASSES = ["cats", "dogs"]


def test_most_confident_mistakes_first(tmp_path):
    ids = np.array(["a.png", "b.png", "c.png", "d.png"])
    actual = np.array([0, 0, 1, 1])
    probs = np.array([[0.2, 0.8], [0.9, 0.1], [0.95, 0.05], [0.6, 0.4]])
    predicted = probs.argmax(axis=1)
    mistakes = worst_mistakes(ids, actual, predicted, probs, CLASSES, tmp_path, limit=5)
    assert [m.path.name for m in mistakes] == ["c.png", "a.png", "d.png"]
    assert mistakes[0] == Mistake(tmp_path / "c.png", "dogs", "cats", 0.95)
    assert len(worst_mistakes(ids, actual, predicted, probs, CLASSES, tmp_path, limit=1)) == 1
    assert worst_mistakes(ids, actual, predicted, probs, CLASSES, tmp_path, limit=0) == []


@pytest.mark.parametrize("count", [0, 1, 5])
def test_sheet_has_a_cell_per_mistake(tmp_path, count):
    mistakes = []
    for n in range(count):
        path = write_image(tmp_path / f"img{n}.png", (200, 60, 40), seed=n, size=300 + 10 * n)
        mistakes.append(Mistake(path, "cats", "dogs", 0.9 - n / 100))
    target = tmp_path / "plots/misclassified.png"
    draw_gallery(mistakes, target, "Most confident mistakes")
    with Image.open(target) as sheet:
        assert sheet.format == "PNG"
        rows = max(1, -(-count // 4))
        assert sheet.height > rows * THUMB
        if count:
            # the first thumbnail's centre carries the image's red, not the white background
            red, green, blue = sheet.getpixel((8 + THUMB // 2, 28 + THUMB // 2))
            assert red > 120 and blue < 120


def test_unreadable_image_gets_a_placeholder_not_a_crash(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    target = tmp_path / "misclassified.png"
    draw_gallery([Mistake(broken, "cats", "dogs", 0.99), Mistake(tmp_path / "gone.png", "dogs", "cats", 0.9)],
                 target, "title")
    assert target.exists() and not list(tmp_path.glob(".*tmp*"))
    with Image.open(target) as sheet:
        for column in range(2):  # each cell: a gray frame round a white square, where a thumbnail would be
            x, y = 8 + column * (THUMB + 8), 28
            assert sheet.getpixel((x, y + THUMB // 4)) == (128, 128, 128)  # the frame's left edge
            assert sheet.getpixel((x + THUMB // 2, y + THUMB // 4)) == (255, 255, 255)
            text = sheet.crop((x + 6, y + THUMB // 2, x + THUMB - 6, y + THUMB // 2 + 10))
            assert (128, 128, 128) in {color for _, color in text.getcolors(4096)}  # "image not readable"
