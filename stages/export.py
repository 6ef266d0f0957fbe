"""Stage `export`: the shippable classifier, `model.keras` plus `classes.json`, from the best trained model.

The fine-tuned top (or its average with the frozen head, finetune.ensemble) when the finetune stage made one,
else the head; either way the frozen VGG16 blocks, resizing and preprocessing go inside the model
(bottleneck_clf/export.py), the frozen blocks in the precision evaluate used. `classes.json` records the
class names and `evaluate.threshold`, which `bottleneck predict` applies.

`export.formats` adds a SavedModel, LiteRT float32 and int8 files and an ONNX file beside them
(bottleneck_clf/runtimes.py); each is loaded back in its own runtime and run on evaluate's images (a seeded
sample of export.check_images when the split holds more), and its agreement with evaluate's predictions goes
to metrics/export/metrics.json.
"""

from __future__ import annotations

import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
from bottleneck_clf.atomic import atomic_dir, write_json
from bottleneck_clf.config import load_config
from bottleneck_clf.dataset import MANIFEST, read_manifest
from bottleneck_clf.export import CLASSES_FILE, CLASSIFIER_FILE, build_classifier, classes_record, load_top
from bottleneck_clf.features import load_meta
from bottleneck_clf.finetune import check_current
from bottleneck_clf.machine import record as record_machine
from bottleneck_clf.model_files import save_model
from bottleneck_clf.params import check_threshold
from bottleneck_clf.paths import project_paths
from bottleneck_clf.runtimes import (
    FILES,
    calibration_sample,
    check_formats,
    check_sample,
    read_reference,
    require_extra,
    write_litert,
    write_onnx,
    write_saved_model,
)
from bottleneck_clf.vgg_weights import read_weights

PREDICTIONS = "predictions.csv"  # evaluate's, in paths.eval_metrics
METRICS = "metrics.json"


def main() -> None:
    import keras

    config = load_config()  # a broken params.yaml stops every stage, this one included
    paths = project_paths()
    formats = list(config.export.formats)
    for fmt in formats:
        if fmt in ("litert_float32", "litert_int8", "onnx"):
            require_extra(fmt, "export")  # before any work
    keras.utils.set_random_seed(config.base.seed)
    record_machine(paths["machine"], "export")  # the CPU that made these floats (check-repro)
    meta = load_meta(paths["features"])
    classes = meta["classes"]
    threshold = check_threshold(config.evaluate.threshold, len(classes))
    weights = read_weights(paths["weights"])
    check_current(paths["finetuned"], paths["finetune_top"])
    top, blocks, source, extract = load_top(paths["finetuned"], paths["model"], meta)
    model = build_classifier(weights, top, blocks, len(classes), extract)
    evaluated = read_reference(paths["eval_metrics"] / PREDICTIONS, classes)
    split_images = len(evaluated[0])
    reference = check_sample(evaluated, config.export.check_images, config.base.seed)
    with atomic_dir(paths["classifier"]) as tmp:
        save_model(model, tmp / CLASSIFIER_FILE)
        write_json(tmp / CLASSES_FILE, classes_record(classes, threshold, extract, source))
        if "saved_model" in formats:
            write_saved_model(model, tmp / FILES["saved_model"], tmp / CLASSES_FILE)
        if "litert_float32" in formats:
            write_litert(model, tmp / FILES["litert_float32"])
        if "litert_int8" in formats:
            entries = read_manifest(paths["prepared"] / MANIFEST)
            sample = calibration_sample(entries, paths["raw"], config.export.calibration_images, config.base.seed,
                                        extract.image_size, extract.interpolation)
            write_litert(model, tmp / FILES["litert_int8"], sample)
        if "onnx" in formats:
            write_onnx(model, tmp / FILES["onnx"])
        # Checked before the folder replaces the old one: a format that disagrees leaves no output.
        images = [paths["raw"] / path for path in reference[0]]
        results = check_formats(tmp, formats, images, reference, threshold, extract.image_size, extract.interpolation)
    write_json(paths["export_metrics"] / METRICS, {"images": len(images), "split_images": split_images,
                                                   "formats": results})
    print(f"export: {source} model, {len(classes)} classes, {extract.precision} conv blocks, "
          f"threshold {threshold}, {model.count_params():,} parameters -> {paths['classifier'] / CLASSIFIER_FILE}")
    if len(images) < split_images:
        print(f"export: each format checked on {len(images)} of evaluate's {split_images} images, a seeded "
              "sample (export.check_images)")
    for fmt, r in results.items():
        low, high = r["accuracy_ci95"]["low"], r["accuracy_ci95"]["high"]
        print(f"export: {fmt}: accuracy {r['accuracy']:.4f} (95 % Wilson interval {low:.4f}-{high:.4f}), labels "
              f"equal to evaluate's {r['label_agreement']:.4f}, largest probability difference "
              f"{r['max_abs_prob_diff']:.2g}, {r['file_bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    from bottleneck_clf.errors import run

    run(main, "export")
