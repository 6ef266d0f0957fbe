"""Running the VGG16 conv base over images, and storing its outputs split by split."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import sys
from pathlib import Path

import numpy as np

from bottleneck_clf import images, vgg_weights
from bottleneck_clf.config import ExtractConfig
from bottleneck_clf.errors import UserError
from bottleneck_clf.feature_cache import FeatureCache
from bottleneck_clf.images import decode_rgb, resize
from bottleneck_clf.params import PRECISIONS
from bottleneck_clf.vgg_weights import assign, build_conv_base, read_weights

META_FILE = "meta.json"
IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)


class ChangedImage(UserError):
    """An image file whose bytes are not those the manifest's sha256 names: it changed after `prepare`."""


def source_digest(*objects) -> str:
    """sha256 of the source code of modules, classes or functions: it changes with any edit to them."""
    digest = hashlib.sha256()
    for obj in objects:
        digest.update(inspect.getsource(obj).encode("utf-8"))
    return digest.hexdigest()[:20]


def feature_code() -> tuple:
    """The code a feature value goes through: decoding, EXIF, RGB rule, resize (images), batching, one image a
    VGG16 call and preprocessing (this module), the model build and weight reading (vgg_weights), the stored form,
    and on a Ray cluster the tasks and actors that decode and encode there (engine: what reaches the model).

    Whole modules, so an edit anywhere in them (a comment too) is a cache miss: the safe side. Of engine only
    the parts on the values' path and those that name the machines in the key (node_signatures,
    signature_text), so that editing how it connects to a cluster keeps the cache.
    """
    from bottleneck_clf import engine

    return (images, sys.modules[__name__], vgg_weights, FeatureCache, engine.RayEngine.encoder, engine.RayEngine.run,
            engine.read_files, engine.decode_files, engine.VggActor, engine.RayEngine.node_signatures,
            engine.signature_text)


def made_on(engine) -> list[dict]:
    """The machines that compute the features: this process's, or one of each kind among the Ray cluster's
    nodes. In the feature cache's key, because the machine decides the round-off (machine.py: CPU flags,
    cores, GPU, oneDNN switches, numpy): a cache shared between machines (a BOTTLENECK_FEATURE_CACHE on a
    network disk, a home folder mounted on several) never serves one machine another's features."""
    from bottleneck_clf.machine import signature

    return [signature()] if engine is None else engine.node_signatures()


def feature_shape(image_size: int, pooling: str, flip_tta: str = "none") -> tuple[int, ...]:
    """VGG16 halves the map five times; pooling keeps only the 512 channels; flip_tta "stack" puts the mirrored
    image's channels beside them."""
    channels = 1024 if flip_tta == "stack" else 512
    if pooling == "flatten":
        side = image_size // 32
        return (side, side, channels)
    return (channels,)


def combine_flips(plain: np.ndarray, mirrored: np.ndarray, flip_tta: str) -> np.ndarray:
    """An image's features and its mirror's as one feature (extract.flip_tta): their mean, or both side by side
    on the channel axis. export.build_classifier does the same with Keras layers."""
    if flip_tta == "average":
        return (plain + mirrored) * np.float32(0.5)
    if flip_tta == "stack":
        return np.concatenate([plain, mirrored], axis=-1)
    raise ValueError(f"flip_tta {flip_tta!r} combines nothing")


def vgg_preprocessing():
    """keras.applications.vgg16.preprocess_input as a frozen 1x1 convolution (safe to load, no Lambda): for the
    exported classifier and for fine-tuning on pixels, where the preprocessing is part of the model."""
    import keras

    layer = keras.layers.Conv2D(3, 1, name="vgg16_preprocessing", trainable=False)
    layer.build((None, None, None, 3))
    flip = np.zeros((1, 1, 3, 3), np.float32)
    for channel in range(3):
        flip[0, 0, channel, 2 - channel] = 1.0  # input RGB channel c becomes BGR channel 2 - c
    layer.set_weights([flip, -np.asarray(IMAGENET_MEAN_BGR, np.float32)])
    return layer


