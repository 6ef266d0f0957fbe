"""The finetune stage: off by default, and when on, trains the top VGG16 blocks on cached frozen-block maps."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import keras
import numpy as np
import pytest
from conftest import make_class_folders, update_params

from bottleneck_clf.features import build_extractor, load_meta, load_split
from bottleneck_clf.finetune import augmentation, build_top, map_shape, split_layer, trained_layers
from bottleneck_clf.head import build_head, probabilities
from bottleneck_clf.vgg_weights import read_weights
from stages import evaluate, export, finetune, finetune_ensemble, prepare, train_head, weights
from stages import extract_features as extract_stage


def run_until_head():
    for stage in (weights, prepare, extract_stage, train_head):
        stage.main()


def fine_tune():
    """The two fine-tuning stages: the training, then the model evaluate and export use (finetune.ensemble)."""
    finetune.main()
    finetune_ensemble.main()


@pytest.mark.parametrize(("asked", "said"), [
    ({}, ["finetune: disabled (finetune.enabled: false) ->",
          "finetune_ensemble: fine-tuning disabled (finetune.enabled: false) ->"]),
    ({"refit": True}, ["finetune: disabled (finetune.enabled: false) (finetune.refit needs it on) ->"]),
    ({"ensemble": True, "refit": True},
     ["finetune: disabled (finetune.enabled: false) (finetune.refit needs it on) ->",
      "finetune_ensemble: fine-tuning disabled (finetune.enabled: false) (finetune.ensemble needs it on) ->"]),
])
def test_disabled_says_which_asked_for_options_need_it_on(project, capsys, asked, said):
    update_params(project, {"finetune": asked})
    fine_tune()
    out = capsys.readouterr().out
    for line in said:
        assert line in out


@pytest.mark.parametrize("ran", [False, True], ids=["never", "disabled"])
def test_averaging_without_a_fine_tuned_top_is_one_clear_message(project, ran):
    """finetune_ensemble run by hand with finetune.enabled but no top from finetune: a UserError naming the folder and
    the command, nothing written."""
    from bottleneck_clf.errors import UserError

    if ran:
        finetune.main()  # disabled: only the marker
    update_params(project, {"finetune": {"enabled": True}})
    state = "ran with finetune.enabled: false" if ran else "has not run"
    with pytest.raises(UserError, match=rf"data/models/finetune_top: no fine-tuned top \(finetune {state}\); run "
                                        r"`dvc repro finetune_ensemble`"):
        finetune_ensemble.main()
    assert not (project / "data/models/finetuned").exists()


def test_a_finetuned_model_out_of_date_with_its_top_or_head_is_refused(project):
    """Stages run by hand out of order (dvc repro never does): evaluate and export refuse a finetuned model made
    from another top, head or weights than the files now hold, with one message naming them and the commands, and
    write nothing; after the stages that message names they go on."""
    from bottleneck_clf.errors import UserError

    make_class_folders(project / "data/raw", per_class=8)
    update_params(project, {"finetune": {"enabled": True, "ensemble": True, "batch_size": 2}})
    run_until_head()
    fine_tune()
    evaluate.main()
    scored = project / "metrics/eval/metrics.json"
    before = scored.read_bytes()
    command = r": a stage was run by hand out of order. Run `dvc repro`, which runs the stages in order"
    top, head = "data/models/finetune_top/model.keras", "data/models/head_early_stopped.keras"
    stale = r"data/models/finetuned was made from {} as they were before \(changed or gone since\)"

    def refused(said: str) -> None:
        for stage in (evaluate, export):
            with pytest.raises(UserError, match=said + command):
                stage.main()
        assert scored.read_bytes() == before and not (project / "data/models/classifier").exists()

    steps = [  # (what is run by hand, what the refusal says, what mends it)
        (lambda: (update_params(project, {"finetune": {"learning_rate": 0.01}}), finetune.main()),
         stale.format(top), [finetune_ensemble]),
        # The head the top started from and averages with: fine-tuning must run again, not only the averaging.
        (lambda: (update_params(project, {"head": {"dropout": 0.25}}), train_head.main()),
         stale.format(head), [finetune, finetune_ensemble]),
        (lambda: (update_params(project, {"finetune": {"enabled": False}}), finetune.main()),
         stale.format(top), [finetune_ensemble]),  # the top is a marker now
        (lambda: (update_params(project, {"finetune": {"enabled": True}}), finetune.main()),  # averaging skipped
         "data/models/finetune_top holds a fine-tuned top that data/models/finetuned does not have",
         [finetune_ensemble]),
    ]
    for run, said, mend in steps:
        run()
        refused(said)
        for stage in mend:
            stage.main()
        evaluate.main()
        before = scored.read_bytes()
    assert json.loads(before)["model"] == "ensemble"

    recipe = project / "data/models/finetuned/recipe.json"  # as an older version wrote it
    recipe.write_text(json.dumps({k: v for k, v in json.loads(recipe.read_text()).items() if k != "made_from"}))
    refused("data/models/finetuned was made by an older version, which did not record what it was made from")


def test_the_averaging_uses_the_stop_set_and_refit_its_top_was_trained_with(project):
    """finetune_ensemble takes the stop set (base.seed, head.early_stopping_fraction) and finetune.refit from the
    top's recipe.json and head.refit from train_head's metrics.json, not from params.yaml, which may have changed
    since (by hand); a top or a head without that record is one clear message."""
    from bottleneck_clf.errors import UserError

    make_class_folders(project / "data/raw", per_class=10)
    update_params(project, {"prepare": {"test_fraction": 0.0},
                            "finetune": {"enabled": True, "ensemble": True, "batch_size": 2}})
    run_until_head()
    fine_tune()
    averaged = project / "metrics/finetune_ensemble/metrics.json"
    first = json.loads(averaged.read_text())
    stopped_on = json.loads((project / "metrics/finetune/metrics.json").read_text())["eval"]
    assert first["ensemble_stop_set"]["finetuned"]["loss"] == pytest.approx(stopped_on["loss"], rel=1e-3)
    assert first["ensemble_with"] == "early_stopped_head"  # head.refit (the default) without finetune.refit
    update_params(project, {"base": {"seed": 7}, "head": {"early_stopping_fraction": 0.3, "refit": False},
                            "finetune": {"refit": True}})
    finetune_ensemble.main()
    assert json.loads(averaged.read_text()) == first  # the same partner, stop set and figures

    trained = project / "metrics/train/metrics.json"  # as an interrupted train_head leaves dvclive's
    trained.write_text(json.dumps({k: v for k, v in json.loads(trained.read_text()).items() if k != "refit"}))
    with pytest.raises(UserError, match=r"metrics/train/metrics.json: no record of whether the saved head was "
                                        r"refit \(train_head has not finished\); run `dvc repro train_head`"):
        finetune_ensemble.main()

    recipe = project / "data/models/finetune_top/recipe.json"
    recipe.write_text(json.dumps({k: v for k, v in json.loads(recipe.read_text()).items() if k != "stop_set"}))
    with pytest.raises(UserError, match=r"data/models/finetune_top/recipe.json: no record of the stop set the top "
                                        r"was trained with .*`dvc repro --force finetune`"):
        finetune_ensemble.main()
    assert json.loads(averaged.read_text()) == first


def test_disabled_by_default_writes_only_a_marker(project):
    make_class_folders(project / "data/raw", per_class=8)
    run_until_head()
    fine_tune()
    for folder in ("finetune_top", "finetuned"):
        assert sorted(p.name for p in (project / "data/models" / folder).iterdir()) == ["DISABLED"]
    for stage in ("finetune", "finetune_ensemble"):
        assert json.loads((project / "metrics" / stage / "metrics.json").read_text()) == {"enabled": False}
    assert (project / "metrics/finetune/plots/metrics/eval/loss.tsv").read_text() == "step\tloss\n"
    evaluate.main()
    assert json.loads((project / "metrics/eval/metrics.json").read_text())["model"] == "head"


@pytest.mark.parametrize("blocks", [1, 2])
def test_enabled_trains_the_top_blocks_and_evaluate_uses_them(project, blocks, capsys):
    make_class_folders(project / "data/raw", per_class=8)
    update_params(project, {"finetune": {"enabled": True, "blocks": blocks}})
    run_until_head()
    fine_tune()
    out = capsys.readouterr().out
    n = load_meta(project / "data/features")["counts"]
    assert f"train: {n['train']} images, {n['train']} through the frozen blocks, 0 from the cache" in out
    folder, top_folder = project / "data/models/finetuned", project / "data/models/finetune_top"
    # finetune.ensemble off: finetune's top as it is, its recipe with the digest of the file it copied
    assert (folder / "model.keras").read_bytes() == (top_folder / "model.keras").read_bytes()
    top_recipe = json.loads((top_folder / "recipe.json").read_text())
    def sha256(path: str) -> str:
        return hashlib.sha256((project / path).read_bytes()).hexdigest()

    started_from = ("data/models/head_early_stopped.keras", "data/weights/vgg16_notop.weights.h5")
    assert top_recipe["made_from"] == {path: sha256(path) for path in started_from}
    copied = "data/models/finetune_top/model.keras"
    assert json.loads((folder / "recipe.json").read_text()) == {
        **top_recipe, "made_from": {**top_recipe["made_from"], copied: sha256(copied)}}
    assert top_recipe["refit"] is False and top_recipe["stop_set"] == {"seed": 42, "fraction": 0.1}
    assert json.loads((project / "metrics/finetune_ensemble/metrics.json").read_text()) == {
        "enabled": True, "ensemble": False}
    recipe = json.loads((folder / "recipe.json").read_text())
    assert recipe["blocks"] == blocks and recipe["input_shape"] == list(map_shape(32, blocks))
    top = keras.saving.load_model(folder / "model.keras")
    original = read_weights(project / "data/weights/vgg16_notop.weights.h5")
    for name in trained_layers(blocks):
        assert not np.array_equal(top.get_layer(name).get_weights()[0], original[name][0]), name
    assert {layer.name for layer in top.layers if layer.name.endswith("_conv1")} == {
        f"block{b}_conv1" for b in range(6 - blocks, 6)}
    curve = (project / "metrics/finetune/plots/metrics/eval/loss.tsv").read_text().splitlines()
    assert curve[0] == "step\tloss" and len(curve) >= 2

    evaluate.main()
    metrics = json.loads((project / "metrics/eval/metrics.json").read_text())
    assert metrics["model"] == "finetuned" and metrics["images"] == n["test"]

    finetune.main()  # a rerun (say, after a finetune.* change) sends no image through the frozen blocks again
    assert f"train: {n['train']} images, 0 through the frozen blocks, {n['train']} from the cache" in \
        capsys.readouterr().out


@pytest.mark.parametrize("pooling", ["avg", "max", "flatten"])
def test_untrained_top_on_maps_equals_head_on_features(project, pooling):
    """Splitting VGG16 at blockN_pool and stacking the top back changes nothing before training."""
    make_class_folders(project / "data/raw", per_class=6)
    update_params(project, {"extract": {"pooling": pooling}})
    run_until_head()
    conv = read_weights(project / "data/weights/vgg16_notop.weights.h5")
    head = keras.saving.load_model(project / "data/models/head.keras")
    features, _, maps = features_and_maps(project, "test")
    top = build_top(maps.shape[1:], 1, pooling, conv, head)
    np.testing.assert_allclose(probabilities(top, maps), probabilities(head, features), atol=1e-5)


def test_augmentation_only_acts_in_training():
    maps = np.random.default_rng(0).random((4, 6, 6, 8)).astype(np.float32)
    augment = augmentation(flip=True, rotation=0.1, zoom=0.2, seed=1)
    np.testing.assert_array_equal(np.asarray(augment(maps, training=False)), maps)
    assert not np.allclose(np.asarray(augment(maps, training=True)), maps)


@pytest.mark.parametrize("blocks", [0, 5, -1])
def test_blocks_out_of_range_lists_choices(blocks):
    with pytest.raises(ValueError, match="valid choices: 1, 2, 3, 4"):
        split_layer(blocks)


def test_head_of_three_classes_fits_on_top():
    conv = {name: (np.zeros((3, 3, cin, cout), np.float32), np.zeros(cout, np.float32))
            for name, cin, cout in __import__("bottleneck_clf.vgg_weights", fromlist=["x"]).VGG16_CONV_LAYERS}
    top = build_top((4, 4, 512), 1, "max", conv, build_head((512,), 3, 4, 0.0))
    assert top.output_shape == (None, 3)


def test_head_batch_norm_keeps_its_statistics_while_fine_tuning():
    """Fine-tuning trains the blocks and the head's Dense layers, never its BatchNormalization (which runs in
    inference mode with the statistics train_head measured)."""
    from conftest import ROOT

    from bottleneck_clf.config import load_config
    from bottleneck_clf.finetune import finetune
    from bottleneck_clf.vgg_weights import VGG16_CONV_LAYERS

    rng = np.random.default_rng(0)
    conv = {name: (rng.normal(0, 0.05, (3, 3, cin, cout)).astype(np.float32), np.zeros(cout, np.float32))
            for name, cin, cout in VGG16_CONV_LAYERS}
    head = build_head((512,), 2, 8, 0.0, batch_norm=True)
    norm = head.get_layer("batch_norm")
    norm.moving_mean.assign(np.full(8, 0.5, np.float32))
    before = [np.array(w) for w in norm.weights]
    top = build_top((4, 4, 512), 1, "avg", conv, head)
    maps, labels = rng.random((16, 4, 4, 512)).astype(np.float32), np.arange(16) % 2
    config = dataclasses.replace(load_config(ROOT / "params.yaml").finetune, epochs=2, batch_size=8, patience=0)
    dense_before = np.array(head.get_layer("dense").kernel)
    finetune((maps, labels, None), (maps, labels, None), top, 2, config, 0)
    for old, new in zip(before, norm.weights, strict=True):
        np.testing.assert_array_equal(old, np.array(new))
    assert not np.array_equal(dense_before, np.array(head.get_layer("dense").kernel)), "the head still trains"


def test_batch_norm_is_frozen_inside_an_averaged_head():
    """A head.ensemble average nests each member as a model: build_top freezes their BatchNormalization too, so
    a fine-tuned top built on it (finetune.ensemble's partner) never updates statistics train_head measured."""
    from bottleneck_clf.finetune import batch_norms
    from bottleneck_clf.head import average_heads

    head = average_heads([build_head((512,), 2, 8, 0.0, batch_norm=True) for _ in range(2)])
    assert len(list(batch_norms(head))) == 2 and all(layer.trainable for layer in batch_norms(head))
    build_top((1, 1, 512), 0, "avg", None, head)
    assert not any(layer.trainable for layer in batch_norms(head))
    assert all(head.get_layer(f"head_{n}").get_layer("dense").trainable for n in (1, 2)), "only batch norm froze"


def test_pixel_frozen_blocks_give_the_cached_maps(tiny_weights):
    """finetune.augment: pixels runs the frozen blocks inside training: the maps of the cached path, to round-off."""
    from bottleneck_clf.config import ExtractConfig
    from bottleneck_clf.features import encode_batch
    from bottleneck_clf.finetune import pixel_frozen_blocks

    extract = ExtractConfig(image_size=32, interpolation="bilinear", pooling="avg", batch_size=8, precision="float32")
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    model = pixel_frozen_blocks(read_weights(tiny_weights), extract, 1)
    expected = encode_batch(build_extractor(tiny_weights, 32, "flatten", output=split_layer(1)), pixels.copy())
    np.testing.assert_allclose(np.asarray(model(pixels)), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    assert not model.trainable_weights


def test_pixel_augmentation_trains_the_top_on_images(project, capsys):
    make_class_folders(project / "data/raw", per_class=8)
    update_params(project, {"finetune": {"enabled": True, "augment": "pixels"}})
    run_until_head()
    fine_tune()
    out = capsys.readouterr().out
    assert "images decoded; the frozen blocks run in every training step" in out
    assert "through the frozen blocks" not in out  # no cached maps in this mode
    metrics = json.loads((project / "metrics/finetune/metrics.json").read_text())
    assert metrics["enabled"] is True and metrics["augment"] == "pixels"
    top = keras.saving.load_model(project / "data/models/finetuned/model.keras")
    original = read_weights(project / "data/weights/vgg16_notop.weights.h5")
    assert not np.array_equal(top.get_layer("block5_conv1").get_weights()[0], original["block5_conv1"][0])
    evaluate.main()
    assert json.loads((project / "metrics/eval/metrics.json").read_text())["model"] == "finetuned"


def features_and_maps(project, split: str) -> tuple:
    """(bottleneck features, labels, block-4 maps) of a split of a tiny project: the head's input and the input
    of a one-block fine-tuned top, for the same images in the same order."""
    from bottleneck_clf.images import load_array

    extractor = build_extractor(read_weights(project / "data/weights/vgg16_notop.weights.h5"), 32, "flatten",
                                output=split_layer(1))
    features, labels, ids = load_split(project / "data/features", split)
    images = np.stack([load_array(project / "data/raw" / i, 32, "bilinear") for i in ids])
    return features, labels, extractor.predict(keras.applications.vgg16.preprocess_input(images), verbose=0)


def test_ensemble_saves_the_mean_of_the_fine_tuned_top_and_the_frozen_head(project, capsys):
    """finetune.ensemble: one saved model, the fine-tuned top and the untouched head side by side on the same maps,
    averaged; its stop-set figures in finetune's metrics and each part's score beside evaluate's."""
    from bottleneck_clf.finetune import ensemble_parts
    from bottleneck_clf.scoring import predict_labels

    make_class_folders(project / "data/raw", per_class=8)
    update_params(project, {"finetune": {"enabled": True, "ensemble": True}})
    run_until_head()
    fine_tune()
    out = capsys.readouterr().out
    assert ("finetune_ensemble: saved the fine-tuned top averaged with the early-stopped head (finetune.ensemble): "
            "validation log loss") in out
    top = keras.saving.load_model(project / "data/models/finetuned/model.keras")  # safe mode: no custom layer
    parts = ensemble_parts(top)
    assert top.name == "ensemble" and sorted(parts) == ["finetuned", "head"]
    original = read_weights(project / "data/weights/vgg16_notop.weights.h5")
    trained, frozen = (parts[k].get_layer("block5_conv1").get_weights()[0] for k in ("finetuned", "head"))
    assert not np.array_equal(trained, original["block5_conv1"][0])
    np.testing.assert_array_equal(frozen, original["block5_conv1"][0])
    # The head early stopping kept (head.refit is on and finetune.refit off): fine-tuning started from it.
    head = keras.saving.load_model(project / "data/models/head_early_stopped.keras")

    def maps_of(split):
        return features_and_maps(project, split)

    # The frozen part is the head's own prediction, the saved output the mean of the two.
    features, labels, maps = maps_of("test")
    np.testing.assert_allclose(probabilities(parts["head"], maps), probabilities(head, features), atol=1e-5)
    alone = probabilities(parts["finetuned"], maps)
    assert not np.allclose(alone, probabilities(head, features), atol=1e-3)
    np.testing.assert_allclose(probabilities(top, maps), (alone + probabilities(head, features)) / 2, atol=1e-5)

    # finetune_ensemble's metrics: the saved average's figures on finetune's stop set (validation here: prepare made
    # a test split).
    metrics = json.loads((project / "metrics/finetune_ensemble/metrics.json").read_text())
    assert metrics["ensemble"] is True and sorted(metrics["ensemble_stop_set"]) == ["ensemble", "finetuned", "head"]
    assert metrics["ensemble_with"] == "early_stopped_head"
    _, stop_labels, stop_maps = maps_of("validation")
    for key, model in (("ensemble", top), *parts.items()):
        probs = probabilities(model, stop_maps)
        scores = metrics["ensemble_stop_set"][key]
        assert scores["accuracy"] == pytest.approx(np.mean(probs.argmax(axis=1) == stop_labels)), key
        right = np.clip(probs[np.arange(len(stop_labels)), stop_labels], 1e-7, 1)
        assert scores["loss"] == pytest.approx(-np.mean(np.log(right)), rel=1e-4), key

    evaluate.main()
    out = capsys.readouterr().out
    scored = json.loads((project / "metrics/eval/metrics.json").read_text())
    assert scored["model"] == "ensemble" and sorted(scored["parts"]) == ["finetuned", "head"]
    average_right = predict_labels(probabilities(top, maps), 0.5) == labels
    for key, probs in (("finetuned", alone), ("head", probabilities(head, features))):
        part_right = predict_labels(probs, 0.5) == labels
        assert scored["parts"][key]["accuracy"] == float(np.mean(part_right)), key
        assert scored["parts"][key]["only_average_right"] == int(np.sum(average_right & ~part_right)), key
        assert scored["parts"][key]["only_part_right"] == int(np.sum(part_right & ~average_right)), key
    assert scored["accuracy"] == float(np.mean(average_right))
    assert "its part head alone: accuracy" in out


@pytest.mark.parametrize(("head_refit", "finetune_refit", "partner", "words"), [
    (True, False, "head_early_stopped.keras", "early-stopped head"),  # the saved head trained on the stop set
    (True, True, "head.keras", "saved head"),  # both trained on every image early stopping watched
    (False, False, "head.keras", "saved head"),  # neither did
    (False, True, "head.keras", "saved head"),  # the top did, the saved head did not: nothing held out to protect
])
def test_ensemble_averages_with_the_saved_head_unless_it_trained_on_the_stop_set(
        project, capsys, head_refit, finetune_refit, partner, words):
    """finetune.ensemble's frozen part is train_head's saved head, every head.ensemble member in it, except where
    head.refit trained that one on the stop set and the fine-tuned top did not: then the early-stopped head."""
    from bottleneck_clf.finetune import ensemble_parts

    make_class_folders(project / "data/raw", per_class=8)
    update_params(project, {"head": {"ensemble": 2, "refit": head_refit},
                            "finetune": {"enabled": True, "ensemble": True, "refit": finetune_refit, "epochs": 2,
                                         "patience": 1, "batch_size": 2}})
    run_until_head()
    capsys.readouterr()
    fine_tune()
    assert f"saved the fine-tuned top averaged with the {words} (finetune.ensemble)" in capsys.readouterr().out
    metrics = json.loads((project / "metrics/finetune_ensemble/metrics.json").read_text())
    assert metrics["ensemble_with"] == ("model" if partner == "head.keras" else "early_stopped_head")
    assert ("ensemble_stop_set" in metrics) == (not finetune_refit)
    frozen = ensemble_parts(keras.saving.load_model(project / "data/models/finetuned/model.keras"))["head"]
    features, _, maps = features_and_maps(project, "test")
    heads = {name: keras.saving.load_model(project / "data/models" / name, compile=False)
             for name in ("head.keras", "head_early_stopped.keras")}
    assert heads["head.keras"].name == "head_ensemble"  # two members averaged, not the first alone
    assert not np.allclose(*(probabilities(head, features) for head in heads.values()), atol=1e-4)
    np.testing.assert_allclose(probabilities(frozen, maps), probabilities(heads[partner], features), atol=1e-5)


@pytest.mark.parametrize(("augment", "ensemble"), [("maps", False), ("pixels", True)])
def test_refit_trains_again_on_every_training_image_for_the_chosen_epochs(project, capsys, augment, ensemble):
    """finetune.refit: the run with early stopping only chooses the epoch count; the saved model is a second run
    from the head on the stop slice too, and metrics.json describes it, the choosing run under `selection`."""
    make_class_folders(project / "data/raw", per_class=10)
    settings = {"enabled": True, "epochs": 4, "patience": 1, "augment": augment, "ensemble": ensemble,
                "batch_size": 2}
    update_params(project, {"prepare": {"test_fraction": 0.0}, "finetune": settings})
    run_until_head()
    fine_tune()  # without refit: the run the refit repeats
    plain = json.loads((project / "metrics/finetune/metrics.json").read_text())
    if ensemble:  # finetune_ensemble scores the slice finetune stopped on: its top alone gives finetune's `eval`
        alone = json.loads((project / "metrics/finetune_ensemble/metrics.json").read_text())["ensemble_stop_set"]
        assert alone["finetuned"]["accuracy"] == pytest.approx(plain["eval"]["accuracy"])
        assert alone["finetuned"]["loss"] == pytest.approx(plain["eval"]["loss"], rel=1e-3)
    plain_top = keras.saving.load_model(project / "data/models/finetuned/model.keras")
    capsys.readouterr()

    update_params(project, {"finetune": {"refit": True}})
    fine_tune()
    out = capsys.readouterr().out
    metrics = json.loads((project / "metrics/finetune/metrics.json").read_text())
    averaged = json.loads((project / "metrics/finetune_ensemble/metrics.json").read_text())
    training = load_meta(project / "data/features")["counts"]["train"]
    assert metrics["refit"] is True and plain["refit"] is False
    # The choosing run is the plain run, figure for figure; the refit ran its kept epoch count on every image.
    assert metrics["selection"] == {key: plain[key] for key in metrics["selection"]}
    assert metrics["selection"]["early_stopping_images"] < training == metrics["training_images"]
    assert metrics["epochs_run"] == plain["best_epoch"]
    assert "eval" not in metrics and "ensemble_stop_set" not in averaged  # nothing held out is left to score it by
    assert f"refit on all {training} training images for the {plain['best_epoch']} epoch(s)" in out
    assert f"saved its refit on all {training} training images (finetune.refit)" in out
    assert ("top averaged with the saved head (finetune.ensemble) ->" in out) == ensemble  # no stop-set figure
    # Keras' steps per epoch: the refit's cover every training image, the choosing run's only the fitted ones.
    fitted, steps = training - metrics["selection"]["early_stopping_images"], -(-training // 2)
    assert f"{steps}/{steps} - " in out.split("refit on all")[1] and -(-fitted // 2) < steps
    top = keras.saving.load_model(project / "data/models/finetuned/model.keras")
    assert top.name == ("ensemble" if ensemble else "top")
    layer = "top" if ensemble else None

    def block5(model):
        return (model.get_layer(layer) if layer else model).get_layer("block5_conv1").get_weights()[0]

    original = read_weights(project / "data/weights/vgg16_notop.weights.h5")["block5_conv1"][0]
    assert not np.array_equal(block5(top), original) and not np.array_equal(block5(top), block5(plain_top))
    evaluate.main()
    assert json.loads((project / "metrics/eval/metrics.json").read_text())["model"] == (
        "ensemble" if ensemble else "finetuned")


def test_refit_with_a_test_split_trains_on_train_and_validation_and_leaves_test_out(project, capsys):
    """With a test split the stop set was validation: the refit trains on train + validation, test stays out."""
    make_class_folders(project / "data/raw", per_class=8)
    update_params(project, {"finetune": {"enabled": True, "epochs": 2, "patience": 1, "batch_size": 2,
                                         "refit": True}})
    run_until_head()
    capsys.readouterr()
    fine_tune()
    out = capsys.readouterr().out
    counts = load_meta(project / "data/features")["counts"]
    joined = counts["train"] + counts["validation"]
    metrics = json.loads((project / "metrics/finetune/metrics.json").read_text())
    assert metrics["refit_splits"] == "train + validation" and metrics["training_images"] == joined
    assert metrics["selection"]["early_stopping_images"] == counts["validation"]
    assert f"finetune: refit on all {joined} train + validation images for the " in out
    steps = -(-joined // 2)
    assert f"{steps}/{steps} - " in out.split("finetune: refit on all")[1]
    evaluate.main()
    scored = json.loads((project / "metrics/eval/metrics.json").read_text())
    assert scored["split"] == "test" and scored["model"] == "finetuned"


def same_weights(first: keras.Model, second: keras.Model) -> bool:
    return all(np.array_equal(a, b) for a, b in zip(first.get_weights(), second.get_weights(), strict=True))


@pytest.mark.parametrize("ensemble", [False, True])
def test_fine_tuning_starts_from_the_early_stopped_head_not_a_refitted_one(project, ensemble):
    """head.refit and finetune.enabled go together: fine-tuning starts from the head early stopping kept (and
    averages with it), so the fine-tuned model is the same whether the saved head was refitted or not."""
    make_class_folders(project / "data/raw", per_class=8)
    update_params(project, {"head": {"refit": False}, "finetune": {"enabled": True, "epochs": 2, "patience": 1,
                                                                  "batch_size": 2, "ensemble": ensemble}})
    run_until_head()
    models = project / "data/models"

    def load(name: str) -> keras.Model:
        return keras.saving.load_model(models / name, compile=False)

    plain_head = load("head.keras")
    # Without a refit the two files are one head (the same bytes in a fresh process, so one DVC object).
    assert same_weights(load("head_early_stopped.keras"), plain_head)
    fine_tune()
    plain_top = load("finetuned/model.keras")

    update_params(project, {"head": {"refit": True}})
    train_head.main()
    assert same_weights(load("head_early_stopped.keras"), plain_head)
    assert not same_weights(load("head.keras"), plain_head)  # the refit is the saved head
    fine_tune()
    assert same_weights(load("finetuned/model.keras"), plain_top)
    evaluate.main()
    assert json.loads((project / "metrics/eval/metrics.json").read_text())["model"] == (
        "ensemble" if ensemble else "finetuned")


def three_class_top(name: str, kernel: np.ndarray) -> keras.Model:
    inputs = keras.Input((2,))
    outputs = keras.layers.Dense(3, activation="softmax", name="dense")(inputs)
    model = keras.Model(inputs, outputs, name=name)
    model.get_layer("dense").set_weights([kernel.astype(np.float32), np.zeros(3, np.float32)])
    return model


def test_stop_set_scores_of_an_ensemble_and_its_parts():
    """Three classes (softmax averaged), only the stop rows counted, the most probable class, plain log loss."""
    from bottleneck_clf.finetune import ensemble_top, stop_set_scores

    rng = np.random.default_rng(0)
    kernels = {"top": rng.normal(0, 2, (2, 3)), "frozen_top": rng.normal(0, 2, (2, 3))}
    top = ensemble_top(three_class_top("top", kernels["top"]), three_class_top("frozen_top", kernels["frozen_top"]))
    x, labels, rows = rng.normal(0, 1, (9, 2)).astype(np.float32), rng.integers(0, 3, 9), np.array([0, 2, 3, 5, 8])

    def softmax(kernel, rows):
        logits = x[rows] @ kernel
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def expected(rows):
        probs = {"finetuned": softmax(kernels["top"], rows), "head": softmax(kernels["frozen_top"], rows)}
        return {**probs, "ensemble": (probs["finetuned"] + probs["head"]) / 2}

    scores = stop_set_scores(top, (x, labels, rows), batch_size=2)
    assert sorted(scores) == ["ensemble", "finetuned", "head"]
    truth = labels[rows]
    for key, probs in expected(rows).items():
        assert scores[key]["accuracy"] == pytest.approx(np.mean(probs.argmax(axis=1) == truth)), key
        assert scores[key]["loss"] == pytest.approx(-np.mean(np.log(probs[np.arange(len(rows)), truth])), rel=1e-5)
    every = np.arange(len(labels))  # rows None: the whole set is the stop set (a validation split)
    assert stop_set_scores(top, (x, labels, None))["ensemble"]["accuracy"] == pytest.approx(
        np.mean(expected(every)["ensemble"].argmax(axis=1) == labels))


def test_part_scores_pair_each_part_with_the_average():
    """evaluate's `parts`: each part's own accuracy and the two directions of the paired count, not swapped."""
    from bottleneck_clf.evaluation import part_scores

    labels = np.array([0, 1, 1, 0, 1])

    def two(p_second):
        return np.stack([1 - np.array(p_second), np.array(p_second)], axis=1)

    average = two([0.2, 0.9, 0.6, 0.4, 0.7])           # right on all five
    parts = {"finetuned": two([0.6, 0.9, 0.4, 0.7, 0.8]),  # wrong on 0, 2, 3: 2/5
             "head": two([0.1, 0.3, 0.9, 0.2, 0.6])}       # wrong on 1: 4/5
    average[4] = [0.6, 0.4]                            # now wrong on 4, which both parts get right
    scores = part_scores(parts, average, labels, ["a", "b"], 0.5)
    assert scores["finetuned"]["accuracy"] == 0.4 and scores["head"]["accuracy"] == 0.8
    assert (scores["finetuned"]["only_average_right"], scores["finetuned"]["only_part_right"]) == (3, 1)
    assert (scores["head"]["only_average_right"], scores["head"]["only_part_right"]) == (1, 1)
    assert set(scores["head"]) == {"accuracy", "accuracy_ci95", "loss", "only_average_right", "only_part_right"}
