"""The decision rule, the one measure (accuracy and log loss) every score the project reports is taken by, and
the interval beside each accuracy: a module of its own, so that training stages and export can score without
importing evaluation's plots and files."""

from __future__ import annotations

import numpy as np


def predict_labels(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Two classes: the second class when its probability reaches `threshold`. More: the most probable."""
    if probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).astype(np.int64)
    return probs.argmax(axis=1)


def accuracy_and_loss(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Accuracy under the decision rule and log loss: the one measure for every score the project reports."""
    from sklearn.metrics import accuracy_score, log_loss

    return {
        "accuracy": float(accuracy_score(labels, predict_labels(probs, threshold))),
        # float32 softmax sums drift from 1 by ~1e-7; sklearn wants exact probabilities.
        "loss": float(log_loss(labels, probs / probs.sum(axis=1, keepdims=True), labels=list(range(probs.shape[1])))),
    }


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion: stays inside [0, 1] and is honest near 100 %."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    center = (p + z * z / (2 * trials)) / denominator
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # The interval holds p exactly; round-off alone put 4 right of 4 at 0.9999999999999999.
    return float(max(0.0, min(p, center - half))), float(min(1.0, max(p, center + half)))


def accuracy_ci95(right: np.ndarray) -> dict:
    """The accuracy's 95 % Wilson interval from which predictions were right, as metrics.json files hold it."""
    low, high = wilson_interval(int(np.sum(right)), len(right))
    return {"low": low, "high": high}
