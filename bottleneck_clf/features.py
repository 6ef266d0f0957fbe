"""Running the VGG16 conv base over images, and storing its outputs split by split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bottleneck_clf.images import load_array
from bottleneck_clf.vgg_weights import assign, build_conv_base, read_weights

META_FILE = "meta.json"


def feature_shape(image_size: int, pooling: str) -> tuple[int, ...]:
    """VGG16 halves the map five times; pooling keeps only the 512 channels."""
    if pooling == "flatten":
        side = image_size // 32
        return (side, side, 512)
    return (512,)


def build_extractor(weights: str | Path, image_size: int, pooling: str):
    """The frozen conv base with the given weights; `pooling` is flatten (keep the map), avg or max."""
    base = build_conv_base(image_size, None if pooling == "flatten" else pooling)
    assign(base, read_weights(weights))
    base.trainable = False
    return base


def image_batches(paths: list[str], image_size: int, interpolation: str, batch_size: int):
    """uint8 batches, decoded and resized on parallel threads while the model runs."""
    import tensorflow as tf

    def load(path: bytes) -> np.ndarray:
        return load_array(path.decode("utf-8"), image_size, interpolation)

    def load_tensor(path):
        image = tf.numpy_function(load, [path], tf.uint8, stateful=False)
        image.set_shape((image_size, image_size, 3))
        return image

    dataset = tf.data.Dataset.from_tensor_slices(tf.constant([str(p) for p in paths], dtype=tf.string))
    dataset = dataset.map(load_tensor, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(2)


def compute_features(model, paths: list[str], image_size: int, interpolation: str, batch_size: int,
                     out: np.ndarray, desc: str = "extract") -> None:
    """Fill `out` (N, ...) with the model's outputs for `paths`, batch by batch, so memory stays flat."""
    import keras
    from tqdm import tqdm

    start = 0
    with tqdm(total=len(paths), desc=desc, unit="img", mininterval=2.0) as bar:
        for batch in image_batches(paths, image_size, interpolation, batch_size):
            x = keras.applications.vgg16.preprocess_input(batch.numpy().astype(np.float32))
            values = model.predict_on_batch(x)
            out[start : start + len(values)] = values
            start += len(values)
            bar.update(len(values))
    if start != len(paths):
        raise RuntimeError(f"{desc}: produced {start} feature rows for {len(paths)} images")


def extract_features(paths: list[str], weights: str | Path, image_size: int, batch_size: int,
                     pooling: str = "avg", interpolation: str = "bilinear") -> np.ndarray:
    """Features of `paths` as one in-memory array (for small sets; the stage streams to disk instead)."""
    model = build_extractor(weights, image_size, pooling)
    out = np.empty((len(paths), *feature_shape(image_size, pooling)), np.float32)
    compute_features(model, paths, image_size, interpolation, batch_size, out)
    return out


def split_files(directory: Path, split: str) -> dict[str, Path]:
    return {kind: directory / f"{split}_{kind}.npy" for kind in ("features", "labels", "ids")}


def load_split(directory: str | Path, split: str, mmap: bool = True):
    """(features, labels, ids) of one split; features are memory-mapped so nothing is read until used."""
    files = split_files(Path(directory), split)
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise ValueError(f"{', '.join(missing)}: missing; rerun `dvc repro extract_features`")
    features = np.load(files["features"], mmap_mode="r" if mmap else None, allow_pickle=False)
    labels = np.load(files["labels"], allow_pickle=False)
    ids = np.load(files["ids"], allow_pickle=False)
    return features, labels, ids


def load_meta(directory: str | Path) -> dict:
    path = Path(directory) / META_FILE
    if not path.exists():
        raise ValueError(f"{path}: missing; rerun `dvc repro extract_features`")
    return json.loads(path.read_text(encoding="utf-8"))
