"""The classifier in every runtime: SavedModel (TF Serving), LiteRT float32 and int8 (phones, boards), ONNX.

Each format is made by Keras' or TensorFlow's own exporter from the exported `.keras` model (export.py) and
read back by a `Runner` in its own runtime (tf.saved_model.load, the LiteRT interpreter, onnxruntime).

One decoding path. The `.keras` model and the SavedModel's `serving_default` take uint8 images of any size and
resize inside (keras.layers.Resizing, antialiased). That resize is TensorFlow's ScaleAndTranslate op, which
neither LiteRT nor ONNX has, so the LiteRT and ONNX files hold the model *after* the resize: float32 images of
(batch, image_size, image_size, 3) with values 0-255, exactly the tensor the Resizing layer hands on. Whoever runs
them resizes with `tf.image.resize(image, (size, size), method, antialias=True)` (`bottleneck_clf.images.resize`,
the op the pipeline and the Resizing layer run; size and method are in classes.json). `bottleneck predict` does
this for every format (the SavedModel has a second signature, `resized`, with that input), so all formats get
the same tensor and batches of any images are plain stacks.

int8: post-training full-integer quantization (weights and activations int8, calibrated on a seeded sample of
training images decoded and resized the pipeline way). Its input and output stay float32 (a quantize op in
front, a dequantize op behind): a uint8 input would have to be the resized image rounded to integers, which is
not the tensor the pipeline scores, and the output is compared as probabilities.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import numpy as np

from bottleneck_clf.errors import UserError

FORMATS = ("keras", "saved_model", "litert_float32", "litert_int8", "onnx")
# Inside the export stage's output folder, beside model.keras and classes.json.
FILES = {
    "keras": "model.keras",
    "saved_model": "saved_model",
    "litert_float32": "model_float32.tflite",
    "litert_int8": "model_int8.tflite",
    "onnx": "model.onnx",
}
NEEDS_EXTRA = {"litert_float32": "ai_edge_litert", "litert_int8": "ai_edge_litert", "onnx": "onnxruntime"}
RESIZED_SIGNATURE = "resized"  # the SavedModel's second signature: float32 images already resized
RESIZE_LAYER = "resize"        # export.build_classifier's Resizing layer


def require_extra(fmt: str, where: str) -> None:
    """UserError naming the pip command when `fmt` needs the [runtimes] extra and it is not installed."""
    modules = [NEEDS_EXTRA[fmt]] + (["tf2onnx"] if fmt == "onnx" and where == "export" else [])
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"{where}: format {fmt} needs the {module} package; run "
                            "`pip install -e '.[runtimes]'` (or drop it from export.formats in params.yaml)") from None


def resize_settings(model) -> tuple[int, str]:
    """(image size, tf.image.resize method) of the exported model's Resizing layer."""
    config = model.get_layer(RESIZE_LAYER).get_config()
    return int(config["height"]), config["interpolation"]


def after_resize(model):
    """The exported model from its Resizing layer's output on: float32 resized images in, probabilities out."""
    import keras

    size, _ = resize_settings(model)
    inputs = keras.Input(shape=(size, size, 3), dtype="float32", name="resized_image")
    x = inputs
    start = [layer.name for layer in model.layers].index(RESIZE_LAYER) + 1
    for layer in model.layers[start:]:
        x = layer(x, training=False) if isinstance(layer, keras.Model) else layer(x)
    return keras.Model(inputs, x, name="bottleneck_classifier_resized")


@contextlib.contextmanager
def _variables_in_name_order(model):
    """Keras' SavedModel export lists variables in an order that changes from process to process (so do the
    file's bytes and the DVC hash); sorted by name, the same model gives the same bytes. Names repeat when heads
    are nested (head.ensemble: every member has a dense/kernel:0), so ties go by the model's own weight order."""
    from keras.src.export import saved_model_export_archive as archive

    original = archive._list_variables_used_by_fns
    position = {id(getattr(weight, "value", weight)): index for index, weight in enumerate(model.weights)}

    def key(variable):
        return variable.name, position.get(id(variable), len(position))

    def sorted_lists(fns):
        trainable, others = original(fns)
        return sorted(trainable, key=key), sorted(others, key=key)

    archive._list_variables_used_by_fns = sorted_lists
    try:
        yield
    finally:
        archive._list_variables_used_by_fns = original


