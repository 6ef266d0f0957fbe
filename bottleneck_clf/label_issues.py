"""Suspected label errors: out-of-fold class probabilities from k heads, ranked by cleanlab.

Each image is scored by a head that never saw it (k-fold, stratified, seeded): the project's head (head.py's
builder, Adam, with the audit.* settings, which no head.* experiment changes) trained for a fixed number of
epochs on the cached features centred and scaled by the mean and spread of its training folds, so that a few
epochs suffice whatever the scale of the features.
cleanlab's `find_label_issues` (confident learning) decides which given labels are likely wrong; they are
ranked by self-confidence, the probability the held-out head gives to the given label, lowest first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bottleneck_clf.config import AuditConfig
from bottleneck_clf.head import FeatureBatches, build_head, compile_head, probabilities


@dataclass(frozen=True)
class Plan:
    """Which images the label audit can score, with how many folds."""

    rows: np.ndarray          # rows of the audited images
    classes: list[int]        # the audited classes (indices into the data set's classes)
    folds: int                # folds used: the wanted number, fewer when a class is smaller
    skipped_classes: list[int]  # classes with a single image: no head could be trained without it


def plan_folds(labels: np.ndarray, n_classes: int, folds: int) -> Plan | None:
    """The rows, classes and folds the audit uses; None when fewer than two classes have two images.

    A class with fewer images than `folds` lowers the fold count to its size (at least 2), so every fold's
    head has seen each class; a class of one image is left out of the audit (its image is not scored).
    """
    counts = np.bincount(labels, minlength=n_classes)
    classes = [c for c in range(n_classes) if counts[c] >= 2]
    if len(classes) < 2:
        return None
    rows = np.flatnonzero(np.isin(labels, classes))
    used = int(max(2, min(folds, min(counts[c] for c in classes))))
    return Plan(rows, classes, used, [c for c in range(n_classes) if 0 < counts[c] < 2])


def out_of_fold_probabilities(features, labels: np.ndarray, plan: Plan, audit: AuditConfig, seed: int) -> np.ndarray:
    """(len(plan.rows), len(plan.classes)) probabilities, each row from the head trained on the other folds."""
    import keras
    from sklearn.model_selection import StratifiedKFold
    from tqdm import tqdm

    remap = np.full(max(int(labels.max()) + 1, 1), -1, np.int64)
    remap[plan.classes] = np.arange(len(plan.classes))
    local = remap[labels]  # the audited classes as 0..K-1; -1 on rows left out (never read)
    probs = np.zeros((len(plan.rows), len(plan.classes)))
    splitter = StratifiedKFold(n_splits=plan.folds, shuffle=True, random_state=seed)
    folds = list(splitter.split(plan.rows, local[plan.rows]))
    x = np.asarray(features, np.float32)
    for fold, (fit, held_out) in enumerate(tqdm(folds, desc="audit: out-of-fold heads", unit="fold")):
        keras.utils.set_random_seed(seed + fold)
        # Centred per channel, scaled by one spread for all: a per-channel spread would blow up channels that
        # are nearly constant in the training folds (dead ReLUs) on the held-out images.
        mean = x[plan.rows[fit]].mean(axis=0)
        spread = float(np.std(x[plan.rows[fit]] - mean)) or 1.0
        scaled = (x - mean) / spread
        model = build_head(features.shape[1:], len(plan.classes), audit.units, audit.dropout)
        compile_head(model, len(plan.classes), "adam", audit.learning_rate)
        model.fit(FeatureBatches(scaled, local, plan.rows[fit], batch_size=audit.batch_size, shuffle=True,
                                 seed=seed + fold), epochs=audit.epochs, verbose=0)
        probs[held_out] = probabilities(model, scaled[plan.rows[held_out]])
    return probs


@dataclass(frozen=True)
class LabelIssue:
    row: int            # row in the audited data (all splits)
    given: int          # class index as labelled
    suggested: int      # the class the held-out heads find most probable
    quality: float      # cleanlab's self-confidence: probability of the given label (lower: more suspect)
    p_suggested: float


def rank_label_issues(labels: np.ndarray, probs: np.ndarray) -> list[LabelIssue]:
    """Suspects found by cleanlab's `find_label_issues`, most suspect first (self-confidence, then row)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, np.int64)
    found = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    found = sorted((int(r) for r in found), key=lambda r: (quality[r], r))
    suggested = probs.argmax(axis=1)
    return [LabelIssue(r, int(labels[r]), int(suggested[r]), float(quality[r]), float(probs[r, suggested[r]]))
            for r in found]


def audit_labels(features, labels: np.ndarray, n_classes: int, audit: AuditConfig,
                 seed: int) -> tuple[list[LabelIssue], Plan | None]:
    """Ranked suspects over all images (rows of `features`, class indices as the data set's), and the plan."""
    plan = plan_folds(labels, n_classes, audit.folds)
    if plan is None:
        return [], None
    probs = out_of_fold_probabilities(features, labels, plan, audit, seed)
    local = np.searchsorted(plan.classes, labels[plan.rows])
    issues = rank_label_issues(local, probs)
    classes = np.asarray(plan.classes)
    return [LabelIssue(int(plan.rows[i.row]), int(classes[i.given]), int(classes[i.suggested]), i.quality,
                       i.p_suggested) for i in issues], plan
