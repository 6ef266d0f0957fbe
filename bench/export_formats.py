"""Images per second and file size of every export format, measured side by side in one run on this machine.

    python bench/export_formats.py [--weights data/weights/vgg16_notop.weights.h5] [--images 64] [--batch-size 32]

Builds the shipped classifier at 224 px (export.py) with the real VGG16 conv weights when the weights file is there
(`dvc repro weights` makes it), else random ones (speed does not depend on the values), and a random-weight head
(256 units, avg pooling: the default params; the head is 0.1 % of the work). Writes every format
(bottleneck_clf/runtimes.py: int8 calibrated on seeded random images) into a temporary folder, then times each
runtime on the same resized images, `--batch-size` per call, after one warm-up batch. Decoding and resizing are
the same for every format and left out. Results go to bench/results/export-formats.md, headed by the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import report  # noqa: E402

import bottleneck_clf  # noqa: E402,F401  (quiet TensorFlow before it loads)

FORMATS = ("keras", "saved_model", "litert_float32", "litert_int8", "onnx")


def build(weights_file: Path):
    import keras

    from bottleneck_clf.config import ExtractConfig
    from bottleneck_clf.export import build_classifier
    from bottleneck_clf.finetune import build_top
    from bottleneck_clf.head import build_head
    from bottleneck_clf.vgg_weights import LAYER_NAMES, read_weights

    keras.utils.set_random_seed(0)
    if weights_file.exists():
        weights, source = read_weights(weights_file), f"real VGG16 ImageNet weights ({weights_file.name})"
    else:
        vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(224, 224, 3))
        weights = {name: tuple(vgg.get_layer(name).get_weights()) for name in LAYER_NAMES}
        source = "random VGG16 weights (no weights file; speed does not depend on the values)"
    extract = ExtractConfig(image_size=224, interpolation="bilinear", pooling="avg", batch_size=32,
                            precision="float32")
    top = build_top((7, 7, 512), 0, "avg", None, build_head((512,), 2, 256, 0.5))
    return build_classifier(weights, top, 0, 2, extract), source


def main() -> None:
    from bottleneck_clf.model_files import save_model
    from bottleneck_clf.runtimes import FILES, file_bytes, load_runner, write_litert, write_onnx, write_saved_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=ROOT / "data/weights/vgg16_notop.weights.h5")
    parser.add_argument("--images", type=int, default=64, help="timed images per format (default 64)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--calibration", type=int, default=32, help="int8 calibration images (default 32)")
    args = parser.parse_args()

    model, source = build(args.weights)
    rng = np.random.default_rng(0)
    # Smooth random images, resized the pipeline way would be the same shape: (n, 224, 224, 3) floats 0-255.
    images = rng.uniform(0, 255, (args.images, 224, 224, 3)).astype(np.float32)
    calibration = rng.uniform(0, 255, (args.calibration, 224, 224, 3)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory(prefix="export-bench-") as scratch:
        folder = Path(scratch)
        writers = {
            "keras": lambda target: save_model(model, target),
            "saved_model": lambda target: write_saved_model(model, target),
            "litert_float32": lambda target: write_litert(model, target),
            "litert_int8": lambda target: write_litert(model, target, calibration),
            "onnx": lambda target: write_onnx(model, target),
        }
        runners, reference = {}, None
        for fmt in FORMATS:
            started = time.perf_counter()
            writers[fmt](folder / FILES[fmt])
            print(f"{fmt}: written in {time.perf_counter() - started:.1f} s", flush=True)
            runners[fmt] = load_runner(folder / FILES[fmt])
        for fmt, runner in runners.items():
            runner.run(images[: args.batch_size])  # warm-up: graph building, allocation
            started = time.perf_counter()
            probs = np.concatenate([runner.run(images[i:i + args.batch_size])
                                    for i in range(0, len(images), args.batch_size)])
            seconds = time.perf_counter() - started
            reference = probs if reference is None else reference
            rows.append((fmt, len(images) / seconds, file_bytes(folder / FILES[fmt]),
                         float(np.abs(probs - reference).max())))
            print(f"{fmt}: {rows[-1][1]:.2f} img/s", flush=True)
    keras_rate = rows[0][1]
    body = [f"Classifier at 224 px with {source}; a random head. {args.images} images per format, batches of "
            f"{args.batch_size}, after one warm-up batch; decoding and resizing (the same for all) left out. "
            "`largest diff` is the largest probability difference from the keras model on these images.", "",
            "| format | images/s | vs keras | file size (MB) | largest diff |", "|---|---|---|---|---|"]
    body += [f"| {fmt} | {rate:.2f} | {rate / keras_rate:.2f}x | {size / 1e6:.1f} | {diff:.1g} |"
             for fmt, rate, size, diff in rows]
    report.write("export-formats", "Export formats: speed and size", body)
    print("\n".join(body))


if __name__ == "__main__":
    main()
