"""Every stage's main() in-process on tiny real images with a random-init VGG16."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import make_class_folders, make_presplit_folders, update_params

from bottleneck_clf.evaluation import evaluate as score
from bottleneck_clf.features import build_extractor, load_meta, load_split
from bottleneck_clf.images import load_array
from bottleneck_clf.scoring import predict_labels
from stages import evaluate, prepare, train_head, weights
from stages import extract_features as extract_stage


def run_all():
    for stage in (weights, prepare, extract_stage, train_head, evaluate):
        stage.main()


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_two_classes_end_to_end(project):
    make_class_folders(project / "data/raw", per_class=10)
    run_all()
    meta = load_meta(project / "data/features")
    assert meta["classes"] == ["cats", "dogs"]
    assert meta["counts"] == {"train": 12, "validation": 4, "test": 4}
    features, labels, ids = load_split(project / "data/features", "train")
    assert features.shape == (12, 512) and features.dtype == np.float32
    assert labels.dtype == np.int32 and sorted(set(labels.tolist())) == [0, 1]
    assert all((project / "data/raw" / i).exists() for i in ids)

    metrics = json.loads((project / "metrics/eval/metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["images"] == 4
    assert {"accuracy", "loss", "macro_f1", "roc_auc", "per_class"} <= set(metrics)
    assert set(metrics["per_class"]) == {"cats", "dogs"}
    predictions = read_csv(project / "metrics/eval/predictions.csv")
    assert len(predictions) == 4
    accuracy = np.mean([row["actual"] == row["predicted"] for row in predictions])
    assert metrics["accuracy"] == pytest.approx(accuracy)
    for name in ("confusion_matrix", "roc", "precision_recall"):
        assert (project / f"metrics/eval/plots/sklearn/{name}.json").exists()
    loss = (project / "metrics/train/plots/metrics/eval/loss.tsv").read_text().splitlines()
    assert loss[0] == "step\tloss" and 2 <= len(loss) - 1 <= 3
    assert (project / "data/models/head.keras").exists()


def test_three_classes_presplit_flatten(project):
    make_presplit_folders(project / "data/raw", {"train": 5, "validation": 3}, classes=("birds", "cats", "dogs"))
    update_params(project, {"extract": {"pooling": "flatten", "image_size": 64}})
    run_all()
    features, _, _ = load_split(project / "data/features", "validation")
    assert features.shape == (9, 2, 2, 512)
    metrics = json.loads((project / "metrics/eval/metrics.json").read_text())
    assert metrics["split"] == "validation" and "roc_auc" not in metrics
    assert len(metrics["per_class"]) == 3
    roc = json.loads((project / "metrics/eval/plots/sklearn/roc.json").read_text())["roc"]
    assert roc[0]["fpr"] == 0.0 and roc[-1]["tpr"] == 1.0  # micro-average over the three classes
    row = read_csv(project / "metrics/eval/predictions.csv")[0]
    assert sum(float(row[f"p_{c}"]) for c in ("birds", "cats", "dogs")) == pytest.approx(1.0, abs=1e-5)


def test_streamed_features_equal_plain_predict(project, tiny_weights):
    import keras

    make_class_folders(project / "data/raw", per_class=10)
    prepare.main()
    weights.main()
    extract_stage.main()
    features, _, ids = load_split(project / "data/features", "validation")
    # The same conv base and preprocessing, without the stage's threads, padding, cache or memory map.
    images = np.stack([load_array(project / "data/raw" / i, 32, "bilinear") for i in ids])
    model = build_extractor(tiny_weights, 32, "avg")
    direct = model.predict(keras.applications.vgg16.preprocess_input(images), batch_size=3, verbose=0)
    np.testing.assert_allclose(np.asarray(features), direct, rtol=1e-5, atol=1e-5)


def test_training_is_reproducible(project):
    make_class_folders(project / "data/raw", per_class=10)
    run_all()
    first = (project / "metrics/eval/predictions.csv").read_text()
    train_head.main()
    evaluate.main()
    assert (project / "metrics/eval/predictions.csv").read_text() == first


def test_weights_stage_names_unknown_source(project):
    update_params(project, {"weights": {"source": "data/weights/user/nope.weights.h5"}})
    with pytest.raises(ValueError, match="is neither a file nor one of the sources pypi, keras"):
        weights.main()


def test_evaluate_split_must_exist(project):
    make_class_folders(project / "data/raw", per_class=10)
    update_params(project, {"prepare": {"test_fraction": 0.0}, "evaluate": {"split": "test"}})
    for stage in (weights, prepare, extract_stage, train_head):
        stage.main()
    with pytest.raises(ValueError, match="evaluate.split is 'test' but the features hold only train, validation"):
        evaluate.main()


@pytest.mark.parametrize(("threshold", "expected"), [(0.5, [0, 1, 1, 0]), (0.9, [0, 0, 1, 0]), (0.2, [1, 1, 1, 0])])
def test_threshold_moves_binary_predictions(threshold, expected):
    probs = np.array([[0.7, 0.3], [0.4, 0.6], [0.05, 0.95], [0.9, 0.1]])
    assert predict_labels(probs, threshold).tolist() == expected


def test_metrics_match_hand_computation():
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    labels = np.array([0, 1, 1, 1])
    metrics = score(probs, labels, ["cat", "dog"], 0.5)
    assert metrics["accuracy"] == 0.75
    assert metrics["per_class"]["dog"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": 0.8, "support": 3}
    assert metrics["loss"] == pytest.approx(-np.mean(np.log([0.8, 0.7, 0.4, 0.9])))
    assert metrics["roc_auc"] == 1.0
