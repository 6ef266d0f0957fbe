"""extract.flip_tta: each image's features and its mirror's, cached apart, averaged or stacked, and the same
combination inside every exported format."""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest
from conftest import make_class_folders, update_params

from bottleneck_clf.cli import run_command
from bottleneck_clf.errors import UserError
from bottleneck_clf.export import mirror
from bottleneck_clf.features import build_extractor, encode_batch, load_meta, load_split
from bottleneck_clf.runtimes import FILES, FLOAT_AGREEMENT
from stages import evaluate, export, finetune, finetune_ensemble, prepare, train_head, weights
from stages import extract_features as extract_stage


def test_mirrored_features_are_those_of_the_flipped_pixels(tiny_weights):
    model = build_extractor(tiny_weights, 32, "avg")
    pixels = np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 3)).astype(np.float32)
    mirrored = encode_batch(model, pixels.copy(), mirror=True)
    assert mirrored.tobytes() == encode_batch(model, pixels[:, :, ::-1].copy()).tobytes()
    assert not np.allclose(mirrored, encode_batch(model, pixels.copy()))  # a random VGG is not symmetric


def test_the_export_mirror_layer_is_an_exact_flip():
    pixels = np.random.default_rng(1).normal(0, 100, (2, 32, 32, 3)).astype(np.float32)
    flipped = np.asarray(mirror(32)(pixels))
    assert flipped.tobytes() == np.ascontiguousarray(pixels[:, :, ::-1]).tobytes()


def extract(capsys) -> str:
    extract_stage.main()
    return capsys.readouterr().out


def test_mirrors_are_cached_apart_and_combined(project, capsys):
    make_class_folders(project / "data/raw", per_class=10)  # 20 images
    weights.main()
    prepare.main()
    assert "20 images: 20 encoded, 0 from the cache" in extract(capsys)
    plain = {s: np.array(load_split(project / "data/features", s)[0]) for s in ("train", "test")}

    update_params(project, {"extract": {"flip_tta": "stack"}})
    out = extract(capsys)  # only the mirrors are new
    assert "20 images and their mirrors: 20 encoded, 20 from the cache" in out, out
    assert load_meta(project / "data/features")["flip_tta"] == "stack"
    stacked = {s: np.array(load_split(project / "data/features", s)[0]) for s in ("train", "test")}

    update_params(project, {"extract": {"flip_tta": "average"}})
    assert "20 images and their mirrors: 0 encoded, 40 from the cache" in extract(capsys)
    for split, features in plain.items():
        both = stacked[split]
        assert both.shape == (len(features), 1024)
        assert both[:, :512].tobytes() == features.tobytes()
        assert not np.allclose(both[:, 512:], features)
        averaged = np.array(load_split(project / "data/features", split)[0])
        assert averaged.tobytes() == ((both[:, :512] + both[:, 512:]) * np.float32(0.5)).tobytes()


@pytest.mark.parametrize(("flip_tta", "pooling", "formats"), [
    ("average", "avg", ["keras", "saved_model", "litert_float32", "onnx"]),
    ("stack", "flatten", ["keras"]),
])
def test_every_export_combines_the_flips_as_extraction_did(project, capsys, flip_tta, pooling, formats):
    make_class_folders(project / "data/raw", per_class=8)
    update_params(project, {"extract": {"flip_tta": flip_tta, "pooling": pooling},
                            "export": {"formats": formats}})
    for stage in (weights, prepare, extract_stage, train_head, finetune, finetune_ensemble, evaluate, export):
        stage.main()  # export stops when a float format is off evaluate's probabilities by more than 1e-4
    recorded = json.loads((project / "metrics/export/metrics.json").read_text())["formats"]
    assert list(recorded) == formats
    assert all(r["max_abs_prob_diff"] <= FLOAT_AGREEMENT and r["label_agreement"] == 1.0 for r in recorded.values())
    model = keras.saving.load_model(project / "data/models/classifier" / FILES["keras"])
    assert model.get_layer("vgg16_flip_tta").get_layer("mirror")  # in the file, not in this project's code

    # Not vacuous: the head on the unflipped features alone is off evaluate's probabilities.
    head = keras.saving.load_model(project / "data/models/head.keras", compile=False)
    features, _, ids = load_split(project / "data/features", "test")
    update_params(project, {"extract": {"flip_tta": "none"}})
    extract_stage.main()
    plain, _, plain_ids = load_split(project / "data/features", "test")
    assert list(plain_ids) == list(ids)
    if flip_tta == "average":
        assert np.abs(np.asarray(head(np.array(plain))) - np.asarray(head(np.array(features)))).max() > 1e-4

    with open(project / "metrics/eval/predictions.csv", newline="", encoding="utf-8") as handle:
        rows = {str(project / "data/raw" / row["path"]): row for row in csv.DictReader(handle)}
    output = project / "predicted.csv"
    assert run_command(["predict", str(project / "data/models/classifier" / FILES[formats[-1]]), *rows,
                        "--output", str(output)]) == 0
    with open(output, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            assert abs(float(row["p_dogs"]) - float(rows[row["path"]]["p_dogs"])) <= FLOAT_AGREEMENT


def test_finetuning_refuses_flip_tta_with_the_fix(project):
    update_params(project, {"extract": {"flip_tta": "average"}, "finetune": {"enabled": True}})
    with pytest.raises(UserError, match=r"extract.flip_tta is 'average'.*set extract.flip_tta: none to fine-tune"):
        finetune.main()
