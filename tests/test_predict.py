"""`bottleneck predict`: good files classified, unreadable ones reported without stopping the run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import ROOT, write_image

from bottleneck_clf.cli import run_command
from bottleneck_clf.config import ExtractConfig
from bottleneck_clf.export import build_classifier
from bottleneck_clf.finetune import build_top
from bottleneck_clf.head import build_head
from bottleneck_clf.model_files import save_model
from bottleneck_clf.vgg_weights import read_weights

CLASSES = ["cats", "dogs"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_weights):
    """A small exported classifier (random VGG16, untrained head) with classes.json beside it."""
    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("classifier")
    top = build_top((1, 1, 512), 0, "avg", None, build_head((512,), 2, 4, 0.0))
    extract = ExtractConfig(image_size=32, interpolation="bilinear", pooling="avg", batch_size=8, precision="float32")
    model = build_classifier(read_weights(tiny_weights), top, 0, 2, extract)
    save_model(model, folder / "model.keras")
    (folder / "classes.json").write_text(json.dumps({"classes": CLASSES}))
    return folder / "model.keras"


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    write_image(folder / "a.png", (200, 60, 40), seed=1)
    write_image(folder / "nested/b.jpg", (40, 80, 200), seed=2, size=57)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"")
    return folder


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["path"]: row for row in csv.DictReader(handle)}


def test_folder_with_unreadable_files_writes_every_row(exported, images, tmp_path, capsys):
    output = tmp_path / "preds.csv"
    missing = tmp_path / "nope.png"
    assert run_command(["predict", str(exported), str(images), str(missing), "--output", str(output)]) == 0
    rows = read_rows(output)
    good = {str(images / "a.png"), str(images / "nested/b.jpg")}
    bad = {str(images / "broken.jpg"), str(images / "notes.txt"), str(missing)}
    assert set(rows) == good | bad  # hidden files are skipped, as in prepare
    model = keras.saving.load_model(exported)
    for path in good:
        row = rows[path]
        assert row["class"] in CLASSES and row["error"] == ""
        probs = [float(row["p_cats"]), float(row["p_dogs"])]
        # No threshold in the fixture's classes.json: 0.5, and a tie goes to the second class, as in evaluate.
        chosen = int(probs[1] >= 0.5)
        assert row["class"] == CLASSES[chosen] and float(row["probability"]) == probs[chosen]
        from PIL import Image

        expected = model.predict(np.asarray(Image.open(path).convert("RGB"))[None], verbose=0)[0]
        np.testing.assert_allclose(probs, expected, atol=2e-6)
    for path in bad:
        assert rows[path]["class"] == "" and rows[path]["error"]
    assert rows[str(missing)]["error"] == "no such file or folder"
    assert "not an image" in rows[str(images / "notes.txt")]["error"]
    err = capsys.readouterr().err
    assert f"{images / 'broken.jpg'}: skipped" in err and "2 classified, 3 not readable" in err
    # The fixture's classes.json predates recorded thresholds: predict says once which one it uses.
    assert err.count("records no threshold; using 0.5") == 1


def test_prints_path_class_probability_without_output(exported, images, capsys):
    assert run_command(["predict", str(exported), str(images / "a.png")]) == 0
    path, name, probability = capsys.readouterr().out.strip().split(",")
    assert path == str(images / "a.png") and name in CLASSES and 0.5 <= float(probability) <= 1.0


def test_nothing_readable_exits_1(exported, images):
    assert run_command(["predict", str(exported), str(images / "broken.jpg")]) == 1


def test_classes_file_must_match_the_model(exported, tmp_path):
    wrong = tmp_path / "classes.json"
    wrong.write_text(json.dumps({"classes": ["a", "b", "c"]}))
    with pytest.raises(ValueError, match="lists 3 classes but .* outputs 2"):
        run_command(["predict", str(exported), str(tmp_path), "--classes", str(wrong)])


def test_runs_as_a_module(exported, images):
    result = subprocess.run([sys.executable, "-m", "bottleneck_clf", "predict", str(exported), str(images / "a.png")],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(str(images / "a.png") + ",")


def test_threshold_from_classes_json_decides(exported, images, tmp_path, capsys):
    output = tmp_path / "at_half.csv"
    assert run_command(["predict", str(exported), str(images / "a.png"), "--output", str(output)]) == 0
    p_dogs = float(read_rows(output)[str(images / "a.png")]["p_dogs"])
    capsys.readouterr()
    for threshold, name in ((p_dogs - 0.01, "dogs"), (p_dogs + 0.01, "cats")):
        info = tmp_path / f"{name}.json"
        info.write_text(json.dumps({"classes": CLASSES, "threshold": threshold}))
        assert run_command(["predict", str(exported), str(images / "a.png"), "--classes", str(info)]) == 0
        out, err = capsys.readouterr()
        _, given, probability = out.strip().split(",")
        # The class the threshold gives, with that class's own probability, as evaluate's predictions.csv has it.
        assert given == name and "threshold" not in err
        assert float(probability) == pytest.approx(p_dogs if name == "dogs" else 1.0 - p_dogs, abs=2e-6)


def test_bad_threshold_in_classes_json_names_the_file(exported, tmp_path):
    info = tmp_path / "classes.json"
    info.write_text(json.dumps({"classes": CLASSES, "threshold": 1.5}))
    with pytest.raises(ValueError, match=r"classes.json: threshold must be a number in \(0, 1\), got 1.5"):
        run_command(["predict", str(exported), str(tmp_path), "--classes", str(info)])
