"""Stage `evaluate`: score the trained head on the held-out split; metrics and plots for DVC."""

from __future__ import annotations

import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
from bottleneck_clf.config import load_config
from bottleneck_clf.engine import device, open_engine
from bottleneck_clf.evaluation import (
    choose_split,
    evaluate,
    finetuned_probabilities,
    log_plots,
    part_scores,
    predict_labels,
    write_predictions,
)
from bottleneck_clf.features import load_meta, load_split
from bottleneck_clf.finetune import TOP_FILE, check_current
from bottleneck_clf.gallery import draw_gallery, worst_mistakes
from bottleneck_clf.head import probabilities
from bottleneck_clf.machine import record as record_machine
from bottleneck_clf.machine import record_with
from bottleneck_clf.params import check_threshold
from bottleneck_clf.paths import project_paths

PREDICTIONS = "predictions.csv"
GALLERY = "misclassified.png"


def main() -> None:
    import keras
    from dvclive import Live

    config = load_config()
    settings, paths = config.evaluate, project_paths()
    record_machine(paths["machine"], "evaluate")  # the CPU that made these floats (check-repro)
    meta = load_meta(paths["features"])
    classes = meta["classes"]
    check_threshold(settings.threshold, len(classes))  # only now is the class count known
    split = choose_split(settings.split, list(meta["counts"]))
    features, labels, ids = load_split(paths["features"], split)
    check_current(paths["finetuned"], paths["finetune_top"])
    parts = {}
    if (paths["finetuned"] / TOP_FILE).exists():
        # The frozen blocks run where `ray` says, as finetune's, for the images the cache lacks (a test split).
        with open_engine(config.ray) as engine:
            probs, parts = finetuned_probabilities(paths, split, ids, engine)
            if engine is not None:
                print(f"evaluate: frozen blocks: {device(engine)}")
                record_with(paths["machine"], "evaluate", engine.made_on())
        model_name = "ensemble" if parts else "finetuned"
    else:
        model_name = "head"
        probs = probabilities(keras.saving.load_model(paths["model"], compile=False), features)
    predicted = predict_labels(probs, settings.threshold)
    metrics = evaluate(probs, labels, classes, settings.threshold)
    metrics["split"] = split
    metrics["model"] = model_name
    if parts:
        metrics["parts"] = part_scores(parts, probs, labels, classes, settings.threshold)

    out = paths["eval_metrics"]
    live = Live(str(out), dvcyaml=False, save_dvc_exp=False)
    live.summary = metrics
    log_plots(live, labels, probs, predicted, classes)
    live.end()
    write_predictions(out / PREDICTIONS, ids, labels, probs, predicted, classes)
    mistakes = worst_mistakes(ids, labels, predicted, probs, classes, paths["raw"], settings.gallery_size)
    draw_gallery(mistakes, out / "plots" / GALLERY,
                 f"Most confident mistakes of the {model_name} model on the {split} split ({len(mistakes)} shown)")
    auc = f", ROC AUC {metrics['roc_auc']:.4f}" if "roc_auc" in metrics else ""
    low, high = metrics["accuracy_ci95"]["low"], metrics["accuracy_ci95"]["high"]
    print(f"evaluate: {model_name} model, {split} split, {len(labels)} images: accuracy {metrics['accuracy']:.4f} "
          f"(95 % Wilson interval {low:.4f}-{high:.4f}), "
          f"loss {metrics['loss']:.4f}, macro F1 {metrics['macro_f1']:.4f}{auc} -> {out}")
    for name, scores in metrics.get("parts", {}).items():
        low, high = scores["accuracy_ci95"]["low"], scores["accuracy_ci95"]["high"]
        print(f"evaluate: its part {name} alone: accuracy {scores['accuracy']:.4f} ({low:.4f}-{high:.4f}), "
              f"loss {scores['loss']:.4f}; right only with the average / only with the part: "
              f"{scores['only_average_right']} / {scores['only_part_right']}")


if __name__ == "__main__":
    from bottleneck_clf.errors import run

    run(main, "evaluate")
