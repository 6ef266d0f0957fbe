"""The pipeline learns: on two classes anyone can tell apart, it must beat a constant guess by far.

Every other test would pass with a head that always answers one class; this one would not.
"""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest
from conftest import make_class_folders, update_params

from stages import evaluate, extract_features, prepare, train_head, weights

PER_CLASS = 50  # 10 test images per class: one class alone scores 0.5, 0.9 allows 2 mistakes in 20


# batch_norm: 8 steps an epoch left Keras' moving statistics so far behind the batches that this head, right on
# every training batch, scored 55 %; head.PreciseBatchNorm sets them to the fitted rows' own.
@pytest.mark.parametrize("batch_norm", [False, True])
def test_head_separates_two_colours(project, batch_norm):
    # Red against blue: a colour difference survives even a random-init VGG16 (its ReLU features of a
    # red image and a blue image differ), unlike shapes, which random filters blur together at 32 px.
    make_class_folders(project / "data/raw", per_class=PER_CLASS, classes=("cats", "dogs"))
    update_params(project, {"head": {"epochs": 30, "patience": 5, "batch_norm": batch_norm}})
    for stage in (weights, prepare, extract_features, train_head, evaluate):
        stage.main()

    metrics = json.loads((project / "metrics/eval/metrics.json").read_text())
    with open(project / "metrics/eval/predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert Counter(row["actual"] for row in rows) == {"cats": 10, "dogs": 10}
    assert set(row["predicted"] for row in rows) == {"cats", "dogs"}, "the head answers one class only"
    assert metrics["accuracy"] >= 0.9, metrics