def _fixed_fingerprint(folder: Path) -> None:
    """fingerprint.pb carries a random uuid; replace it by the model's own checksum (stable bytes)."""
    from tensorflow.core.protobuf import fingerprint_pb2

    path = folder / "fingerprint.pb"
    if path.exists():
        fingerprint = fingerprint_pb2.FingerprintDef()
        fingerprint.ParseFromString(path.read_bytes())
        fingerprint.uuid = str(fingerprint.saved_model_checksum)
        path.write_bytes(fingerprint.SerializeToString(deterministic=True))


def write_saved_model(model, target: Path, classes_file: Path | None = None) -> None:
    """A SavedModel with `serving_default` (uint8 images of any size -> probabilities) and `resized` (float32
    resized images -> probabilities); classes.json (class names, threshold) in its assets/ folder."""
    import keras
    import tensorflow as tf

    size, _ = resize_settings(model)
    resized = after_resize(model)
    archive = keras.export.ExportArchive()
    archive.track(model)  # `resized` shares its layers and variables: stored once
    archive.add_endpoint("serving_default", lambda image: model(image, training=False),
                         input_signature=[tf.TensorSpec((None, None, None, 3), tf.uint8, name="image")])
    archive.add_endpoint(RESIZED_SIGNATURE, lambda image: resized(image, training=False),
                         input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32, name="image")])
    with _variables_in_name_order(model):
        archive.write_out(str(target), verbose=False)
    _fixed_fingerprint(Path(target))
    if classes_file is not None:
        (Path(target) / "assets").mkdir(exist_ok=True)
        shutil.copyfile(classes_file, Path(target) / "assets" / classes_file.name)


def write_litert(model, target: Path, calibration: np.ndarray | None = None) -> None:
    """A LiteRT flatbuffer of the model after its resize; int8 (full-integer) when `calibration` is given:
    float32 resized images, (n, size, size, 3), the quantization ranges are measured on."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="litert-") as scratch:
        resized = after_resize(model)
        resized.export(scratch, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(scratch)
        if calibration is not None:
            def samples():
                for image in calibration:
                    yield [image[None].astype(np.float32)]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = samples
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        Path(target).write_bytes(converter.convert())


def write_onnx(model, target: Path) -> None:
    """An ONNX model (tf2onnx, through Keras' exporter) of the model after its resize."""
    resized = after_resize(model)
    size, _ = resize_settings(model)
    resized.predict(np.zeros((1, size, size, 3), np.float32), verbose=0)  # the exporter needs a built call
    with contextlib.redirect_stdout(None):
        resized.export(str(target), format="onnx", verbose=False)


def format_of(path: Path) -> str:
    """The format of an exported file by its extension (a folder: a SavedModel); UserError when unknown."""
    path = Path(path)
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise UserError(f"{path}: a folder but not a SavedModel (no saved_model.pb); pass "
                            "data/models/classifier/saved_model or a model file")
        return "saved_model"
    if not path.is_file():
        raise UserError(f"{path}: model file not found; run `dvc repro export` to make one")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return "keras"
    if suffix == ".tflite":
        return "litert"  # float32 or int8: told by its tensors once loaded
    if suffix == ".onnx":
        return "onnx"
    raise UserError(f"{path}: unknown model format {suffix or '(no extension)'}; pass a .keras, .tflite or .onnx "
                    "file or a SavedModel folder")


class Runner:
    """A loaded export in its own runtime: `run(resized)` maps float32 (n, size, size, 3) to (n, classes)."""

    format: str
    image_size: int
    n_outputs: int

    def run(self, resized: np.ndarray) -> np.ndarray:  # pragma: no cover (each subclass has its own)
        raise NotImplementedError


class KerasRunner(Runner):
    format = "keras"

    def __init__(self, path: Path):
        import keras

        model = keras.saving.load_model(path, compile=False)
        self.image_size, self.interpolation = resize_settings(model)
        self.n_outputs = int(model.output_shape[-1])
        self.model = after_resize(model)

    def run(self, resized):
        return np.asarray(self.model(resized, training=False), np.float64)


class SavedModelRunner(Runner):
    format = "saved_model"

    def __init__(self, path: Path):
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        if RESIZED_SIGNATURE not in loaded.signatures:
            raise UserError(f"{path}: a SavedModel without the `{RESIZED_SIGNATURE}` signature; export it with "
                            "`dvc repro export` (export.formats: saved_model)")
        self.loaded = loaded
        self.function = loaded.signatures[RESIZED_SIGNATURE]
        spec = self.function.structured_input_signature[1]["image"]
        self.image_size = int(spec.shape[1])
        self.n_outputs = int(next(iter(self.function.structured_outputs.values())).shape[-1])

    def run(self, resized):
        import tensorflow as tf

        out = self.function(image=tf.constant(resized, tf.float32))
        return np.asarray(next(iter(out.values())), np.float64)


class LiteRTRunner(Runner):
    def __init__(self, path: Path):
        require_extra("litert_float32", "predict")
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path))
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        quantized = any(t["dtype"] == np.int8 for t in self.interpreter.get_tensor_details())
        self.format = "litert_int8" if quantized else "litert_float32"
        self.image_size = int(self.input["shape"][1])
        self.n_outputs = int(self.output["shape"][-1])
        self.batch = 0

    def run(self, resized):
        if len(resized) != self.batch:
            self.interpreter.resize_tensor_input(self.input["index"], (len(resized), *self.input["shape"][1:]))
            self.interpreter.allocate_tensors()
            self.batch = len(resized)
        self.interpreter.set_tensor(self.input["index"], np.ascontiguousarray(resized, np.float32))
        self.interpreter.invoke()
        return np.asarray(self.interpreter.get_tensor(self.output["index"]), np.float64)


