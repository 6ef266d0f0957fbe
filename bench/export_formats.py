"""Images per second and file size of every export format, measured side by side in one run on this machine.

    python bench/export_formats.py [--weights data/weights/vgg16_notop.weights.h5] [--image-size 288]
                                   [--images 64] [--batch-size 32] [--rounds 3]

Builds the shipped classifier at params.yaml's image size (export.py) with the real VGG16 conv weights when the
weights file is there (`dvc repro weights` makes it), else random ones (speed does not depend on the values),
and a random-weight head (256 units, avg pooling: the default params; the head is 0.1 % of the work). Writes
every format (bottleneck_clf/runtimes.py: int8 calibrated on seeded random images) into a temporary folder,
then times each runtime on the same resized images, `--batch-size` per call, after one warm-up batch. The
formats take turns, one pass over the images each per round, and each rate is the median of its rounds, so a
slow spell of the machine lands on every format instead of one. Decoding and resizing are the same for every
format and left out. Results go to bench/results/export-formats.md, headed by the machine and the runtimes'
versions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import report  # noqa: E402

import bottleneck_clf  # noqa: E402,F401  (quiet TensorFlow before it loads)

FORMATS = ("keras", "saved_model", "litert_float32", "litert_int8", "onnx")
RUNTIMES = ("onnx", "onnxruntime", "tf2onnx", "ai-edge-litert")


def build(weights_file: Path, size: int):
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
        vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(size, size, 3))
        weights = {name: tuple(vgg.get_layer(name).get_weights()) for name in LAYER_NAMES}
        source = "random VGG16 weights (no weights file; speed does not depend on the values)"
    extract = ExtractConfig(image_size=size, interpolation="bilinear", pooling="avg", batch_size=32,
                            precision="float32")
    top = build_top((size // 32, size // 32, 512), 0, "avg", None, build_head((512,), 2, 256, 0.5))
    return build_classifier(weights, top, 0, 2, extract), source


def main() -> None:
    from bottleneck_clf.model_files import save_model
    from bottleneck_clf.runtimes import FILES, file_bytes, load_runner, write_litert, write_onnx, write_saved_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=ROOT / "data/weights/vgg16_notop.weights.h5")
    default_size = yaml.safe_load((ROOT / "params.yaml").read_text())["extract"]["image_size"]
    parser.add_argument("--image-size", type=int, default=default_size,
                        help=f"side in pixels (default params.yaml's, {default_size})")
    parser.add_argument("--rounds", type=int, default=3, help="turns each format takes (default 3)")
    parser.add_argument("--images", type=int, default=64, help="timed images per format (default 64)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--calibration", type=int, default=32, help="int8 calibration images (default 32)")
    args = parser.parse_args()
    if min(args.rounds, args.images, args.batch_size, args.calibration) < 1 or args.image_size < 32:
        parser.error("--rounds, --images, --batch-size and --calibration must be at least 1, --image-size at least 32")

    size = args.image_size
    model, source = build(args.weights, size)
    rng = np.random.default_rng(0)
    # Random pixels of the shape resizing gives: (n, size, size, 3) floats 0-255.
    images = rng.uniform(0, 255, (args.images, size, size, 3)).astype(np.float32)
    calibration = rng.uniform(0, 255, (args.calibration, size, size, 3)).astype(np.float32)
    seconds, outputs = {fmt: [] for fmt in FORMATS}, {}
    with tempfile.TemporaryDirectory(prefix="export-bench-") as scratch:
        folder = Path(scratch)
        writers = {
            "keras": lambda target: save_model(model, target),
            "saved_model": lambda target: write_saved_model(model, target),
            "litert_float32": lambda target: write_litert(model, target),
            "litert_int8": lambda target: write_litert(model, target, calibration),
            "onnx": lambda target: write_onnx(model, target),
        }
        runners = {}
        for fmt in FORMATS:
            started = time.perf_counter()
            writers[fmt](folder / FILES[fmt])
            print(f"{fmt}: written in {time.perf_counter() - started:.1f} s", flush=True)
            runners[fmt] = load_runner(folder / FILES[fmt])
        for runner in runners.values():
            runner.run(images[: args.batch_size])  # warm-up: graph building, allocation
        for round_ in range(1, args.rounds + 1):
            for fmt, runner in runners.items():
                started = time.perf_counter()
                outputs[fmt] = np.concatenate([runner.run(images[i:i + args.batch_size])
                                               for i in range(0, len(images), args.batch_size)])
                seconds[fmt].append(time.perf_counter() - started)
                print(f"round {round_}/{args.rounds}: {fmt}: {len(images) / seconds[fmt][-1]:.2f} img/s", flush=True)
        sizes = {fmt: file_bytes(folder / FILES[fmt]) for fmt in FORMATS}
    rates = {fmt: len(images) / statistics.median(seconds[fmt]) for fmt in FORMATS}
    body = [f"Classifier at {size} px with {source}; a random head. {args.images} images per format, batches "
            f"of {args.batch_size}, after one warm-up batch; the formats took turns over {args.rounds} rounds and "
            "each rate is the median of its rounds (`spread`: its slowest round against its fastest). Decoding "
            "and resizing (the same for all) left out. `largest diff` is the largest probability difference from "
            "the keras model on these images.", "",
            "| format | images/s | vs keras | spread | file size (MB) | largest diff |", "|---|---|---|---|---|---|"]
    body += [f"| {fmt} | {rates[fmt]:.2f} | {rates[fmt] / rates['keras']:.2f}x | "
             f"{max(seconds[fmt]) / min(seconds[fmt]):.2f}x | {sizes[fmt] / 1e6:.1f} | "
             f"{float(np.abs(outputs[fmt] - outputs['keras']).max()):.1g} |" for fmt in FORMATS]
    report.write("export-formats", "Export formats: speed and size", body, libraries=RUNTIMES)
    print("\n".join(body))


if __name__ == "__main__":
    main()
