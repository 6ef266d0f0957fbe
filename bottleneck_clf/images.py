"""Turning image files into RGB arrays, the same way in every stage."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Files that operating systems and tools drop into folders; never images, never worth a report line.
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"})
RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


class BadImage(ValueError):
    """A file that cannot be used as an image; the message is the reason shown to the user."""


def is_system_file(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts) or relative.name.lower() in SYSTEM_FILES


def list_files(root: str | Path) -> list[Path]:
    """Every regular file under `root` (relative, sorted), skipping hidden and system files."""
    root = Path(root)
    files = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if path.is_file() and not is_system_file(relative):
            files.append(relative)
    return sorted(files, key=lambda p: p.as_posix())


def to_rgb(image: Image.Image) -> Image.Image:
    """One rule for every mode: alpha over white, 16/32-bit and float scaled to 8 bits, palettes expanded."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        # 16-bit samples map 0..65535 onto 0..255; 32-bit integer images are treated as 16-bit data.
        image = Image.fromarray(np.clip(values / 257.0, 0, 255).round().astype(np.uint8), "L")
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0
        image = Image.fromarray(np.clip(np.nan_to_num(values) * scale, 0, 255).round().astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def decode_rgb(data: bytes) -> Image.Image:
    """Decode fully, apply EXIF orientation, convert to RGB; BadImage with a reason on any failure."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Over Pillow's pixel limit we refuse before decoding: such a file could exhaust memory.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                image = ImageOps.exif_transpose(image)
                return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"too many pixels, over the decompression-bomb limit ({exc})") from exc
    except Image.UnidentifiedImageError:
        raise BadImage("not an image Pillow can decode") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"cannot decode: {exc}") from exc


def open_rgb(path: str | Path) -> Image.Image:
    return decode_rgb(Path(path).read_bytes())


def load_array(path: str | Path, image_size: int, interpolation: str) -> np.ndarray:
    """A (size, size, 3) uint8 array: decoded, oriented, RGB, resized without keeping the aspect ratio."""
    image = open_rgb(path)
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), RESAMPLING[interpolation])
    return np.asarray(image, dtype=np.uint8)
