"""Contact sheets for `dvc plots`: the images a model got most confidently wrong, the audit's suspects and pairs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bottleneck_clf.atomic import atomic_path
from bottleneck_clf.images import BadImage, open_rgb

THUMB = 160
CAPTION_LINES = 3
LINE = 15
COLUMNS = 4


@dataclass(frozen=True)
class Mistake:
    path: Path
    actual: str
    predicted: str
    confidence: float


def worst_mistakes(ids, actual: np.ndarray, predicted: np.ndarray, probs: np.ndarray, classes: list[str],
                   root: Path, limit: int) -> list[Mistake]:
    """Wrong predictions, most confident first (ties by path, so the sheet is reproducible)."""
    wrong = [i for i in range(len(actual)) if actual[i] != predicted[i]]
    wrong.sort(key=lambda i: (-float(probs[i, predicted[i]]), str(ids[i])))
    return [Mistake(root / str(ids[i]), classes[actual[i]], classes[predicted[i]], float(probs[i, predicted[i]]))
            for i in wrong[:limit]]


def _font():
    try:
        return ImageFont.load_default(size=12)
    except (TypeError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()


def _fit(text: str, font, width: int) -> str:
    while text and ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font) > width:
        text = "…" + text[2:]
    return text


@dataclass(frozen=True)
class Cell:
    """One cell of a contact sheet: images side by side (a mistake, a pair) and caption lines, the last in red."""

    paths: tuple[Path, ...]
    captions: tuple[str, ...]


def _paste(sheet: Image.Image, draw, path: Path, x: int, y: int, font) -> None:
    try:
        thumb = open_rgb(path)
        thumb.thumbnail((THUMB, THUMB))
        sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
    except (BadImage, OSError):
        draw.rectangle((x, y, x + THUMB - 1, y + THUMB - 1), outline="gray")
        draw.text((x + 6, y + THUMB // 2), "image not readable", fill="gray", font=font)


def draw_sheet(cells: list[Cell], target: str | Path, title: str, columns: int = COLUMNS) -> None:
    """Cells of thumbnails with captions under them, in rows of `columns`; PNG written atomically."""
    font = _font()
    images = max((len(c.paths) for c in cells), default=1)
    lines = max((len(c.captions) for c in cells), default=CAPTION_LINES)
    cell_w = images * THUMB + (images - 1) * 4
    cell_h = THUMB + lines * LINE + 8
    columns = max(1, min(columns, len(cells)))
    rows = max(1, -(-len(cells) // columns))
    width = max(columns * (cell_w + 8) + 8, 360)
    sheet = Image.new("RGB", (width, 28 + rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 6), title if cells else f"{title}: none", fill="black", font=font)
    for n, cell in enumerate(cells):
        x, y = 8 + (n % columns) * (cell_w + 8), 28 + (n // columns) * cell_h
        for k, path in enumerate(cell.paths):
            _paste(sheet, draw, path, x + k * (THUMB + 4), y, font)
        for line, text in enumerate(cell.captions):
            color = "firebrick" if line == len(cell.captions) - 1 else "black"
            draw.text((x, y + THUMB + 2 + line * LINE), _fit(text, font, cell_w), fill=color, font=font)
    with atomic_path(target) as tmp:
        sheet.save(tmp, format="PNG")


def draw_gallery(mistakes: list[Mistake], target: str | Path, title: str) -> None:
    """Thumbnails with file name, true class and predicted class with its probability; PNG written atomically."""
    cells = [Cell((m.path,), (m.path.name, f"true: {m.actual}", f"predicted: {m.predicted} {m.confidence:.3f}"))
             for m in mistakes]
    draw_sheet(cells, target, title)
