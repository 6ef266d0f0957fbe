"""The head's accuracy levers (README "Accuracy levers"): each does what its params key says, and the
defaults leave the seed's head exactly as it was."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
from conftest import ROOT

from bottleneck_clf.config import load_config
from bottleneck_clf.head import build_head, probabilities, seed_everything, stopping_sets, train_head

BASE = load_config(ROOT / "params.yaml").head


def separable(n_classes: int, per_class: int = 40, dim: int = 16, seed: int = 0):
    """Features whose class is readable from one coordinate each, with noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    features = rng.normal(0, 0.3, (len(labels), dim)).astype(np.float32)
    features[np.arange(len(labels)), labels] += 3.0
    return features, labels


def train(n_classes: int, **changes):
    seed_everything(0)
    config = {"units": 16, "epochs": 10, "batch_size": 16, "patience": 0, "learning_rate": 0.01, **changes}
    config = dataclasses.replace(BASE, **config)
    train_set, validation = separable(n_classes), separable(n_classes, per_class=10, seed=1)
    fit, stop, _ = stopping_sets(train_set, validation, True, 0.1, 0)
    model, history, _ = train_head(fit, stop, n_classes, config, 0)
    accuracy = float(np.mean(probabilities(model, validation[0]).argmax(1) == validation[1]))
    return model, history, accuracy


def test_defaults_build_the_seeds_head_with_batch_norm():
    """params.yaml turns batch normalisation on (README "Accuracy levers"); with it off, the seed's head."""
    assert (BASE.batch_norm, BASE.l2, BASE.label_smoothing, BASE.schedule) == (True, 0.0, 0.0, "constant")
    model = build_head((16,), 2, 8, 0.5)
    assert [layer.name for layer in model.layers] == ["features", "flatten", "dense", "dropout", "probability"]
    assert not model.losses


@pytest.mark.parametrize(
    ("n_classes", "changes"),
    [(2, {"batch_norm": True}), (4, {"batch_norm": True}), (2, {"l2": 1e-3}), (4, {"label_smoothing": 0.1}),
     (2, {"label_smoothing": 0.1}), (4, {"schedule": "cosine"}), (2, {"schedule": "plateau"})],
    ids=["batch_norm-2", "batch_norm-4", "l2-2", "label_smoothing-4", "label_smoothing-2", "cosine-4", "plateau-2"],
)
def test_each_lever_still_learns(n_classes, changes):
    _, _, accuracy = train(n_classes, **changes)
    assert accuracy >= 0.9


def test_batch_norm_and_l2_are_in_the_model():
    model = build_head((16,), 3, 8, 0.5, batch_norm=True, l2=1e-3)
    names = [layer.name for layer in model.layers]
    assert names.index("dense") < names.index("batch_norm") < names.index("relu") < names.index("dropout")
    assert len(model.losses) == 2  # the hidden and the output kernel


@pytest.mark.parametrize("n_classes", [2, 5])
def test_label_smoothing_changes_the_target(n_classes):
    """A confident right answer costs more with smoothing: the target is no longer 0/1."""
    from bottleneck_clf.head import loss_for

    plain, smooth = keras.losses.get(loss_for(n_classes)), loss_for(n_classes, 0.2)
    labels = np.array([1], np.int64)
    probs = np.array([[0.999]], np.float32) if n_classes == 2 else np.eye(n_classes, dtype=np.float32)[[1]] * 0.999
    y_true = labels.reshape(-1, 1).astype(np.float32) if n_classes == 2 else labels
    assert float(np.mean(smooth(y_true, probs))) > float(np.mean(plain(y_true, probs))) + 0.1


def test_schedules_move_the_learning_rate():
    cosine, history, _ = train(2, schedule="cosine", learning_rate=0.01)
    rate = cosine.optimizer.learning_rate
    assert float(rate) < 1e-4, "cosine decays to about 0 by the last epoch"
    _, history, _ = train(2, schedule="plateau", learning_rate=0.01, patience=2, epochs=30)
    assert min(history["learning_rate"]) < 0.01, history["learning_rate"]


@pytest.mark.parametrize("patience", [0, 3], ids=["last-epoch", "early-stopped"])
def test_batch_norm_statistics_are_the_fitted_rows_own(patience):
    """The saved head's moving mean and variance are the exact statistics of the BN input over the fitted
    rows (head.PreciseBatchNorm), not Keras' lagging moving average: on 3 steps an epoch they would differ."""
    seed_everything(0)
    config = dataclasses.replace(BASE, units=16, epochs=6, batch_size=32, patience=patience, batch_norm=True)
    fit, stop, _ = stopping_sets(separable(2, per_class=50), separable(2, per_class=10, seed=1), True, 0.1, 0)
    model, _, _ = train_head(fit, stop, 2, config, 0)
    hidden = np.asarray(keras.Model(model.inputs, model.get_layer("dense").output).predict_on_batch(fit[0]),
                        np.float64)
    norm = model.get_layer("batch_norm")
    np.testing.assert_allclose(np.asarray(norm.moving_mean), hidden.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(norm.moving_variance), hidden.var(0), rtol=1e-4, atol=1e-5)
    # Keras' own moving average starts at mean 0, variance 1 and moves 1 % a step: far from these.
    assert np.abs(hidden.mean(0)).max() > 0.1 or np.abs(hidden.var(0) - 1).max() > 0.1