def build_extractor(weights, image_size: int, pooling: str, precision: str = "float32", output: str | None = None):
    """The frozen conv base with the given weights (a path or read weights); pooling flatten|avg|max.

    `output` names an inner layer (e.g. "block4_pool") to stop at instead; pooling is then ignored.
    `precision="bfloat16"` computes under Keras' mixed_bfloat16 policy (variables stay float32).
    """
    import keras

    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; valid choices: {', '.join(PRECISIONS)}")
    if isinstance(weights, str | Path):
        weights = read_weights(weights)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        base = build_conv_base(image_size, None if pooling == "flatten" or output else pooling)
    finally:
        keras.config.set_dtype_policy(previous)
    assign(base, weights)
    if output is not None:
        base = keras.Model(base.input, base.get_layer(output).output, name=f"vgg16_to_{output}")
    base.trainable = False
    return base


def fingerprint(weights_digest: str, extract: ExtractConfig) -> dict:
    """The settings, code and libraries that change a feature value; with the machine that computes it
    (made_on, beside this in the cache's key), everything down to float round-off."""
    import keras
    import PIL
    import tensorflow as tf

    return {
        # Not a name someone must remember to bump: a digest of the code itself (feature_code).
        "code": source_digest(*feature_code()),
        "weights_digest": weights_digest,
        "image_size": extract.image_size,
        "interpolation": extract.interpolation,
        "pooling": extract.pooling,
        "precision": extract.precision,
        # Not the batch size: encode_batch runs VGG16 one image at a time, so it changes no value.
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "backend": keras.backend.backend(),
                     "pillow": PIL.__version__},
    }


def read_checked(path: str, sha256: str | None) -> bytes:
    """The file's bytes, checked against the manifest's sha256 (when given) before anyone decodes them."""
    data = Path(path).read_bytes()
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        # Encoding it would store the new image's features under the old image's digest, for good.
        raise ChangedImage(
            f"{path}: changed since `prepare` hashed it (manifest sha256 {sha256[:12]}..., file now "
            f"{hashlib.sha256(data).hexdigest()[:12]}...); run `dvc repro` (not a single stage) so that prepare "
            "records the new bytes"
        )
    return data