class OnnxRunner(Runner):
    format = "onnx"

    def __init__(self, path: Path):
        require_extra("onnx", "predict")
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.image_size = int(self.input.shape[1])
        self.n_outputs = int(self.session.get_outputs()[0].shape[-1])

    def run(self, resized):
        return np.asarray(self.session.run(None, {self.input.name: np.asarray(resized, np.float32)})[0], np.float64)


RUNNERS = {"keras": KerasRunner, "saved_model": SavedModelRunner, "litert": LiteRTRunner, "onnx": OnnxRunner}


def load_runner(path: Path) -> Runner:
    """The export at `path` in its own runtime; a corrupted or truncated file is a UserError, not a traceback."""
    path = Path(path)
    kind = format_of(path)
    if kind in ("litert", "onnx"):
        require_extra("onnx" if kind == "onnx" else "litert_float32", "predict")
    try:
        return RUNNERS[kind](path)
    except UserError:
        raise
    except Exception as exc:  # every runtime has its own exception types for a broken file
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: cannot be loaded as {kind} ({type(exc).__name__}: {reason}); the file is "
                        "damaged or not an export of this project: rerun `dvc repro export`") from None


def batched(runner: Runner, images: list[np.ndarray], batch_size: int) -> np.ndarray:
    """(n, classes) probabilities of float32 resized images, `batch_size` per runtime call."""
    chunks = [runner.run(np.stack(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, runner.n_outputs))


# Formats whose probabilities must match evaluate's (predictions.csv, 6 decimals) within this; int8 is reported.
# Measured on the tiny test project: 0 for keras and saved_model (evaluate's own float32 graph), up to about 1e-6
# for LiteRT float32 (XNNPACK kernels) and ONNX Runtime (README, "Shipping: formats and runtimes").
FLOAT_AGREEMENT = 1e-4
FLOAT_FORMATS = ("keras", "saved_model", "litert_float32", "onnx")


def calibration_sample(entries, raw: Path, count: int, seed: int, image_size: int, interpolation: str) -> np.ndarray:
    """float32 (n, size, size, 3): `count` training images (a seeded sample of the manifest's train split),
    decoded and resized the pipeline way, for int8 calibration."""
    from bottleneck_clf.images import load_array

    train = sorted((e for e in entries if e.split == "train"), key=lambda e: e.path)
    if not train:
        raise UserError("export: litert_int8 needs training images to calibrate on, and the manifest lists none; "
                        "rerun `dvc repro prepare`")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(train), size=min(count, len(train)), replace=False)
    return np.stack([load_array(raw / train[i].path, image_size, interpolation) for i in sorted(chosen)])


