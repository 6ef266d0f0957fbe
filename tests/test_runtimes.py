"""Every export format (SavedModel, LiteRT float32 and int8, ONNX): written by the export stage, checked in its own
runtime against evaluate's predictions, loadable without this project, and usable by `bottleneck predict`."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import pytest
from conftest import TINY_PARAMS, link_or_copy, make_class_folders, update_params
from project_copy import copy_project

from bottleneck_clf.cli import run_command
from bottleneck_clf.errors import UserError
from bottleneck_clf.params import check_params
from bottleneck_clf.runtimes import FILES, FLOAT_AGREEMENT, FORMATS, require_extra

ALL_FORMATS = list(FORMATS)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, tiny_weights):
    """The tiny project run through export with every format (one run shared by the module's tests), its head an
    average of two (head.ensemble, as the default's five): nested models in every runtime."""
    from stages import evaluate, export, finetune, finetune_ensemble, prepare, train_head, weights
    from stages import extract_features as extract_stage

    root = copy_project(tmp_path_factory.mktemp("shipped") / "project")
    link_or_copy(tiny_weights, root / "data/weights/user/random.weights.h5")
    update_params(root, {**TINY_PARAMS, "weights": {"source": "data/weights/user/random.weights.h5"},
                         "head": {**TINY_PARAMS["head"], "ensemble": 2},
                         "export": {"formats": ALL_FORMATS, "calibration_images": 8}})
    make_class_folders(root / "data/raw", per_class=8)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("BOTTLENECK_FEATURE_CACHE", str(root.parent / "feature-cache"))
        for stage in (weights, prepare, extract_stage, train_head, finetune, finetune_ensemble, evaluate, export):
            stage.main()
    return root


def test_an_ensemble_ships_to_every_format(tmp_path, tiny_weights, monkeypatch):
    """finetune.ensemble saves two tops averaged in one graph, here (finetune.refit) the frozen one holding the
    saved average of two heads: models nested three deep. Every runtime gives evaluate's probabilities for it
    too (export raises when a float format is more than FLOAT_AGREEMENT off, so reaching metrics is the check)."""
    from bottleneck_clf.finetune import ensemble_parts
    from stages import evaluate, export, finetune, finetune_ensemble, prepare, train_head, weights
    from stages import extract_features as extract_stage

    root = copy_project(tmp_path / "project")
    link_or_copy(tiny_weights, root / "data/weights/user/random.weights.h5")
    update_params(root, {**TINY_PARAMS, "weights": {"source": "data/weights/user/random.weights.h5"},
                         "head": {**TINY_PARAMS["head"], "ensemble": 2},
                         "finetune": {**TINY_PARAMS["finetune"], "enabled": True, "ensemble": True, "refit": True},
                         "export": {"formats": ALL_FORMATS, "calibration_images": 8}})
    make_class_folders(root / "data/raw", per_class=8)
    monkeypatch.chdir(root)
    monkeypatch.setenv("BOTTLENECK_FEATURE_CACHE", str(tmp_path / "feature-cache"))
    for stage in (weights, prepare, extract_stage, train_head, finetune, finetune_ensemble, evaluate, export):
        stage.main()
    metrics = json.loads((root / "metrics/export/metrics.json").read_text())
    evaluated = json.loads((root / "metrics/eval/metrics.json").read_text())
    assert evaluated["model"] == "ensemble" and list(metrics["formats"]) == ALL_FORMATS
    assert json.loads((root / "data/models/classifier/classes.json").read_text())["trained"] == "ensemble"
    frozen = ensemble_parts(keras.saving.load_model(root / "data/models/finetuned/model.keras"))["head"]
    assert "head_ensemble" in [layer.name for layer in frozen.layers]  # the saved average, not one head
    for fmt, result in metrics["formats"].items():
        if fmt != "litert_int8":
            assert result["max_abs_prob_diff"] <= FLOAT_AGREEMENT and result["label_agreement"] == 1.0, fmt


def predictions(root: Path) -> dict[str, dict]:
    """evaluate's predictions.csv rows by absolute image path."""
    with open(root / "metrics/eval/predictions.csv", newline="", encoding="utf-8") as handle:
        return {str(root / "data/raw" / row["path"]): row for row in csv.DictReader(handle)}


def test_every_format_is_written_and_agrees_with_evaluate(shipped):
    folder = shipped / "data/models/classifier"
    metrics = json.loads((shipped / "metrics/export/metrics.json").read_text())
    evaluated = json.loads((shipped / "metrics/eval/metrics.json").read_text())
    assert metrics["images"] == metrics["split_images"] == evaluated["images"] == len(predictions(shipped)) > 0
    assert list(metrics["formats"]) == ALL_FORMATS
    head = keras.saving.load_model(shipped / "data/models/head.keras", compile=False)
    assert head.name == "head_ensemble", "the shipped head should be an average (head.ensemble: 2)"
    for fmt, result in metrics["formats"].items():
        path = folder / FILES[fmt]
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
        assert result["file_bytes"] == size > 0, fmt
        if fmt == "litert_int8":
            continue  # reported, not bound: what quantization costs is the figure to read
        assert result["max_abs_prob_diff"] <= FLOAT_AGREEMENT, fmt
        assert result["label_agreement"] == 1.0 and result["accuracy"] == evaluated["accuracy"], fmt
        assert result["accuracy_ci95"] == evaluated["accuracy_ci95"], fmt  # the same images, the same interval
    int8 = metrics["formats"]["litert_int8"]
    assert 0.0 <= int8["accuracy"] <= 1.0 and 0.0 <= int8["label_agreement"] <= 1.0
    # The int8 file is about a quarter of the float32 one: its weights really are 8-bit.
    assert int8["file_bytes"] < 0.35 * metrics["formats"]["litert_float32"]["file_bytes"]
    # classes.json travels inside the SavedModel too.
    assert json.loads((folder / "saved_model/assets/classes.json").read_text()) == \
        json.loads((folder / "classes.json").read_text())


# Run in a fresh interpreter, outside the project, with the project kept off sys.path: the snippet README shows.
# Resizing as the pipeline does (the op of the model's Resizing layer) is the caller's job for LiteRT and ONNX.
FRESH = r"""
import json, sys
import numpy as np
from PIL import Image
fmt, model_path, info_path, *images = sys.argv[1:]
info = json.load(open(info_path))
methods = {"nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic", "lanczos": "lanczos3", "box": "area"}
def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), np.uint8)
def resized(path):
    import tensorflow as tf
    size = info["image_size"]
    return tf.image.resize(tf.cast(pixels(path), tf.float32), (size, size), method=methods[info["interpolation"]],
                           antialias=True).numpy()
if fmt == "saved_model":
    import tensorflow as tf
    serve = tf.saved_model.load(model_path).signatures["serving_default"]
    probs = [list(serve(image=tf.constant(pixels(p)[None])).values())[0].numpy()[0] for p in images]
elif fmt.startswith("litert"):
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=model_path)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    batch = np.stack([resized(p) for p in images])
    interpreter.resize_tensor_input(inp["index"], batch.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], batch)
    interpreter.invoke()
    probs = interpreter.get_tensor(out["index"])
else:
    import onnxruntime
    session = onnxruntime.InferenceSession(model_path)
    probs = session.run(None, {session.get_inputs()[0].name: np.stack([resized(p) for p in images])})[0]
assert not any(name.split(".")[0] in ("bottleneck_clf", "stages") for name in sys.modules), "project imported"
probs = np.asarray(probs, np.float64)
labels = (probs[:, 1] >= info["threshold"]) if probs.shape[1] == 2 else probs.argmax(axis=1)
print(json.dumps({p: [info["classes"][int(l)], row.tolist()] for p, l, row in zip(images, labels, probs)}))
"""


def test_each_format_in_a_fresh_process_gives_evaluates_labels(shipped, tmp_path):
    folder = shipped / "data/models/classifier"
    rows = predictions(shipped)
    recorded = json.loads((shipped / "metrics/export/metrics.json").read_text())["formats"]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    for fmt in ("saved_model", "litert_float32", "litert_int8", "onnx"):  # one interpreter each
        result = subprocess.run([sys.executable, "-I", "-c", FRESH, fmt, str(folder / FILES[fmt]),
                                 str(folder / "classes.json"), *rows], cwd=tmp_path, env=env,
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        got = json.loads(result.stdout.strip().splitlines()[-1])
        assert set(got) == set(rows)
        same = [got[path][0] == row["predicted"] for path, row in rows.items()]
        if fmt == "litert_int8":
            assert sum(same) / len(same) == recorded[fmt]["label_agreement"]  # the export check ran this model
            continue
        assert all(same), fmt
        for path, row in rows.items():
            expected = [float(row["p_cats"]), float(row["p_dogs"])]
            assert max(abs(a - b) for a, b in zip(got[path][1], expected, strict=True)) <= FLOAT_AGREEMENT, path


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_predict_takes_every_format_in_batches(shipped, tmp_path, capsys, fmt):
    rows = predictions(shipped)
    model = shipped / "data/models/classifier" / FILES[fmt]
    outputs = {}
    for batch_size in (1, 5):
        output = tmp_path / f"preds-{batch_size}.csv"
        assert run_command(["predict", str(model), *rows, "--output", str(output),
                            "--batch-size", str(batch_size)]) == 0
        assert f"predict: format {fmt} ({model}), batches of {batch_size}" in capsys.readouterr().err
        with open(output, newline="", encoding="utf-8") as handle:
            outputs[batch_size] = {row["path"]: row for row in csv.DictReader(handle)}
    assert list(outputs[1]) == list(rows)  # in the order given
    labels = {size: {path: row["class"] for path, row in out.items()} for size, out in outputs.items()}
    if fmt != "litert_int8":
        assert labels[1] == labels[5] == {path: row["predicted"] for path, row in rows.items()}
        for path, row in rows.items():
            assert abs(float(outputs[5][path]["p_dogs"]) - float(row["p_dogs"])) <= FLOAT_AGREEMENT
    else:
        assert labels[1] == labels[5]


def corrupt(source: Path, target: Path) -> Path:
    """A copy of an export with its main file cut to a third and a few bytes flipped at its start."""
    if source.is_dir():
        shutil.copytree(source, target)
        main = target / "saved_model.pb"
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        main = target
    data = main.read_bytes()
    main.write_bytes(bytes(b ^ 0x5A for b in data[:64]) + data[64:len(data) // 3])
    shutil.copyfile(source.parent / "classes.json", target.parent / "classes.json")
    return target


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_a_corrupted_export_is_a_clear_error(shipped, tmp_path, fmt):
    broken = corrupt(shipped / "data/models/classifier" / FILES[fmt], tmp_path / "broken" / FILES[fmt])
    image = next(iter(predictions(shipped)))
    with pytest.raises(UserError, match=rf"{broken}: cannot be loaded as .*rerun `dvc repro export`"):
        run_command(["predict", str(broken), image])


def test_a_corrupted_export_prints_one_line_without_traceback(shipped, tmp_path):
    broken = corrupt(shipped / "data/models/classifier/model.onnx", tmp_path / "broken/model.onnx")
    result = subprocess.run([sys.executable, "-m", "bottleneck_clf", "predict", str(broken),
                             next(iter(predictions(shipped)))], cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert f"bottleneck predict: error: {broken}: cannot be loaded as onnx" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(UserError, match=r"model.pt: unknown model format .pt; pass a .keras, .tflite or .onnx"):
        run_command(["predict", str(tmp_path / "model.pt"), str(tmp_path)])
    with pytest.raises(UserError, match=r"nope.tflite: model file not found"):
        run_command(["predict", str(tmp_path / "nope.tflite"), str(tmp_path)])


def test_export_gives_the_same_bytes_twice(shipped, tmp_path):
    """dvc.lock must not change between two runs (tests/test_check_repro.py): Keras' SavedModel export alone
    orders variables differently in every process and stamps a random uuid."""
    root = tmp_path / "project"
    shutil.copytree(shipped, root, ignore=shutil.ignore_patterns("__pycache__"))
    update_params(root, {"export": {"formats": ["keras", "saved_model"]}})
    folder = root / "data/models/classifier"
    runs = []
    for _ in range(2):  # two fresh processes, as two `dvc repro` runs are
        result = subprocess.run([sys.executable, "-m", "stages.export"], cwd=root, capture_output=True, text=True,
                                check=False, env={**os.environ, "BOTTLENECK_FEATURE_CACHE": str(tmp_path / "fc")})
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append({str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in sorted(folder.rglob("*")) if p.is_file()})
    assert "saved_model/variables/variables.index" in runs[0]
    assert runs[0] == runs[1]


def test_formats_param_is_checked():
    import yaml

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    assert params["export"]["formats"] == ["keras", "saved_model"]
    for bad in (["keras", "tflite"], ["saved_model"], ["keras", "keras"], "keras"):
        params["export"]["formats"] = bad
        with pytest.raises(UserError, match=r"export.formats: must be a list of distinct names from keras, "
                                            r"saved_model, litert_float32, litert_int8, onnx, with keras"):
            check_params(params)


def test_a_missing_runtime_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(UserError, match=r"format onnx needs the onnxruntime package; run `pip install -e "
                                        r"'.\[runtimes\]'`"):
        require_extra("onnx", "export")