def image_batches(paths: list[str], image_size: int, interpolation: str, batch_size: int,
                  digests: list[str] | None, changed: list[ChangedImage]):
    """float32 batches of resized RGB images, decoded and resized on parallel threads while the model runs.

    Each file is read once, and the very bytes decoded are checked against `digests`; a mismatch is appended
    to `changed` (TensorFlow wraps exceptions from its threads into its own) and stops the dataset.
    """
    import tensorflow as tf

    def load(path: bytes, digest: bytes) -> np.ndarray:
        try:
            data = read_checked(path.decode("utf-8"), digest.decode("ascii"))
        except ChangedImage as exc:
            changed.append(exc)
            raise
        return np.asarray(decode_rgb(data), dtype=np.uint8)

    def load_tensor(path, digest):
        image = tf.numpy_function(load, [path, digest], tf.uint8, stateful=False)
        image.set_shape((None, None, 3))
        resized = resize(image, image_size, interpolation)
        resized.set_shape((image_size, image_size, 3))
        return resized

    digests = list(digests) if digests is not None else [""] * len(paths)
    dataset = tf.data.Dataset.from_tensor_slices((tf.constant([str(p) for p in paths], dtype=tf.string),
                                                  tf.constant(digests, dtype=tf.string)))
    dataset = dataset.map(load_tensor, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(2)


def encode_batch(model, pixels: np.ndarray, mirror: bool = False) -> np.ndarray:
    """float32 features of resized images (float32, n x side x side x 3), in order; of the images flipped left
    to right with `mirror` (extract.flip_tta).

    One image per call, so that an image goes through the same kernels whatever batch it came in and wherever
    it sat in it: on AVX2-only CPUs TensorFlow's Eigen kernels computed the last image of a batch 1e-7 apart
    from the same image elsewhere, so a padded batch still made a feature depend on its place. That keeps a
    cached feature bitwise equal to a fresh one, and the Ray engine's equal to this process's (both call this
    function). On a CPU one image a call is as fast as a batch of 32 (bench/encode_batch_bench.py).
    """
    import keras

    if mirror:
        pixels = np.ascontiguousarray(pixels[:, :, ::-1, :])  # a copy: preprocess_input works in place
    x = keras.applications.vgg16.preprocess_input(pixels.astype(np.float32, copy=False))
    features = np.empty((len(x), *model.output_shape[1:]), np.float32)
    for i in range(len(x)):
        features[i] = np.asarray(model.predict_on_batch(x[i:i + 1]), dtype=np.float32)[0]
    return features


def resized_pixels(data: bytes, image_size: int, interpolation: str) -> np.ndarray:
    """One image file's bytes decoded and resized as `image_batches` does it: float32 (side, side, 3)."""
    return np.asarray(resize(np.asarray(decode_rgb(data), dtype=np.uint8), image_size, interpolation), np.float32)


def iter_features(model, paths: list[str], image_size: int, interpolation: str, batch_size: int,
                  digests: list[str] | None = None, mirror: bool = False):
    """float32 features of `paths` (mirrored: of the images flipped left to right), one batch at a time, in
    order; ChangedImage if a file is not `digests`."""
    for pixels in iter_pixels(paths, image_size, interpolation, batch_size, digests):
        yield encode_batch(model, pixels, mirror)


def iter_pixels(paths: list[str], image_size: int, interpolation: str, batch_size: int,
                digests: list[str] | None = None):
    """Batches of the images decoded and resized as for the features (float32), checked against `digests`;
    ChangedImage if a file is not `digests`."""
    import tensorflow as tf

    changed: list[ChangedImage] = []
    try:
        for batch in image_batches(paths, image_size, interpolation, batch_size, digests, changed):
            yield batch.numpy()
    except tf.errors.OpError:
        if changed:
            raise changed[0] from None  # the user's message, not TensorFlow's wrapper around it
        raise


def fill_features(model, paths: list[str], digests: list[str], out: np.ndarray, cache, extract: ExtractConfig,
                  desc: str = "extract", encode=None) -> tuple[int, int]:
    """Fill `out` row by row from `cache`, encoding only images (by content) it lacks.

    Returns (encoded, from cache). Duplicates are encoded once. `cache` may be None. The misses are encoded
    holding the cache's lock for these settings, after looking them up again: another process (a queued
    experiment in another workspace) may have encoded them while this one waited.

    `encode(paths, digests)` yields the features of the misses in order, a batch at a time; by default `model`
    in this process (`iter_features`); the Ray engine passes its own (bottleneck_clf/engine.py).
    """
    if encode is None:
        def encode(todo_paths, todo_digests):
            return iter_features(model, todo_paths, extract.image_size, extract.interpolation, extract.batch_size,
                                 todo_digests)

    from tqdm import tqdm

    rows_of: dict[str, list[int]] = {}
    for row, digest in enumerate(digests):
        rows_of.setdefault(digest, []).append(row)
    from_cache = 0

    def missing(wanted: list[str]) -> list[str]:
        """The digests of `wanted` the cache lacks; the others' rows filled from it."""
        nonlocal from_cache
        lacking = []
        for digest in wanted:
            value = cache.get(digest, out.shape[1:], out.dtype) if cache is not None else None
            if value is None:
                lacking.append(digest)
                continue
            # A cached value is only right for unchanged bytes.
            for row in rows_of[digest]:
                read_checked(paths[row], digest)
            out[rows_of[digest]] = value
            from_cache += len(rows_of[digest])
        return lacking

    todo = missing(list(rows_of))
    with cache.encoding() if cache is not None and todo else contextlib.nullcontext():
        if cache is not None and todo:
            todo = missing(todo)
        for digest in todo:  # the first file of each is checked as it is decoded below
            for row in rows_of[digest][1:]:
                read_checked(paths[row], digest)
        with tqdm(total=len(todo), desc=f"{desc} ({from_cache} from cache)", unit="img", mininterval=2.0) as bar:
            start = 0
            todo_paths = [paths[rows_of[d][0]] for d in todo]
            for values in encode(todo_paths, todo) if todo else ():
                for digest, value in zip(todo[start : start + len(values)], values, strict=True):
                    out[rows_of[digest]] = value
                    if cache is not None:
                        cache.put(digest, value)
                start += len(values)
                bar.update(len(values))
    if start != len(todo):
        raise RuntimeError(f"{desc}: produced {start} feature rows for {len(todo)} images")
    return len(todo), from_cache


def fill_memmap(target: Path, model, paths: list[str], digests: list[str], *, shape: tuple[int, ...], cache,
                extract: ExtractConfig, desc: str, encode=None) -> tuple[int, int]:
    """`fill_features` streamed into a new `.npy` file at `target`: memory is bounded by the batch size."""
    out = np.lib.format.open_memmap(target, mode="w+", dtype=np.float32, shape=(len(paths), *shape))
    counts = fill_features(model, paths, digests, out, cache, extract, desc=desc, encode=encode)
    out.flush()
    del out
    return counts


def model_or_encoder(engine, weights, extract: ExtractConfig, pooling: str, output: str | None = None):
    """(model, None) to run the conv base in this process when `engine` is None, else (None, the engine's
    `encode` for fill_features): how Extractor and finetune's FrozenMaps both choose where VGG16 runs."""
    if engine is None:
        return build_extractor(weights, extract.image_size, pooling, extract.precision, output=output), None
    return None, engine.encoder(weights, extract, pooling, output)


def mirror_encoder(model, engine, weights, extract: ExtractConfig, pooling: str):
    """fill_features' `encode` for the images flipped left to right: `model` here, or the engine's actors."""
    if engine is not None:
        return engine.encoder(weights, extract, pooling, None, mirror=True)

    def encode(paths: list[str], digests: list[str]):
        return iter_features(model, paths, extract.image_size, extract.interpolation, extract.batch_size, digests,
                             mirror=True)

    return encode


class Extractor:
    """The frozen conv base for one `extract` setting, with the feature cache of exactly that setting."""

    def __init__(self, weights, extract: ExtractConfig, cache_root: Path, engine=None):
        """`engine`: None runs the model in this process; else one whose `encoder(weights, extract, pooling,
        output)` gives `fill_features` its `encode` (the Ray engine). Either way only cache misses are sent."""
        self.extract = extract
        self.fingerprint = fingerprint(vgg_weights.weights_digest(weights), extract)
        machines = made_on(engine)  # the cache's key only: meta.json keeps the settings, metrics/machine the rest
        self.cache = FeatureCache(cache_root, {**self.fingerprint, "made_on": machines})
        self.model, self.encode = model_or_encoder(engine, weights, extract, extract.pooling)
        self.shape = feature_shape(extract.image_size, extract.pooling, extract.flip_tta)
        # The mirrored images' features: a cache of their own, so that `none` and both combinations share them.
        self.passes = [("extract", self.cache, self.encode)]
        if extract.flip_tta != "none":
            self.passes.append(("extract mirrored", FeatureCache(cache_root, {**self.fingerprint, "made_on": machines,
                                                                               "mirror": True}),
                                mirror_encoder(self.model, engine, weights, extract, extract.pooling)))

    def write_splits(self, directory: Path, splits: dict[str, list], raw: Path, classes: list[str]):
        """Features, labels and ids of each split's manifest entries, as `.npy` files in `directory`.

        The cache misses of all splits are encoded in one pass (one actor pool on Ray, not one per split), and
        with extract.flip_tta in a second pass over the mirrored images.
        Returns (encoded, from cache), as `fill_features`, summed over the passes.
        """
        files = {split: split_files(directory, split) for split in splits}
        parts = [np.lib.format.open_memmap(files[split]["features"], mode="w+", dtype=np.float32,
                                           shape=(len(entries), *self.shape)) for split, entries in splits.items()]
        every = [e for entries in splits.values() for e in entries]
        paths, digests = [str(raw / e.path) for e in every], [e.sha256 for e in every]
        if len(self.passes) == 1:
            counts = fill_features(self.model, paths, digests, RowsOf(parts), self.cache, self.extract,
                                   desc="extract", encode=self.encode)
        else:
            counts = self._write_flips(paths, digests, parts)
        for part in parts:
            part.flush()
        del parts
        for split, entries in splits.items():
            np.save(files[split]["labels"], np.array([classes.index(e.label) for e in entries], np.int32))
            np.save(files[split]["ids"], np.array([e.path for e in entries], dtype=np.str_))
        return counts

    def _write_flips(self, paths: list[str], digests: list[str], parts: list[np.ndarray]) -> tuple[int, int]:
        """Each image's features and its mirror's (each pass through its own cache), combined into `parts`."""
        import tempfile

        single = feature_shape(self.extract.image_size, self.extract.pooling)
        counts = np.zeros(2, np.int64)
        with tempfile.TemporaryDirectory(prefix="extract-flips-") as scratch:
            done = []
            for desc, cache, encode in self.passes:
                out = np.lib.format.open_memmap(Path(scratch) / f"{len(done)}.npy", mode="w+", dtype=np.float32,
                                                shape=(len(paths), *single))
                counts += fill_features(self.model, paths, digests, out, cache, self.extract, desc=desc,
                                        encode=encode)
                done.append(out)
            plain, mirrored = done
            start = 0
            for part in parts:
                for row in range(0, len(part), 1024):  # a block at a time: memory stays bounded
                    rows = slice(start + row, start + min(row + 1024, len(part)))
                    part[row:row + 1024] = combine_flips(plain[rows], mirrored[rows], self.extract.flip_tta)
                start += len(part)
            del plain, mirrored, done, out
        return int(counts[0]), int(counts[1])


class RowsOf:
    """Several arrays of rows seen as one, for `fill_features` to write into (`out[rows] = value`)."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(part) for part in parts])
        self.shape = (int(self.starts[-1]), *parts[0].shape[1:])
        self.dtype = parts[0].dtype

    def __setitem__(self, rows: list[int], value: np.ndarray) -> None:
        for row in rows:
            part = int(np.searchsorted(self.starts, row, side="right")) - 1
            self.parts[part][row - self.starts[part]] = value


def split_files(directory: Path, split: str) -> dict[str, Path]:
    return {kind: directory / f"{split}_{kind}.npy" for kind in ("features", "labels", "ids")}


def load_split(directory: str | Path, split: str):
    """(features, labels, ids) of one split; features are memory-mapped so nothing is read until used."""
    files = split_files(Path(directory), split)
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise UserError(f"{', '.join(missing)}: missing; rerun `dvc repro extract_features`")
    features = np.load(files["features"], mmap_mode="r", allow_pickle=False)
    labels = np.load(files["labels"], allow_pickle=False)
    ids = np.load(files["ids"], allow_pickle=False)
    return features, labels, ids


def load_meta(directory: str | Path) -> dict:
    path = Path(directory) / META_FILE
    if not path.exists():
        raise UserError(f"{path}: missing; rerun `dvc repro extract_features`")
    return json.loads(path.read_text(encoding="utf-8"))
