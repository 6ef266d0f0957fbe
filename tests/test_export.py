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

from stages import evaluate, export, finetune, prepare, train_head, weights
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


def run_pipeline(project, finetuned: bool):
    make_class_folders(project / "data/raw", per_class=8)
    update_params(project, {"finetune": {"enabled": finetuned}})
    for stage in (weights, prepare, extract_stage, train_head, finetune, evaluate, export):
        stage.main()


@pytest.mark.parametrize("finetuned", [False, True], ids=["head", "finetuned"])
def test_exported_model_gives_evaluates_predictions_in_a_fresh_process(project, tmp_path, finetuned):
    run_pipeline(project, finetuned)
    folder = project / "data/models/classifier"
    info = json.loads((folder / "classes.json").read_text())
    assert info["classes"] == ["cats", "dogs"] and info["trained"] == ("finetuned" if finetuned else "head")
    with open(project / "metrics/eval/predictions.csv", newline="", encoding="utf-8") as handle:
        expected = {str(project / "data/raw" / row["path"]): [float(row["p_cats"]), float(row["p_dogs"])]
                    for row in csv.DictReader(handle)}
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-I", "-c", LOAD_AND_PREDICT, str(folder / "model.keras"), *expected],
                            cwd=outside, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(got) == set(expected)
    for path, probs in expected.items():
        np.testing.assert_allclose(got[path], probs, atol=2e-5, err_msg=path)


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
    for stage in (weights, prepare, extract_stage, train_head, finetune, export):
        stage.main()
    model = keras.saving.load_model(project / "data/models/classifier/model.keras")
    assert model.output_shape == (None, 3)
    assert json.loads((project / "data/models/classifier/classes.json").read_text())["classes"] == [
        "birds", "cats", "dogs"]
