"""VGG16 one image a call (what features.encode_batch does) against one call on a batch, side by side.

    python bench/encode_batch_bench.py [--images 32] [--size 288] [--rounds 2]

encode_batch runs VGG16 one image a call so that a feature is the same bits whatever batch the image came
in (on an AVX2-only CPU a batched call computes the batch's last image with other kernels). This measures
what that costs: img/s of both ways over the same images, alternated in rounds, and their ratio; and whether
the batched call gives the last image other bits on this machine. Random weights: the speed does not depend on
their values. Writes bench/results/encode-batch.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=288)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import keras

    import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
    from bottleneck_clf.features import encode_batch

    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(args.size, args.size, 3),
                                     pooling="avg")
    pixels = np.random.default_rng(0).uniform(0, 255, (args.images, args.size, args.size, 3)).astype(np.float32)
    x = keras.applications.vgg16.preprocess_input(pixels.copy())

    def batched():
        return np.asarray(model.predict_on_batch(x), np.float32)

    def one_a_call():
        return encode_batch(model, pixels.copy())  # a copy: preprocessing works in place

    batched(), one_a_call()  # warm-up: graph tracing and oneDNN's kernel choice
    rates = {"one image a call": [], "one batched call": []}
    for _ in range(args.rounds):
        for name, run in (("one image a call", one_a_call), ("one batched call", batched)):
            started = time.perf_counter()
            run()
            rates[name].append(args.images / (time.perf_counter() - started))
    alone, together = one_a_call(), batched()
    moved = [i for i in range(args.images) if alone[i].tobytes() != together[i].tobytes()]
    largest = float(np.abs(alone - together).max())

    import report

    single = np.mean(rates["one image a call"])
    batch = np.mean(rates["one batched call"])
    body = [f"VGG16 to average pooling at {args.size} px, float32, {args.images} images, {args.rounds} rounds "
            "alternated (mean img/s):", "",
            "| how | img/s | rounds |", "|---|---|---|",
            *[f"| {name} | {np.mean(r):.2f} | {', '.join(f'{v:.2f}' for v in r)} |" for name, r in rates.items()],
            "", f"Ratio one image a call / batched: **{single / batch:.3f}**.", "",
            f"Images whose batched feature is not bitwise the one-image feature: {moved or 'none'} of "
            f"{args.images} (largest difference {largest:.3g}).", ""]
    report.write("encode-batch", "VGG16 one image a call against a batched call", body)
    print("\n".join(body))


if __name__ == "__main__":
    main()
