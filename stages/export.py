"""Stage `export`: the shippable classifier, `model.keras` plus `classes.json`, from the best trained model.

The fine-tuned top when the finetune stage made one, else the head; either way the frozen VGG16 blocks,
resizing and preprocessing go inside the model (bottleneck_clf/export.py), the frozen blocks in the precision
evaluate used. `classes.json` records the class names and `evaluate.threshold`, which stages/predict.py applies.
"""

from __future__ import annotations

import json

import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
from bottleneck_clf.atomic import atomic_dir, write_json
from bottleneck_clf.export import CLASSES_FILE, MODEL_FILE, build_classifier
from bottleneck_clf.features import load_meta
from bottleneck_clf.finetune import MODEL_FILE as TOP_FILE
from bottleneck_clf.finetune import RECIPE_FILE, build_top
from bottleneck_clf.machine import record as record_machine
from bottleneck_clf.model_files import save_model
from bottleneck_clf.params import check_threshold, load_params
from bottleneck_clf.paths import project_paths
from bottleneck_clf.vgg_weights import read_weights


def load_top(paths, meta: dict):
    """(top model, conv blocks it holds, what it came from, the extraction settings evaluate scored it with).

    The settings are the fine-tuning recipe's when there is a fine-tuned top (evaluate rebuilds its input from
    them), else those the features were extracted with.
    """
    import keras

    if (paths["finetuned"] / TOP_FILE).exists():
        recipe = json.loads((paths["finetuned"] / RECIPE_FILE).read_text(encoding="utf-8"))
        top = keras.saving.load_model(paths["finetuned"] / TOP_FILE, compile=False)
        return top, recipe["blocks"], "finetuned", recipe
    settings = meta["fingerprint"]
    side = settings["image_size"] // 32
    head = keras.saving.load_model(paths["model"], compile=False)
    return build_top((side, side, 512), 0, settings["pooling"], None, head), 0, "head", settings


def main() -> None:
    params = load_params()  # a broken params.yaml stops every stage, this one included
    paths = project_paths()
    record_machine(paths["machine"], "export")  # which CPU made these floats (check_repro reads it)
    meta = load_meta(paths["features"])
    classes = meta["classes"]
    threshold = check_threshold(params["evaluate"]["threshold"], len(classes))
    weights = read_weights(paths["weights"])
    top, blocks, source, settings = load_top(paths, meta)
    model = build_classifier(weights, top, blocks, settings["image_size"], settings["interpolation"], len(classes),
                             settings["precision"])
    with atomic_dir(paths["classifier"]) as tmp:
        save_model(model, tmp / MODEL_FILE)
        write_json(tmp / CLASSES_FILE, {
            "classes": classes,
            "input": "uint8 RGB images, shape (batch, height, width, 3), any height and width",
            "output": "class probabilities, shape (batch, number of classes), in the order of `classes`",
            "threshold": threshold,
            "decision": "two classes: the second when its probability reaches `threshold`; more: the most probable",
            "image_size": settings["image_size"],
            "interpolation": settings["interpolation"],
            "precision": settings["precision"],
            "trained": source,
        })
    print(f"export: {source} model, {len(classes)} classes, {settings['precision']} conv blocks, "
          f"threshold {threshold}, {model.count_params():,} parameters -> {paths['classifier'] / MODEL_FILE}")


if __name__ == "__main__":
    from bottleneck_clf.errors import run

    run(main, "export")
