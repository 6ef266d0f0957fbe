"""Stage `extract_features`: the frozen VGG16 conv base over every image, each distinct image encoded once."""

from __future__ import annotations

import time

import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
from bottleneck_clf.atomic import atomic_dir, write_json
from bottleneck_clf.config import load_config
from bottleneck_clf.dataset import MANIFEST, SPLITS, class_names, read_manifest
from bottleneck_clf.engine import device, open_engine
from bottleneck_clf.feature_cache import feature_cache_dir
from bottleneck_clf.features import META_FILE, Extractor
from bottleneck_clf.machine import record as record_machine
from bottleneck_clf.paths import project_paths
from bottleneck_clf.vgg_weights import read_weights


def main() -> None:
    config = load_config()
    paths = project_paths()
    record_machine(paths["machine"], "extract_features")  # the CPU that made these floats (check-repro)
    entries = read_manifest(paths["prepared"] / MANIFEST)
    classes = class_names(entries)
    started = time.perf_counter()
    with open_engine(config.ray) as engine:
        extractor = Extractor(read_weights(paths["weights"]), config.extract, feature_cache_dir(), engine)
        with atomic_dir(paths["features"]) as tmp:
            splits = {split: [e for e in entries if e.split == split] for split in SPLITS}
            splits = {split: rows for split, rows in splits.items() if rows}
            encoded, cached = extractor.write_splits(tmp, splits, paths["raw"], classes)
            counts = {split: len(rows) for split, rows in splits.items()}
            write_json(tmp / META_FILE, {"classes": classes, "counts": counts,
                                         "feature_shape": list(extractor.shape), "fingerprint": extractor.fingerprint,
                                         "flip_tta": config.extract.flip_tta})
        where = device(engine)
        if engine is not None and engine.made_on():
            record_machine(paths["machine"], "extract_features", engine.made_on())  # the nodes, not this one
    seconds = time.perf_counter() - started
    passes = len(extractor.passes)  # 2 with extract.flip_tta: each image and its mirror
    total = sum(counts.values()) * passes
    rate = f", {encoded / seconds:.1f} img/s" if encoded else ""
    copies = f", {total - encoded - cached} copies of another image" if total > encoded + cached else ""
    what = f"{total // 2} images and their mirrors" if passes == 2 else f"{total} images"
    print(f"extract_features: {what}: {encoded} encoded, {cached} from the cache{copies} "
          f"in {seconds:.1f} s{rate}; features {extractor.shape} per image -> {paths['features']} "
          f"(cache {extractor.cache.directory})\nextract_features: {where}")


if __name__ == "__main__":
    from bottleneck_clf.errors import run

    run(main, "extract_features")
