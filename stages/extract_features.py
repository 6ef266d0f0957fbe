"""Stage `extract_features`: the frozen VGG16 conv base over every image, each distinct image encoded once."""

from __future__ import annotations

import time

import numpy as np

import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
from bottleneck_clf.atomic import atomic_dir, write_json
from bottleneck_clf.dataset import SPLITS, class_names, read_manifest
from bottleneck_clf.feature_cache import FeatureCache, feature_cache_dir
from bottleneck_clf.features import META_FILE, build_extractor, feature_shape, fill_memmap, fingerprint, split_files
from bottleneck_clf.machine import record as record_machine
from bottleneck_clf.params import load_params
from bottleneck_clf.paths import project_paths
from bottleneck_clf.vgg_weights import read_weights, weights_digest

MANIFEST = "manifest.csv"


def main() -> None:
    params = load_params()
    settings = params["extract"]
    paths = project_paths()
    record_machine(paths["machine"], "extract_features")  # which CPU made these floats (check_repro reads it)
    entries = read_manifest(paths["prepared"] / MANIFEST)
    classes = class_names(entries)
    size, pooling, precision = settings["image_size"], settings["pooling"], settings["precision"]
    weights = read_weights(paths["weights"])
    settings_print = fingerprint(weights_digest(weights), size, settings["interpolation"], pooling, precision,
                                 settings["batch_size"])
    cache = FeatureCache(feature_cache_dir(), settings_print)
    model = build_extractor(weights, size, pooling, precision)
    shape = feature_shape(size, pooling)
    started = time.perf_counter()
    counts, encoded, cached = {}, 0, 0
    with atomic_dir(paths["features"]) as tmp:
        for split in SPLITS:
            rows = [e for e in entries if e.split == split]
            if not rows:
                continue
            files = split_files(tmp, split)
            done, hit = fill_memmap(files["features"], model, [str(paths["raw"] / e.path) for e in rows],
                                    [e.sha256 for e in rows], shape, cache, size, settings["interpolation"],
                                    settings["batch_size"], desc=f"extract {split}")
            np.save(files["labels"], np.array([classes.index(e.label) for e in rows], np.int32))
            np.save(files["ids"], np.array([e.path for e in rows], dtype=np.str_))
            counts[split] = len(rows)
            encoded, cached = encoded + done, cached + hit
        write_json(tmp / META_FILE, {"classes": classes, "counts": counts, "feature_shape": list(shape),
                                     "fingerprint": settings_print})
    seconds = time.perf_counter() - started
    total = sum(counts.values())
    rate = f", {encoded / seconds:.1f} img/s" if encoded else ""
    copies = f", {total - encoded - cached} copies of another image" if total > encoded + cached else ""
    print(f"extract_features: {total} images: {encoded} encoded, {cached} from the cache{copies} "
          f"in {seconds:.1f} s{rate}; features {shape} per image -> {paths['features']} "
          f"(cache {cache.directory})")


if __name__ == "__main__":
    from bottleneck_clf.errors import run

    run(main, "extract_features")
