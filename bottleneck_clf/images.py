"""Turning image files into RGB arrays, the same way in every stage."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from bottleneck_clf.errors import UserError

# Files that operating systems and tools drop into folders; never images, never worth a report line.
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"})
# params.yaml's filter names -> tf.image.resize methods. Resizing happens in TensorFlow, with antialiasing,
# because that is the op keras.layers.Resizing runs: the exported model resizes exactly like the pipeline.
RESIZE_METHODS = {
    "nearest": "nearest",
    "bilinear": "bilinear",
    "bicubic": "bicubic",
    "lanczos": "lanczos3",
    "box": "area",
}


class BadImage(ValueError):
    """A file that cannot be used as an image; the message is the reason shown to the user."""


def is_system_file(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts) or relative.name.lower() in SYSTEM_FILES


def list_files(root: str | Path) -> list[Path]:
    """Every regular file under `root` (relative, sorted), skipping hidden and system files; also links whose
    target is gone and links to folders (which rglob does not enter), so that prepare reports them instead of
    photos silently missing from training."""
    root = Path(root)
    files = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        odd_link = path.is_symlink() and (not path.exists() or path.is_dir())
        if (path.is_file() or odd_link) and not is_system_file(relative):
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


def load_rgb(path: str | Path) -> np.ndarray:
    """An (height, width, 3) uint8 array: decoded, oriented, RGB, at the file's own size."""
    return np.asarray(open_rgb(path), dtype=np.uint8)


def resize(images, image_size: int, interpolation: str):
    """float32 (size, size, 3) from uint8 images of any size, aspect ratio not kept; a tf.Tensor.

    The same call as `keras.layers.Resizing(size, size, interpolation, antialias=True)`.
    """
    import tensorflow as tf

    if interpolation not in RESIZE_METHODS:
        raise UserError(f"unknown interpolation {interpolation!r}; valid choices: {', '.join(RESIZE_METHODS)}")
    return tf.image.resize(tf.cast(images, tf.float32), (image_size, image_size),
                           method=RESIZE_METHODS[interpolation], antialias=True)


def load_array(path: str | Path, image_size: int, interpolation: str) -> np.ndarray:
    """A (size, size, 3) float32 array of the file, resized as the pipeline and the exported model do."""
    return np.asarray(resize(load_rgb(path), image_size, interpolation), dtype=np.float32)
