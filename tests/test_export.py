"""The exported classifier: raw uint8 images in, the pipeline's probabilities out, loadable without this project."""

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

from bottleneck_clf.cli import run_command
from stages import evaluate, export, finetune, finetune_ensemble, prepare, train_head, weights
from stages import extract_features as extract_stage

# Run in a fresh interpreter, from a folder outside the project, with the project kept off sys.path.
LOAD_AND_PREDICT = r"""
import json, sys
import numpy as np
from PIL import Image
import keras
model = keras.saving.load_model(sys.argv[1])  # safe_mode=True is the default
assert not any(name.split(".")[0] in ("bottleneck_clf", "stages") for name in sys.modules), "project imported"
rows = {}
for path in sys.argv[2:]:
    image = np.asarray(Image.open(path).convert("RGB"), np.uint8)
    rows[path] = np.asarray(model.predict(image[None], verbose=0))[0].tolist()
print(json.dumps(rows))
"""


def run_pipeline(project, finetuned: bool, precision: str = "float32", ensemble: bool = False):
    make_class_folders(project / "data/raw", per_class=8)
    update_params(project, {"finetune": {"enabled": finetuned, "ensemble": ensemble},
                            "extract": {"precision": precision}})
    for stage in (weights, prepare, extract_stage, train_head, finetune, finetune_ensemble, evaluate, export):
        stage.main()


def read_predictions(project) -> dict[str, dict]:
    """evaluate's predictions.csv rows by absolute image path."""
    with open(project / "metrics/eval/predictions.csv", newline="", encoding="utf-8") as handle:
        return {str(project / "data/raw" / row["path"]): row for row in csv.DictReader(handle)}


# Measured on the tiny project (README, "Ship it"): export and evaluate in the same precision agree within 5e-7
# (the 6 decimals of predictions.csv), both for float32 and bfloat16; float32 blocks scored against bfloat16
# features are 2e-4 apart, ten times this bound, so a model exported in the wrong precision fails it.
AGREEMENT = 2e-5


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("trained", ["head", "finetuned", "ensemble"])
def test_exported_model_gives_evaluates_predictions_in_a_fresh_process(project, tmp_path, trained, precision):
    run_pipeline(project, trained != "head", precision, ensemble=trained == "ensemble")
    folder = project / "data/models/classifier"
    info = json.loads((folder / "classes.json").read_text())
    assert info["classes"] == ["cats", "dogs"] and info["trained"] == trained
    assert info["precision"] == precision and info["threshold"] == 0.5
    expected = {path: [float(row["p_cats"]), float(row["p_dogs"])] for path, row in read_predictions(project).items()}
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-I", "-c", LOAD_AND_PREDICT, str(folder / "model.keras"), *expected],
                            cwd=outside, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(got) == set(expected)
    for path, probs in expected.items():
        np.testing.assert_allclose(got[path], probs, atol=AGREEMENT, err_msg=path)


def threshold_between(probabilities: list[float]) -> float:
    """A threshold in the widest gap between the images' probabilities, away from 0.5's side of them all,
    so that it changes at least one label and no round-off can put an image on the other side of it."""
    points = sorted({*probabilities, 0.5})
    gaps = [(high - low, (low + high) / 2) for low, high in zip(points, points[1:], strict=False)
            if 0.5 not in (low, high)]
    width, middle = max(gaps)
    assert width > 2e-4, f"probabilities {points} too close together to pick a threshold between them"
    return middle


def test_predict_gives_evaluates_labels_at_the_projects_threshold(project, tmp_path):
    run_pipeline(project, finetuned=False)
    at_half = {path: row["predicted"] for path, row in read_predictions(project).items()}
    threshold = threshold_between([float(row["p_dogs"]) for row in read_predictions(project).values()])
    update_params(project, {"evaluate": {"threshold": threshold}})
    evaluate.main()
    export.main()
    expected = {path: row["predicted"] for path, row in read_predictions(project).items()}
    assert expected != at_half, "the threshold should change at least one of evaluate's labels"
    assert json.loads((project / "data/models/classifier/classes.json").read_text())["threshold"] == threshold
    output = tmp_path / "preds.csv"
    model = str(project / "data/models/classifier/model.keras")
    assert run_command(["predict", model, *expected, "--output", str(output)]) == 0
    with open(output, newline="", encoding="utf-8") as handle:
        got = {row["path"]: row["class"] for row in csv.DictReader(handle)}
    assert got == expected


