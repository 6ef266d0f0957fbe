"""Stage `evaluate`: score the trained head on the held-out split; metrics and plots for DVC."""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import numpy as np

import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
from bottleneck_clf.atomic import atomic_path
from bottleneck_clf.features import load_meta, load_split
from bottleneck_clf.finetune import MODEL_FILE, RECIPE_FILE, FrozenMaps
from bottleneck_clf.gallery import draw_gallery, worst_mistakes
from bottleneck_clf.head import probabilities
from bottleneck_clf.machine import record as record_machine
from bottleneck_clf.params import check_threshold, load_params
from bottleneck_clf.paths import project_paths

PREDICTIONS = "predictions.csv"
GALLERY = "misclassified.png"
MANIFEST = "manifest.csv"


def choose_split(requested: str, available: list[str]) -> str:
    """'auto' means the test split when prepare made one, else validation."""
    if requested == "auto":
        return "test" if "test" in available else "validation"
    if requested not in available:
        raise ValueError(
            f"evaluate.split is {requested!r} but the features hold only {', '.join(available)}; "
            "set evaluate.split to auto or one of those"
        )
    return requested


def predict_labels(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Two classes: the second class when its probability reaches `threshold`. More: the most probable."""
    if probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).astype(np.int64)
    return probs.argmax(axis=1)


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion: stays inside [0, 1] and is honest near 100 %."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    center = (p + z * z / (2 * trials)) / denominator
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return float(max(0.0, center - half)), float(min(1.0, center + half))


def evaluate(probs: np.ndarray, labels: np.ndarray, classes: list[str], threshold: float) -> dict:
    """Accuracy, log loss, per-class precision/recall/F1, macro F1, and ROC AUC for two classes."""
    from sklearn.metrics import accuracy_score, log_loss, precision_recall_fscore_support, roc_auc_score

    predicted = predict_labels(probs, threshold)
    indices = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=indices, zero_division=0
    )
    metrics = {
        "split": None,
        "images": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "accuracy_ci95": dict(zip(("low", "high"), wilson_interval(int(np.sum(predicted == labels)), len(labels)),
                                  strict=True)),
        # float32 softmax sums drift from 1 by ~1e-7; sklearn wants exact probabilities.
        "loss": float(log_loss(labels, probs / probs.sum(axis=1, keepdims=True), labels=indices)),
        "macro_f1": float(np.mean(f1)),
    }
    if len(classes) == 2 and len(set(labels.tolist())) == 2:
        metrics["roc_auc"] = float(roc_auc_score(labels, probs[:, 1]))
    metrics["per_class"] = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
    }
    return metrics


def write_predictions(target: Path, ids, labels, probs, predicted, classes: list[str]) -> None:
    with atomic_path(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "actual", "predicted", "confidence", *[f"p_{c}" for c in classes]])
        for path, label, row, guess in zip(ids, labels, probs, predicted, strict=True):
            writer.writerow([path, classes[label], classes[guess], f"{row[guess]:.6f}",
                             *[f"{p:.6f}" for p in row]])


def finetuned_probabilities(paths: dict[str, Path], split: str, ids) -> np.ndarray:
    """The fine-tuned top on the frozen blocks' output for the split's images (cached by the finetune stage)."""
    import keras

    from bottleneck_clf.dataset import read_manifest
    from bottleneck_clf.feature_cache import feature_cache_dir
    from bottleneck_clf.vgg_weights import read_weights

    recipe = json.loads((paths["finetuned"] / RECIPE_FILE).read_text(encoding="utf-8"))
    digest_of = {e.path: e.sha256 for e in read_manifest(paths["prepared"] / MANIFEST) if e.split == split}
    top = keras.saving.load_model(paths["finetuned"] / MODEL_FILE, compile=False)
    frozen = FrozenMaps(read_weights(paths["weights"]), recipe, feature_cache_dir())
    with tempfile.TemporaryDirectory(prefix="evaluate-maps-") as scratch:
        maps, _, _ = frozen.compute([str(paths["raw"] / i) for i in ids], [digest_of[str(i)] for i in ids],
                                    Path(scratch) / f"{split}.npy", desc=f"frozen blocks {split}")
        probs = probabilities(top, maps)
        del maps
    return probs


def main() -> None:
    import keras
    from dvclive import Live

    params = load_params()
    settings = params["evaluate"]
    paths = project_paths()
    record_machine(paths["machine"], "evaluate")  # which CPU made these floats (check_repro reads it)
    meta = load_meta(paths["features"])
    classes = meta["classes"]
    check_threshold(settings["threshold"], len(classes))  # only now is the class count known
    split = choose_split(settings["split"], list(meta["counts"]))
    features, labels, ids = load_split(paths["features"], split)
    if (paths["finetuned"] / MODEL_FILE).exists():
        model_name = "finetuned"
        probs = finetuned_probabilities(paths, split, ids)
    else:
        model_name = "head"
        probs = probabilities(keras.saving.load_model(paths["model"], compile=False), features)
    predicted = predict_labels(probs, settings["threshold"])
    metrics = evaluate(probs, labels, classes, settings["threshold"])
    metrics["split"] = split
    metrics["model"] = model_name

    out = paths["eval_metrics"]
    live = Live(str(out), dvcyaml=False, save_dvc_exp=False)
    live.summary = metrics
    actual_names = [classes[i] for i in labels]
    live.log_sklearn_plot("confusion_matrix", actual_names, [classes[i] for i in predicted],
                          name="confusion_matrix.json")
    if len(classes) == 2:
        truth, scores, kind = labels, probs[:, 1], f"positive class {classes[1]}"
    else:
        # One-vs-rest pooled over all classes (micro-average), so every run has the same plots.
        truth, scores, kind = np.eye(len(classes))[labels].ravel(), probs.ravel(), "micro-average over classes"
    live.log_sklearn_plot("roc", truth, scores, name="roc.json", title=f"ROC ({kind})")
    live.log_sklearn_plot("precision_recall", truth, scores, name="precision_recall.json",
                          title=f"Precision-recall ({kind})")
    live.end()
    write_predictions(out / PREDICTIONS, ids, labels, probs, predicted, classes)
    mistakes = worst_mistakes(ids, labels, predicted, probs, classes, paths["raw"], settings["gallery_size"])
    draw_gallery(mistakes, out / "plots" / GALLERY,
                 f"Most confident mistakes of the {model_name} model on the {split} split ({len(mistakes)} shown)")
    auc = f", ROC AUC {metrics['roc_auc']:.4f}" if "roc_auc" in metrics else ""
    low, high = metrics["accuracy_ci95"]["low"], metrics["accuracy_ci95"]["high"]
    print(f"evaluate: {model_name} model, {split} split, {len(labels)} images: accuracy {metrics['accuracy']:.4f} "
          f"(95 % Wilson interval {low:.4f}-{high:.4f}), "
          f"loss {metrics['loss']:.4f}, macro F1 {metrics['macro_f1']:.4f}{auc} -> {out}")


if __name__ == "__main__":
    from bottleneck_clf.errors import run

    run(main, "evaluate")
