"""One decoding rule for every stage: every mode becomes RGB the same way, EXIF orientation applied."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bottleneck_clf.images import RESIZE_METHODS, BadImage, decode_rgb, load_array


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("mode", "fmt", "value", "expected"),
    [
        ("L", "PNG", 128, (128, 128, 128)),
        ("LA", "PNG", (100, 0), (255, 255, 255)),  # fully transparent over white
        ("RGBA", "PNG", (10, 20, 30, 255), (10, 20, 30)),
        ("CMYK", "JPEG", (0, 0, 0, 0), (255, 255, 255)),
        ("I;16", "PNG", 65535, (255, 255, 255)),
        ("I", "TIFF", 257 * 40, (40, 40, 40)),
        ("F", "TIFF", 0.5, (128, 128, 128)),
        ("1", "PNG", 1, (255, 255, 255)),
    ],
)
def test_modes_become_rgb(mode, fmt, value, expected):
    image = Image.new(mode, (8, 8), value)
    rgb = decode_rgb(encoded(image, fmt))
    assert rgb.mode == "RGB"
    pixel = np.asarray(rgb)[4, 4]
    assert np.abs(pixel.astype(int) - np.array(expected)).max() <= 2


def test_palette_with_transparency_goes_over_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    rgb = decode_rgb(encoded(image, "PNG", transparency=0))
    assert tuple(np.asarray(rgb)[0, 0]) == (255, 255, 255)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    rgb = decode_rgb(encoded(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert rgb.size == (20, 40)
    top = np.asarray(rgb)[:20].mean()
    bottom = np.asarray(rgb)[20:].mean()
    assert top > 200 > 50 > bottom


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"plain text, not pixels", "not an image"),
        (encoded(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")[:200], "cannot decode"),
    ],
)
def test_bad_bytes_give_a_reason(data, reason):
    with pytest.raises(BadImage, match=reason):
        decode_rgb(data)


def test_decompression_bomb_is_refused_unread(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadImage, match="decompression-bomb limit"):
        decode_rgb(encoded(Image.new("RGB", (40, 40)), "PNG"))


def test_load_array_resizes_to_square_float(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (90, 30), (1, 2, 3)).save(path)
    array = load_array(path, 32, "bilinear")
    assert array.shape == (32, 32, 3) and array.dtype == np.float32
    np.testing.assert_allclose(array[0, 0], (1, 2, 3), atol=1e-4)


@pytest.mark.parametrize("interpolation", list(RESIZE_METHODS))
def test_resize_is_what_a_keras_resizing_layer_does(tmp_path, interpolation):
    """The exported model resizes inside Keras; the pipeline must give it bit for bit the same pixels."""
    import keras

    path = tmp_path / "noise.png"
    pixels = np.random.default_rng(0).integers(0, 256, (70, 45, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    layer = keras.layers.Resizing(32, 32, interpolation=RESIZE_METHODS[interpolation], antialias=True)
    expected = np.asarray(layer(pixels[None].astype(np.float32)))[0]
    np.testing.assert_array_equal(load_array(path, 32, interpolation), expected)
