"""Stage `export`: the shippable classifier, `model.keras` plus `classes.json`, from the best trained model.

The fine-tuned top when the finetune stage made one, else the head; either way the frozen VGG16 blocks,
resizing and preprocessing go inside the model (bottleneck_clf/export.py), the frozen blocks in the precision
evaluate used. `classes.json` records the class names and `evaluate.threshold`, which `bottleneck predict` applies.
"""

from __future__ import annotations

import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
from bottleneck_clf.atomic import atomic_dir, write_json
from bottleneck_clf.config import load_config
from bottleneck_clf.export import CLASSES_FILE, CLASSIFIER_FILE, build_classifier, classes_record, load_top
from bottleneck_clf.features import load_meta
from bottleneck_clf.machine import record as record_machine
from bottleneck_clf.model_files import save_model
from bottleneck_clf.params import check_threshold
from bottleneck_clf.paths import project_paths
from bottleneck_clf.vgg_weights import read_weights


def main() -> None:
    config = load_config()  # a broken params.yaml stops every stage, this one included
    paths = project_paths()
    record_machine(paths["machine"], "export")  # the CPU that made these floats (check-repro)
    meta = load_meta(paths["features"])
    classes = meta["classes"]
    threshold = check_threshold(config.evaluate.threshold, len(classes))
    weights = read_weights(paths["weights"])
    top, blocks, source, extract = load_top(paths["finetuned"], paths["model"], meta)
    model = build_classifier(weights, top, blocks, len(classes), extract)
    with atomic_dir(paths["classifier"]) as tmp:
        save_model(model, tmp / CLASSIFIER_FILE)
        write_json(tmp / CLASSES_FILE, classes_record(classes, threshold, extract, source))
    print(f"export: {source} model, {len(classes)} classes, {extract.precision} conv blocks, "
          f"threshold {threshold}, {model.count_params():,} parameters -> {paths['classifier'] / CLASSIFIER_FILE}")


if __name__ == "__main__":
    from bottleneck_clf.errors import run

    run(main, "export")