def test_exported_model_takes_any_size_and_sums_to_one(project):
    run_pipeline(project, finetuned=False)
    model = keras.saving.load_model(project / "data/models/classifier/model.keras")
    assert model.input.dtype == "uint8"
    rng = np.random.default_rng(0)
    for shape in ((1, 17, 90, 3), (2, 300, 41, 3), (1, 32, 32, 3)):
        probs = np.asarray(model.predict(rng.integers(0, 256, shape, dtype=np.uint8), verbose=0))
        assert probs.shape == (shape[0], 2)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_three_classes_export_softmax(project):
    make_class_folders(project / "data/raw", per_class=6, classes=("birds", "cats", "dogs"))
    # export checks every format against evaluate
    for stage in (weights, prepare, extract_stage, train_head, finetune, finetune_ensemble, evaluate, export):
        stage.main()
    model = keras.saving.load_model(project / "data/models/classifier/model.keras")
    assert model.output_shape == (None, 3)
    info = json.loads((project / "data/models/classifier/classes.json").read_text())
    assert info["classes"] == ["birds", "cats", "dogs"] and info["threshold"] == 0.5


def test_three_classes_reject_a_threshold_other_than_half(project):
    make_class_folders(project / "data/raw", per_class=6, classes=("birds", "cats", "dogs"))
    for stage in (weights, prepare, extract_stage, train_head, finetune, finetune_ensemble):
        stage.main()
    update_params(project, {"evaluate": {"threshold": 0.7}})
    # Rather than ignore it: with three classes the most probable one wins whatever the threshold says.
    for stage in (evaluate, export):
        with pytest.raises(ValueError, match=r"evaluate.threshold is 0.7 but the data has 3 classes.*"
                                             r"set evaluate.threshold to 0.5 in params.yaml"):
            stage.main()


def test_a_split_larger_than_check_images_is_checked_on_a_seeded_sample(project, capsys):
    """export.check_images below the evaluated split's size: each format runs on that many of evaluate's images
    (every checked image is a whole VGG16 pass per format), and metrics.json says how many of how many."""
    make_class_folders(project / "data/raw", per_class=10)
    update_params(project, {"export": {"check_images": 3}})
    for stage in (weights, prepare, extract_stage, train_head, finetune, finetune_ensemble, evaluate, export):
        stage.main()
    metrics = json.loads((project / "metrics/export/metrics.json").read_text())
    evaluated = json.loads((project / "metrics/eval/metrics.json").read_text())
    assert metrics["images"] == 3 and metrics["split_images"] == evaluated["images"] > 3, metrics
    checked = metrics["formats"]["keras"]
    assert checked["label_agreement"] == 1.0 and checked["max_abs_prob_diff"] < AGREEMENT
    assert checked["accuracy_ci95"]["low"] <= checked["accuracy"] <= checked["accuracy_ci95"]["high"]
    assert f"each format checked on 3 of evaluate's {evaluated['images']} images" in capsys.readouterr().out


@pytest.mark.parametrize("count", [0, 3, 9, 10, 11])
def test_check_sample_keeps_aligned_rows_in_order(count):
    from bottleneck_clf.runtimes import check_sample

    reference = ([f"{i}.png" for i in range(10)], np.arange(10) % 2, np.arange(10), np.arange(20.0).reshape(10, 2))
    got = check_sample(reference, count, seed=42)
    if count in (0, 10, 11):  # 0: all; as many or more than the split: all of it, untouched
        assert len(got) == 4 and got[0] == reference[0]
        assert all(np.array_equal(a, b) for a, b in zip(got[1:], reference[1:], strict=True))
        return
    rows = [int(name.split(".")[0]) for name in got[0]]
    assert len(rows) == len(set(rows)) == count and rows == sorted(rows)  # distinct, in predictions.csv's order
    assert got[1].tolist() == [i % 2 for i in rows] and got[2].tolist() == rows
    assert got[3].tolist() == [[2.0 * i, 2.0 * i + 1] for i in rows]
    assert check_sample(reference, count, seed=42)[0] == got[0]  # seeded
    assert any(check_sample(reference, count, seed=seed)[0] != got[0] for seed in range(5))
