"""Numbers a user can trust: the summary is the saved model's, the reported split is unseen, with its interval."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from conftest import make_class_folders, make_presplit_folders, update_params

from bottleneck_clf.features import load_meta, load_split
from bottleneck_clf.head import FeatureBatches, stopping_rows
from bottleneck_clf.scoring import wilson_interval
from stages import evaluate, prepare, train_head, weights
from stages import extract_features as extract_stage

# A step size that makes the loss jump about, so the last epoch is not the best one.
JUMPY = {"optimizer": "sgd", "learning_rate": 0.9, "epochs": 8, "patience": 4}


def features_ready(project):
    for stage in (weights, prepare, extract_stage):
        stage.main()


def saved_model_loss_on(project, features, labels, rows):
    """Loss and accuracy of the saved head on the given rows, computed afresh."""
    model = keras.saving.load_model(project / "data/models/head.keras", compile=False)
    model.compile(loss="binary_crossentropy", metrics=["accuracy"])
    return model.evaluate(FeatureBatches(features, labels, rows, batch_size=256, shuffle=False, seed=0),
                          verbose=0, return_dict=True)


def test_summary_describes_the_saved_epoch_and_stops_on_a_training_slice(project):
    make_presplit_folders(project / "data/raw", {"train": 20, "validation": 6})
    update_params(project, {"head": {**JUMPY, "refit": False}})  # the early-stopped head itself
    features_ready(project)
    train_head.main()

    summary = json.loads((project / "metrics/train/metrics.json").read_text())
    curve = [float(line.split("\t")[1])
             for line in (project / "metrics/train/plots/metrics/eval/loss.tsv").read_text().splitlines()[1:]]
    assert summary["epochs_run"] == len(curve)
    assert summary["best_epoch"] == int(np.argmin(curve)) + 1 < summary["epochs_run"]  # not the last epoch
    assert summary["eval"]["loss"] == pytest.approx(min(curve), rel=1e-6)

    # The stop set is 10 % of each training class, and the saved head's loss on it is the summary's.
    features, labels, _ = load_split(project / "data/features", "train")
    _, stop_rows = stopping_rows(np.asarray(labels), 0.1, 42)
    assert summary["early_stopping_images"] == len(stop_rows) == 4
    again = saved_model_loss_on(project, features, labels, stop_rows)
    assert again["loss"] == pytest.approx(summary["eval"]["loss"], rel=1e-4, abs=1e-6)
    assert again["accuracy"] == pytest.approx(summary["eval"]["accuracy"])


def test_validation_never_shapes_the_head_without_a_test_split(project):
    make_presplit_folders(project / "data/raw", {"train": 12, "validation": 4})
    update_params(project, {"head": JUMPY})
    features_ready(project)
    train_head.main()
    first = keras.saving.load_model(project / "data/models/head.keras", compile=False).get_weights()
    # Other validation images (the same count): a head that looked at them would change.
    for path in sorted((project / "data/raw/validation").rglob("*.jpg")):
        pixels = np.asarray(keras.utils.load_img(path))
        keras.utils.save_img(path, 255 - pixels)
    features_ready(project)
    train_head.main()
    for before, after in zip(first, keras.saving.load_model(project / "data/models/head.keras").get_weights(),
                             strict=True):
        np.testing.assert_array_equal(before, after)


def test_with_a_test_split_early_stopping_watches_validation(project):
    make_class_folders(project / "data/raw", per_class=10)
    update_params(project, {"head": {"refit": False}})
    features_ready(project)
    train_head.main()
    summary = json.loads((project / "metrics/train/metrics.json").read_text())
    assert summary["early_stopping_images"] == 4  # the whole validation split; evaluate reports test
    evaluate.main()
    assert json.loads((project / "metrics/eval/metrics.json").read_text())["split"] == "test"


def test_head_refit_trains_again_on_every_training_image_for_the_chosen_epochs(project, capsys):
    """head.refit: the run with early stopping only chooses the epoch count; the saved head is a fresh one trained
    on the stop slice too, its batch-norm statistics those of every training row, and metrics.json describes it."""
    make_presplit_folders(project / "data/raw", {"train": 20, "validation": 6})
    update_params(project, {"head": {**JUMPY, "batch_size": 4, "refit": False}})
    features_ready(project)
    train_head.main()  # without refit: the run the refit repeats
    plain = json.loads((project / "metrics/train/metrics.json").read_text())
    plain_weights = keras.saving.load_model(project / "data/models/head.keras").get_weights()
    capsys.readouterr()

    update_params(project, {"head": {"refit": True}})
    train_head.main()
    out = capsys.readouterr().out
    summary = json.loads((project / "metrics/train/metrics.json").read_text())
    features, labels, _ = load_split(project / "data/features", "train")
    assert summary["refit"] is True and plain["refit"] is False and summary["refit_splits"] == "training"
    assert summary["selection"] == {key: value for key, value in plain.items() if key != "refit"}
    assert plain["early_stopping_images"] == 4 and summary["training_images"] == len(labels) == 40
    assert summary["epochs_run"] == plain["best_epoch"] < plain["epochs_run"]
    assert "eval" not in summary  # nothing held out is left to score it by
    assert f"train_head: refit on all 40 training images for the {plain['best_epoch']} epoch(s)" in out
    assert "saved its refit on all 40 training images (head.refit)" in out
    # Keras' steps per epoch: the refit's cover all 40 images (10 steps of 4), the choosing run's 36 (9 steps).
    chose, refit = out.split("train_head: refit on all")
    assert "10/10 - " in refit and "9/9 - " in chose and "10/10 - " not in chose

    model = keras.saving.load_model(project / "data/models/head.keras")
    assert any(not np.array_equal(a, b) for a, b in zip(plain_weights, model.get_weights(), strict=True))
    dense = keras.Model(model.inputs, model.get_layer("dense").output).predict(features, verbose=0)
    norm = model.get_layer("batch_norm")
    np.testing.assert_allclose(norm.moving_mean.numpy(), dense.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(norm.moving_variance.numpy(), dense.var(axis=0), rtol=1e-3, atol=1e-5)
    evaluate.main()
    assert json.loads((project / "metrics/eval/metrics.json").read_text())["split"] == "validation"


def test_head_refit_with_a_test_split_trains_on_train_and_validation_and_leaves_test_out(project, capsys):
    """With a test split, early stopping watched validation: the refit adds validation, and evaluate scores test."""
    make_class_folders(project / "data/raw", per_class=10)
    update_params(project, {"head": {**JUMPY, "batch_size": 4, "refit": True}})
    features_ready(project)
    counts = load_meta(project / "data/features")["counts"]
    train_head.main()
    out = capsys.readouterr().out
    summary = json.loads((project / "metrics/train/metrics.json").read_text())
    joined = counts["train"] + counts["validation"]
    assert summary["refit_splits"] == "train + validation" and summary["training_images"] == joined
    assert summary["selection"]["early_stopping_images"] == counts["validation"] and "eval" not in summary
    assert f"train_head: refit on all {joined} train + validation images for the " in out
    assert f"saved its refit on all {joined} train + validation images (head.refit)" in out
    steps = -(-joined // 4)
    assert f"{steps}/{steps} - " in out.split("train_head: refit on all")[1]
    # Batch-norm statistics over exactly the rows it trained on: train and validation, not test.
    model = keras.saving.load_model(project / "data/models/head.keras")
    rows = np.concatenate([load_split(project / "data/features", split)[0] for split in ("train", "validation")])
    dense = keras.Model(model.inputs, model.get_layer("dense").output).predict(rows, verbose=0)
    np.testing.assert_allclose(model.get_layer("batch_norm").moving_mean.numpy(), dense.mean(axis=0),
                               rtol=1e-4, atol=1e-5)
    evaluate.main()
    assert json.loads((project / "metrics/eval/metrics.json").read_text())["split"] == "test"


@pytest.mark.parametrize(
    ("labels", "fraction", "stop_count"),
    [([0] * 10 + [1] * 10, 0.1, 2), ([0] * 2 + [1] * 30, 0.1, 4), ([0, 1], 0.5, 0), ([0] * 3 + [1] * 3, 0.5, 4)],
)
def test_stopping_rows_are_stratified_and_leave_every_class_in_training(labels, fraction, stop_count):
    labels = np.array(labels)
    fit, stop = stopping_rows(labels, fraction, seed=1)
    assert len(stop) == stop_count and sorted(np.concatenate([fit, stop]).tolist()) == list(range(len(labels)))
    assert set(labels[fit].tolist()) == set(labels.tolist())  # no class loses its last training image
    assert stopping_rows(labels, fraction, seed=1)[1].tolist() == stop.tolist()  # seeded


def test_no_image_to_spare_is_a_clear_error():
    from bottleneck_clf.head import stopping_sets

    features, labels = np.zeros((2, 4), np.float32), np.array([0, 1])
    with pytest.raises(ValueError, match="head.early_stopping_fraction: no class has two training images"):
        stopping_sets((features, labels), (features, labels), False, 0.1, 0)


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [(8, 10, 0.4902, 0.9433), (10, 10, 0.7225, 1.0), (0, 10, 0.0, 0.2775), (788, 800, 0.9740, 0.9914)],
)
def test_wilson_interval(successes, trials, low, high):
    assert wilson_interval(successes, trials) == pytest.approx((low, high), abs=1e-4)


@pytest.mark.parametrize("trials", range(1, 101))
def test_wilson_interval_holds_all_right_and_all_wrong_exactly(trials):
    """4 right of 4 gave an upper bound of 0.9999999999999999 (round-off), below the accuracy it bounds."""
    assert wilson_interval(trials, trials)[1] == 1.0
    assert wilson_interval(0, trials)[0] == 0.0
    for successes in range(trials + 1):
        low, high = wilson_interval(successes, trials)
        assert low <= successes / trials <= high


def test_evaluate_writes_the_interval(project):
    make_class_folders(project / "data/raw", per_class=10)
    features_ready(project)
    train_head.main()
    evaluate.main()
    metrics = json.loads((project / "metrics/eval/metrics.json").read_text())
    low, high = metrics["accuracy_ci95"]["low"], metrics["accuracy_ci95"]["high"]
    assert low <= metrics["accuracy"] <= high and high - low > 0.2  # 4 test images: a wide interval
    correct = round(metrics["accuracy"] * metrics["images"])
    assert (low, high) == pytest.approx(wilson_interval(correct, metrics["images"]))
