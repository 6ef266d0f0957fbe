"""README's "Ship it" Python block, run as written: it must decode images exactly as the pipeline does."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from bottleneck_clf.images import load_rgb
from bottleneck_clf.model_files import save_model

SNIPPET_FILE = '"cat.jpg"'


def readme_snippet() -> str:
    """The first ```python block of README's "Ship it" section, verbatim."""
    section = ROOT.joinpath("README.md").read_text(encoding="utf-8").split("## Ship it", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README's 'Ship it' section has no python block"
    assert blocks[0].count(SNIPPET_FILE) == 1, f"the snippet should read its image from {SNIPPET_FILE} once"
    return blocks[0]


def noise(shape, seed: int, high: int = 256, dtype=np.uint8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


def exif_rotated_jpeg(path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers (and the pipeline) turn it 90 degrees clockwise
    Image.fromarray(noise((24, 40, 3), 1), "RGB").save(path, "JPEG", exif=exif.tobytes(), quality=90)


def rgba_png(path):
    pixels = noise((20, 30, 4), 2)
    pixels[:5, :, 3] = 0  # fully transparent rows: white in the pipeline, not black
    Image.fromarray(pixels, "RGBA").save(path, "PNG")


def gray16_png(path):
    Image.fromarray(noise((16, 18), 3, high=65536, dtype=np.uint16)).save(path, "PNG")


def palette_with_transparency_png(path):
    image = Image.fromarray(noise((16, 16), 4, high=8), "P")
    image.putpalette([v for n in range(8) for v in (30 * n, 255 - 30 * n, 7 * n)])
    image.save(path, "PNG", transparency=3)


def float_tiff(path):
    Image.fromarray(np.random.default_rng(5).random((16, 16)).astype(np.float32), "F").save(path, "TIFF")


WRITERS = {"exif_rotated.jpg": exif_rotated_jpeg, "rgba.png": rgba_png, "gray16.png": gray16_png,
           "palette_transparent.png": palette_with_transparency_png, "float.tif": float_tiff}


@pytest.fixture
def exported(tmp_path, monkeypatch):
    """A real Keras model at the snippet's path that takes uint8 images of any size, as the export does."""
    inputs = keras.Input((None, None, 3), dtype="uint8")
    x = keras.layers.Resizing(8, 8)(keras.layers.Rescaling(1 / 255)(inputs))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    save_model(model, tmp_path / "data/models/classifier/model.keras")
    monkeypatch.chdir(tmp_path)
    return model


@pytest.mark.parametrize("name", WRITERS)
def test_readme_snippet_decodes_like_the_pipeline(exported, tmp_path, name):
    path = tmp_path / name
    WRITERS[name](path)
    namespace: dict = {}
    exec(readme_snippet().replace(SNIPPET_FILE, repr(str(path))), namespace)  # noqa: S102

    expected = load_rgb(path)
    np.testing.assert_array_equal(namespace["image"], expected)
    np.testing.assert_allclose(namespace["probs"], exported.predict(expected[None], verbose=0), rtol=0, atol=1e-7)
    with Image.open(path) as image:
        naive = np.asarray(image.convert("RGB"))
    assert naive.shape != expected.shape or not np.array_equal(naive, expected), "this file tests nothing"
