"""Scoring a model on a held-out split: the decision rule, the metrics, their interval, and the per-image rows."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import numpy as np

from bottleneck_clf.atomic import atomic_path
from bottleneck_clf.errors import UserError
from bottleneck_clf.scoring import accuracy_and_loss, accuracy_ci95, predict_labels


def choose_split(requested: str, available: list[str]) -> str:
    """'auto' means the test split when prepare made one, else validation."""
    if requested == "auto":
        return "test" if "test" in available else "validation"
    if requested not in available:
        raise UserError(
            f"evaluate.split is {requested!r} but the features hold only {', '.join(available)}; "
            "set evaluate.split to auto or one of those"
        )
    return requested


def evaluate(probs: np.ndarray, labels: np.ndarray, classes: list[str], threshold: float) -> dict:
    """Accuracy, log loss, per-class precision/recall/F1, macro F1, and ROC AUC for two classes."""
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

    predicted = predict_labels(probs, threshold)
    indices = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=indices, zero_division=0
    )
    scores = accuracy_and_loss(probs, labels, threshold)
    metrics = {
        "split": None,
        "images": int(len(labels)),
        "accuracy": scores["accuracy"],
        "accuracy_ci95": accuracy_ci95(predicted == labels),
        "loss": scores["loss"],
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


def finetuned_probabilities(paths: dict[str, Path], split: str, ids,
                            engine=None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The saved fine-tuned model (a top, or an ensemble's average) on the frozen blocks' output for the split's
    images, and for an ensemble each part's probabilities by name ({} otherwise). The maps come from the feature
    cache, or are computed where `engine` runs (None: in this process), as finetune's."""
    import keras

    from bottleneck_clf.config import ExtractConfig
    from bottleneck_clf.dataset import MANIFEST, read_manifest
    from bottleneck_clf.feature_cache import feature_cache_dir
    from bottleneck_clf.finetune import (
        ENSEMBLE_NAME,
        TOP_FILE,
        FrozenMaps,
        ensemble_outputs,
        ensemble_parts,
        part_probabilities,
        read_recipe,
    )
    from bottleneck_clf.head import probabilities
    from bottleneck_clf.vgg_weights import read_weights

    recipe = read_recipe(paths["finetuned"])
    digest_of = {e.path: e.sha256 for e in read_manifest(paths["prepared"] / MANIFEST) if e.split == split}
    top = keras.saving.load_model(paths["finetuned"] / TOP_FILE, compile=False)
    frozen = FrozenMaps(read_weights(paths["weights"]), ExtractConfig.from_mapping(recipe), recipe["blocks"],
                        feature_cache_dir(), engine)
    with tempfile.TemporaryDirectory(prefix="evaluate-maps-") as scratch:
        maps, _, _ = frozen.compute([str(paths["raw"] / i) for i in ids], [digest_of[str(i)] for i in ids],
                                    Path(scratch) / f"{split}.npy", desc=f"frozen blocks {split}")
        if ensemble_parts(top):  # the average and each part, every part run once
            batch = 256  # as head.probabilities
            parts = part_probabilities(ensemble_outputs(top), (maps[i:i + batch] for i in range(0, len(maps), batch)))
            probs = parts.pop(ENSEMBLE_NAME)
        else:
            probs, parts = probabilities(top, maps), {}
        del maps
    return probs, parts


def part_scores(parts: dict[str, np.ndarray], probs: np.ndarray, labels: np.ndarray, classes: list[str],
                threshold: float) -> dict:
    """Accuracy (with its interval) and log loss of each part of an ensemble on the images the ensemble (`probs`)
    was scored on, and the paired count: images only the average gets right, only the part gets right. So
    `dvc exp show` tells whether averaging helped, without a second run."""
    keep = ("accuracy", "accuracy_ci95", "loss")
    right = predict_labels(probs, threshold) == labels
    scores = {}
    for name, part in parts.items():
        part_right = predict_labels(part, threshold) == labels
        scores[name] = {**{key: evaluate(part, labels, classes, threshold)[key] for key in keep},
                        "only_average_right": int(np.sum(right & ~part_right)),
                        "only_part_right": int(np.sum(part_right & ~right))}
    return scores


def log_plots(live, labels: np.ndarray, probs: np.ndarray, predicted: np.ndarray, classes: list[str]) -> None:
    """Confusion matrix, ROC and precision-recall curves into dvclive's `live`."""
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
