"""head.ensemble: several heads from other seeds, averaged into the one saved head that evaluate and export use.

With `ensemble: 1` the head is exactly the single head; with more, member 1 is that head, the early-stopped head
fine-tuning starts from is unchanged, and metrics.json describes the saved average (README "Preprocessing and the
head")."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import make_class_folders, update_params

from bottleneck_clf.head import average_heads, build_head, member_seed, probabilities
from bottleneck_clf.scoring import accuracy_and_loss
from stages import evaluate, export, prepare, train_head, weights
from stages import extract_features as extract_stage


def weights_of(path) -> list[np.ndarray]:
    return keras.saving.load_model(path, compile=False).get_weights()


def same_weights(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("n_classes", [2, 4])
def test_the_average_is_the_mean_of_its_members_and_survives_a_save(n_classes, tmp_path):
    from bottleneck_clf.model_files import save_model

    keras.utils.set_random_seed(0)
    members = [build_head((8,), n_classes, 4, 0.5, batch_norm=True) for _ in range(3)]
    features = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    each = [probabilities(member, features) for member in members]
    assert not np.allclose(each[0], each[1]), "members from other seeds should differ"
    ensemble = average_heads(members)
    assert [layer.name for layer in ensemble.layers] == ["features", "head_1", "head_2", "head_3", "average"]
    np.testing.assert_allclose(probabilities(ensemble, features), np.mean(each, axis=0), atol=1e-6)
    save_model(ensemble, tmp_path / "head.keras")
    loaded = keras.saving.load_model(tmp_path / "head.keras", compile=False)  # safe mode
    np.testing.assert_allclose(probabilities(loaded, features), np.mean(each, axis=0), atol=1e-6)


def test_params_yaml_averages_five_heads():
    """The default since the head-ensemble sweep (README "Accuracy levers"); 1 gives the single head."""
    from conftest import ROOT

    from bottleneck_clf.config import load_config

    assert load_config(ROOT / "params.yaml").head.ensemble == 5


def test_one_member_is_the_head_itself():
    head = build_head((8,), 2, 4, 0.5)
    assert average_heads([head]) is head
    assert member_seed(42, 0) == 42 and len({member_seed(seed, m) for seed in (3, 7, 42) for m in range(5)}) == 15


def run_to_evaluate(project, **head):
    update_params(project, {"head": head})
    for stage in (weights, prepare, extract_stage, train_head, evaluate):
        stage.main()
    return json.loads((project / "metrics/train/metrics.json").read_text())


def saved(project) -> dict[str, list[np.ndarray]]:
    return {name: weights_of(project / f"data/models/{name}.keras") for name in ("head", "head_early_stopped")}


def rows(project, split: str):
    from bottleneck_clf.features import load_split

    features, labels, _ = load_split(project / "data/features", split)
    return np.asarray(features), np.asarray(labels)


@pytest.mark.parametrize("test_split", [True, False], ids=["test-split", "stop-slice"])
@pytest.mark.parametrize("refit", [True, False], ids=["refit", "no-refit"])
def test_the_stage_saves_the_average_with_member_1_as_the_single_head(project, refit, test_split):
    from bottleneck_clf.head import stopping_rows

    make_class_folders(project / "data/raw", per_class=10)
    update_params(project, {"prepare": {"test_fraction": 0.2 if test_split else 0.0}})
    single = run_to_evaluate(project, ensemble=1, refit=refit)
    one = saved(project)
    summary = run_to_evaluate(project, ensemble=3, refit=refit)
    three = saved(project)

    # Fine-tuning's starting point does not depend on head.ensemble; member 1 is the single head.
    assert same_weights(three["head_early_stopped"], one["head_early_stopped"])
    model = keras.saving.load_model(project / "data/models/head.keras", compile=False)
    assert model.name == "head_ensemble" and [m.name for m in model.layers[1:4]] == ["head_1", "head_2", "head_3"]
    assert same_weights(model.get_layer("head_1").get_weights(), one["head"])
    assert not same_weights(model.get_layer("head_2").get_weights(), one["head"])

    # metrics.json: the saved average's own figures, each member's summary (member 1's the single head's).
    assert summary["ensemble"] == 3 and summary["refit"] is refit
    assert list(summary["members"]) == ["1", "2", "3"] and summary["members"]["1"] == single
    train, train_labels = rows(project, "train")
    validation, validation_labels = rows(project, "validation")
    if test_split:  # the stop set is validation
        fit, stop = (train, train_labels), (validation, validation_labels)
    else:  # the stop set is a seeded slice of training (base.seed 42)
        fit_rows, stop_rows = stopping_rows(train_labels, 0.1, 42)
        fit, stop = (train[fit_rows], train_labels[fit_rows]), (train[stop_rows], train_labels[stop_rows])
    trained_on = tuple(np.concatenate(pair) for pair in zip(fit, stop, strict=True)) if refit else fit

    def figures(features, labels):
        scores = accuracy_and_loss(probabilities(model, features), labels, 0.5)
        return {"accuracy": scores["accuracy"], "log_loss": scores["loss"]}

    assert summary["training_images"] == len(trained_on[1])
    assert summary["average"]["trained_on"] == pytest.approx(figures(*trained_on))
    if refit:
        assert "stop_set" not in summary["average"]
    else:
        assert summary["average"]["stop_set"] == pytest.approx(figures(*stop))

    # evaluate scores the average, on test or (without one) validation.
    scored, scored_labels = rows(project, "test") if test_split else (validation, validation_labels)
    metrics = json.loads((project / "metrics/eval/metrics.json").read_text())
    assert metrics["model"] == "head" and metrics["images"] == len(scored_labels)
    assert metrics["loss"] == pytest.approx(figures(scored, scored_labels)["log_loss"], abs=1e-6)


LOAD_AND_PREDICT = r"""
import json, sys
import numpy as np
from PIL import Image
import keras
model = keras.saving.load_model(sys.argv[1])
print(json.dumps({p: np.asarray(model.predict(np.asarray(Image.open(p).convert("RGB"))[None], verbose=0))[0].tolist()
                  for p in sys.argv[2:]}))
"""


def test_the_exported_model_carries_the_average(project, tmp_path):
    """export builds the classifier around the averaged head: a fresh process, outside the project, gives
    evaluate's probabilities."""
    make_class_folders(project / "data/raw", per_class=8)
    update_params(project, {"head": {"ensemble": 2}, "export": {"formats": ["keras"]}})
    for stage in (weights, prepare, extract_stage, train_head, evaluate, export):
        stage.main()
    with open(project / "metrics/eval/predictions.csv", newline="", encoding="utf-8") as handle:
        expected = {str(project / "data/raw" / row["path"]): [float(row["p_cats"]), float(row["p_dogs"])]
                    for row in csv.DictReader(handle)}
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    model = project / "data/models/classifier/model.keras"
    result = subprocess.run([sys.executable, "-I", "-c", LOAD_AND_PREDICT, str(model), *expected], cwd=tmp_path,
                            env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    for path, probs in expected.items():
        np.testing.assert_allclose(got[path], probs, atol=2e-5, err_msg=path)
