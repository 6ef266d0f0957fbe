"""`bottleneck predict`: good files classified, unreadable ones reported without stopping the run."""

from __future__ import annotations

import csv
import io
import json
import os
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


def test_a_folder_with_nothing_to_classify_is_named(exported, tmp_path):
    empty = tmp_path / "photos"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"\0")  # a system file: skipped
    with pytest.raises(ValueError, match=rf"{empty}: no files to classify in there \(hidden and system files are "
                                         r"skipped\); pass image files or folders that hold them"):
        run_command(["predict", str(exported), str(empty)])


def test_classes_file_must_match_the_model(exported, tmp_path):
    wrong = tmp_path / "classes.json"
    wrong.write_text(json.dumps({"classes": ["a", "b", "c"]}))
    with pytest.raises(ValueError, match="lists 3 classes but .* outputs 2"):
        run_command(["predict", str(exported), str(tmp_path), "--classes", str(wrong)])


def test_runs_as_a_module(exported, images):
    """The command in a fresh process, its stdout strict UTF-8 (as under an en_US.UTF-8 locale): a file name that is
    not UTF-8 is printed as the bytes it is, not a UnicodeEncodeError after the whole run."""
    odd = images / os.fsdecode(b"caf\xe9.png")
    write_image(odd, (200, 60, 40), seed=3)
    broken = images / os.fsdecode(b"na\xefve.jpg")
    broken.write_bytes(b"not an image")
    result = subprocess.run([sys.executable, "-m", "bottleneck_clf", "predict", str(exported), str(images / "a.png"),
                             str(odd), str(broken)], cwd=ROOT, capture_output=True, check=False,
                            env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith(os.fsencode(images / "a.png") + b",") and lines[1].startswith(os.fsencode(odd) + b",")
    # stderr (Python's: backslashreplace) names the skipped file with the same escape as elsewhere, not \udcef.
    assert os.fsencode(images) + os.sep.encode() + b"na\\xefve.jpg: skipped:" in result.stderr, result.stderr[-2000:]


class StrictOutput(io.TextIOBase):
    """A stream that encodes to UTF-8 strictly and has no reconfigure to make it write a name's bytes (as one a
    notebook or an application hands predict may be; Jupyter's own sends text on later and shows such bytes as
    a replacement character)."""

    def __init__(self):
        self.sent = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.sent.append(text.encode("utf-8"))  # a surrogate escape raises UnicodeEncodeError
        return len(text)


def test_on_a_stream_it_cannot_reconfigure_a_non_utf8_name_is_printed_with_escapes(exported, images, monkeypatch):
    odd = images / os.fsdecode(b"caf\xe9.png")
    write_image(odd, (200, 60, 40), seed=3)
    broken = images / os.fsdecode(b"na\xefve.jpg")
    broken.write_bytes(b"not an image")
    out, err = StrictOutput(), StrictOutput()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    assert run_command(["predict", str(exported), str(odd), str(broken)]) == 0
    printed, said = b"".join(out.sent).decode(), b"".join(err.sent).decode()
    assert printed.startswith(f"{images}{os.sep}caf\\xe9.png,") and printed.count("\n") == 1, printed
    assert f"predict: {images}{os.sep}na\\xefve.jpg: skipped:" in said, said


def test_an_output_file_keeps_a_non_utf8_name_as_its_bytes(exported, images, tmp_path):
    odd = images / os.fsdecode(b"caf\xe9.png")
    write_image(odd, (200, 60, 40), seed=3)
    output = tmp_path / "preds.csv"
    assert run_command(["predict", str(exported), str(odd), "--output", str(output)]) == 0
    assert output.read_bytes().splitlines()[1].startswith(os.fsencode(odd) + b",")


@pytest.mark.parametrize(("where", "said"), [
    ("a-folder", r"--output .*: is a folder; give the path of a CSV file to write"),
    ("under-a-file", r"--output .*: .*a-file is a file, not a folder; give a path in a folder you can write to"),
    ("new-folder", None),  # made for it
])
def test_an_output_that_cannot_be_written_stops_before_any_work(exported, images, tmp_path, capsys, where, said):
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("mine")
    output = {"a-folder": tmp_path / "a-folder", "under-a-file": tmp_path / "a-file/preds.csv",
              "new-folder": tmp_path / "new/folder/preds.csv"}[where]
    if said is None:
        assert run_command(["predict", str(exported), str(images / "a.png"), "--output", str(output)]) == 0
        assert str(images / "a.png") in read_rows(output)
        return
    with pytest.raises(ValueError, match=said):
        run_command(["predict", str(exported), str(images / "a.png"), "--output", str(output)])
    assert "predict: format" not in capsys.readouterr().err  # refused before the model was loaded
    assert (tmp_path / "a-file").read_text() == "mine" and not any((tmp_path / "a-folder").iterdir())


def test_a_run_that_stops_makes_no_output_folder(exported, images, tmp_path):
    wrong = tmp_path / "classes.json"
    wrong.write_text(json.dumps({"classes": ["a", "b", "c"]}))
    with pytest.raises(ValueError, match="lists 3 classes"):
        run_command(["predict", str(exported), str(images / "a.png"), "--classes", str(wrong),
                     "--output", str(tmp_path / "new/folder/preds.csv")])
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(("content", "said"), [
    ("{not json", r"classes.json: cannot read it as JSON \(.+\); pass the classes.json written beside"),
    (json.dumps(["cats", "dogs"]), r"classes.json: no list of class names under \"classes\""),
    (json.dumps({"labels": CLASSES}), r"classes.json: no list of class names under \"classes\""),
    (json.dumps({"classes": CLASSES, "threshold": 0.5, "image_size": 64, "interpolation": "bilinear"}),
     r"classes.json: image_size 64, but the model takes 32 px images; use the classes.json exported with this"),
    (json.dumps({"classes": CLASSES, "threshold": 0.5, "image_size": 32, "interpolation": "sinc"}),
     r"classes.json: unknown interpolation 'sinc' \(valid: .*bilinear.*\); use the classes.json exported"),
], ids=["not-json", "a-list", "no-classes", "another-size", "unknown-interpolation"])
def test_a_classes_file_of_the_wrong_form_is_one_message(exported, images, tmp_path, content, said):
    info = tmp_path / "classes.json"
    info.write_text(content)
    with pytest.raises(ValueError, match=said):
        run_command(["predict", str(exported), str(images / "a.png"), "--classes", str(info)])


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