def read_reference(path: Path, classes: list[str]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """evaluate's predictions.csv: (image paths, actual class indices, predicted indices, probabilities)."""
    import csv

    if not Path(path).exists():
        raise UserError(f"{path}: not found; export checks every format against evaluate's predictions: "
                        "run `dvc repro evaluate` first")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    index = {name: i for i, name in enumerate(classes)}
    try:
        ids = [row["path"] for row in rows]
        actual = np.array([index[row["actual"]] for row in rows], np.int64)
        predicted = np.array([index[row["predicted"]] for row in rows], np.int64)
        probs = np.array([[float(row[f"p_{name}"]) for name in classes] for row in rows], np.float64)
    except (KeyError, ValueError) as exc:
        raise UserError(f"{path}: does not match the features' classes {classes} ({exc}); rerun "
                        "`dvc repro evaluate`") from None
    return ids, actual, predicted, probs.reshape(len(rows), len(classes))


def check_sample(reference: tuple, count: int, seed: int) -> tuple:
    """The rows of evaluate's predictions (read_reference) each format is checked on: all of them, or with
    `count` (export.check_images) fewer than the split holds a seeded sample of that many, in their order. Each
    format runs the whole VGG16 on every image it checks: a split of a million would cost days per format."""
    ids = reference[0]
    if count == 0 or count >= len(ids):
        return reference
    chosen = np.sort(np.random.default_rng(seed).choice(len(ids), size=count, replace=False))
    return ([ids[i] for i in chosen], *(part[chosen] for part in reference[1:]))


def file_bytes(path: Path) -> int:
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def check_formats(folder: Path, formats: list[str], image_paths: list[Path], reference: tuple, threshold: float,
                  image_size: int, interpolation: str, batch_size: int = 32) -> dict[str, dict]:
    """Each written format loaded in its own runtime and run on evaluate's images (`reference`, check_sample):
    per format, the largest probability difference from evaluate's, the share of equal labels, the accuracy with
    its 95 % interval and the file's size.

    UserError when a float format is more than FLOAT_AGREEMENT from evaluate's probabilities (a broken export).
    """
    import sys

    from tqdm import tqdm

    from bottleneck_clf.images import load_array
    from bottleneck_clf.scoring import accuracy_ci95, predict_labels

    _, actual, predicted, expected = reference
    runners = {fmt: load_runner(folder / FILES[fmt]) for fmt in formats}
    got: dict[str, list[np.ndarray]] = {fmt: [] for fmt in formats}
    for start in tqdm(range(0, len(image_paths), batch_size), desc="export: check formats", unit="batch",
                      disable=len(image_paths) <= batch_size, file=sys.stderr):
        chunk = [load_array(p, image_size, interpolation) for p in image_paths[start:start + batch_size]]
        for fmt, runner in runners.items():
            got[fmt].append(runner.run(np.stack(chunk)))
    results = {}
    for fmt in formats:
        probs = np.concatenate(got[fmt]) if got[fmt] else np.zeros_like(expected)
        labels = predict_labels(probs, threshold)
        results[fmt] = {
            "max_abs_prob_diff": float(np.abs(probs - expected).max()) if len(probs) else 0.0,
            "label_agreement": float(np.mean(labels == predicted)) if len(probs) else 1.0,
            "accuracy": float(np.mean(labels == actual)) if len(probs) else 0.0,
            "accuracy_ci95": accuracy_ci95(labels == actual),
            "file_bytes": file_bytes(folder / FILES[fmt]),
        }
    bad = {fmt: r["max_abs_prob_diff"] for fmt, r in results.items()
           if fmt in FLOAT_FORMATS and r["max_abs_prob_diff"] > FLOAT_AGREEMENT}
    if bad:
        listed = ", ".join(f"{fmt} {diff:.2g}" for fmt, diff in bad.items())
        raise UserError(f"export: {listed} off evaluate's probabilities by more than {FLOAT_AGREEMENT} "
                        "(metrics/eval/predictions.csv); run `dvc repro` so export and evaluate see the same model")
    return results
