"""Stage `extract_features`: run the frozen VGG16 conv base once over every image, split by split."""

from __future__ import annotations

import time

import numpy as np

import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
from bottleneck_clf.atomic import atomic_dir, write_json
from bottleneck_clf.dataset import SPLITS, class_names, read_manifest
from bottleneck_clf.features import META_FILE, build_extractor, compute_features, feature_shape, split_files
from bottleneck_clf.params import load_params
from bottleneck_clf.paths import project_paths
from bottleneck_clf.vgg_weights import read_weights, weights_digest

MANIFEST = "manifest.csv"


def main() -> None:
    params = load_params()
    settings = params["extract"]
    paths = project_paths()
    entries = read_manifest(paths["prepared"] / MANIFEST)
    classes = class_names(entries)
    size, pooling = settings["image_size"], settings["pooling"]
    model = build_extractor(paths["weights"], size, pooling)
    shape = feature_shape(size, pooling)
    started = time.perf_counter()
    counts = {}
    with atomic_dir(paths["features"]) as tmp:
        for split in SPLITS:
            rows = [e for e in entries if e.split == split]
            if not rows:
                continue
            files = split_files(tmp, split)
            # Streamed into a memory-mapped .npy: memory is bounded by the batch, not the data set.
            out = np.lib.format.open_memmap(files["features"], mode="w+", dtype=np.float32,
                                            shape=(len(rows), *shape))
            compute_features(model, [str(paths["raw"] / e.path) for e in rows], size,
                             settings["interpolation"], settings["batch_size"], out, desc=f"extract {split}")
            out.flush()
            del out
            np.save(files["labels"], np.array([classes.index(e.label) for e in rows], np.int32))
            np.save(files["ids"], np.array([e.path for e in rows], dtype=np.str_))
            counts[split] = len(rows)
        write_json(tmp / META_FILE, {
            "classes": classes,
            "counts": counts,
            "feature_shape": list(shape),
            "image_size": size,
            "interpolation": settings["interpolation"],
            "pooling": pooling,
            "preprocessing": "keras.applications.vgg16.preprocess_input",
            "weights_digest": weights_digest(read_weights(paths["weights"])),
        })
    seconds = time.perf_counter() - started
    total = sum(counts.values())
    print(f"extract_features: {total} images in {seconds:.1f} s ({total / max(seconds, 1e-9):.1f} img/s), "
          f"features {shape} per image -> {paths['features']}")


if __name__ == "__main__":
    main()
