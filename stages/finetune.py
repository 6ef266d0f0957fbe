"""Stage `finetune`: train the top VGG16 blocks together with the head, when `finetune.enabled` is true.

With `finetune.refit`, the run with early stopping only chooses the epoch count, and the saved model is a second
run from the head on every training image for that many epochs.

Disabled, it only records that (an empty model folder and `enabled: false` in its metrics), so the stage
costs nothing and evaluate and export use the head alone.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
from bottleneck_clf.atomic import atomic_dir, write_json
from bottleneck_clf.config import load_config
from bottleneck_clf.dataset import MANIFEST, class_names, read_manifest
from bottleneck_clf.errors import UserError
from bottleneck_clf.machine import record as record_machine
from bottleneck_clf.machine import signature as machine_signature
from bottleneck_clf.paths import project_paths


def write_disabled(model_dir: Path, metrics_dir: Path) -> None:
    with atomic_dir(model_dir) as tmp:
        (tmp / "DISABLED").write_text("finetune.enabled is false in params.yaml; evaluate and export use the head.\n")
    with atomic_dir(metrics_dir) as tmp:
        # Empty curves (a header, no epochs) keep `dvc plots show` from reporting missing files.
        for split in ("train", "eval"):
            curve = tmp / "plots" / "metrics" / split / "loss.tsv"
            curve.parent.mkdir(parents=True)
            curve.write_text("step\tloss\n")
        write_json(tmp / "metrics.json", {"enabled": False})


def main() -> None:
    import keras
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    from bottleneck_clf.engine import device, local_device, open_engine
    from bottleneck_clf.feature_cache import feature_cache_dir
    from bottleneck_clf.finetune import (
        ENSEMBLE_PARTS,
        RECIPE_FILE,
        TOP_FILE,
        TOP_NAME,
        FrozenMaps,
        build_top,
        ensemble_top,
        finetune,
        map_shape,
        pixel_frozen_blocks,
        recipe,
        refit,
        split_maps,
        split_pixels,
        stop_set_scores,
    )
    from bottleneck_clf.head import (
        STOP_SLICE,
        kept_message,
        kept_summary,
        refit_summary,
        seed_everything,
        stop_images,
        stopping_sets,
    )
    from bottleneck_clf.model_files import save_model
    from bottleneck_clf.vgg_weights import read_weights

    config = load_config()
    settings = config.finetune
    paths = project_paths()
    record_machine(paths["machine"], "finetune")  # the CPU that made these floats (check-repro)
    if not settings.enabled:
        write_disabled(paths["finetuned"], paths["finetune_metrics"])
        asked = [f"finetune.{key}" for key in ("ensemble", "refit") if getattr(settings, key)]
        ignored = f" ({' and '.join(asked)} {'needs' if len(asked) == 1 else 'need'} it on)" if asked else ""
        print(f"finetune: disabled (finetune.enabled: false){ignored} -> {paths['finetuned']}")
        return
    if config.extract.flip_tta != "none":
        # The fine-tuned top scores single images (finetune.flip mirrors them in training instead).
        raise UserError(f"params.yaml: extract.flip_tta is {config.extract.flip_tta!r}, which only the frozen head "
                        "uses; set extract.flip_tta: none to fine-tune, or finetune.enabled: false")
    seed = config.base.seed
    seed_everything(seed)
    started = time.perf_counter()
    entries = read_manifest(paths["prepared"] / MANIFEST)
    classes = class_names(entries)
    if settings.refit and any(e.split == "test" for e in entries):
        # With a test split, early stopping watches validation, not a slice of training: no image to add.
        raise UserError("params.yaml: finetune.refit adds the early-stopping slice of training back for a second "
                        "run, but prepare made a test split, so early stopping watches validation and training "
                        "has no slice to add; set finetune.refit: false, or prepare.test_fraction: 0")
    weights = read_weights(paths["weights"])
    with tempfile.TemporaryDirectory(prefix="finetune-maps-") as scratch:
        frozen_blocks = None  # maps: the frozen blocks ran once per image, before training
        if settings.augment == "pixels":
            data = {split: split_pixels(entries, split, paths["raw"], classes, config.extract, Path(scratch))
                    for split in ("train", "validation")}
            frozen_blocks = pixel_frozen_blocks(weights, config.extract, settings.blocks)
            print(f"finetune: frozen blocks and training: {local_device()} (inside each step: not on Ray)")
        else:
            with open_engine(config.ray) as engine:
                frozen = FrozenMaps(weights, config.extract, settings.blocks, feature_cache_dir(), engine)
                data = {split: split_maps(frozen, entries, split, paths["raw"], classes, Path(scratch))
                        for split in ("train", "validation")}
                print(f"finetune: frozen blocks: {device(engine)}; training: {local_device()}")
                if engine is not None and engine.made_on() and engine.made_on() != machine_signature():
                    # Maps from other machines and training here: no single machine made these floats.
                    record_machine(paths["machine"], "finetune",
                                   {**machine_signature(), "cpu": {"nodes": [engine.made_on()["cpu"],
                                                                            machine_signature()["cpu"]]}})
            del frozen
        prepared = time.perf_counter() - started
        # The same images to stop on as train_head's (same labels, fraction and seed).
        fit, stop, stop_name = stopping_sets(data["train"], data["validation"], any(e.split == "test" for e in entries),
                                             config.head.early_stopping_fraction, seed)
        head = keras.saving.load_model(paths["model"], compile=False)
        frozen_shape = map_shape(config.extract.image_size, settings.blocks)
        top = build_top(frozen_shape, settings.blocks, config.extract.pooling, weights, head)
        live = Live(str(paths["finetune_metrics"]), dvcyaml=False, save_dvc_exp=False)
        history, kept = finetune(fit, stop, top, len(classes), settings, seed, callbacks=[DVCLiveCallback(live=live)],
                                 frozen=frozen_blocks)
        stopped_on = stop_images(stop)
        chosen = kept_summary(history, kept, stopped_on)

        def fresh_top(name: str):
            # A fresh copy of the head: the one inside `top` was trained along with the blocks.
            untouched = keras.saving.load_model(paths["model"], compile=False)
            return build_top(frozen_shape, settings.blocks, config.extract.pooling, weights, untouched,
                             model_name=name)

        if settings.refit:
            assert stop_name == STOP_SLICE, stop_name  # a test split was refused above
            everything = (*fit[:2], None)  # the fitted rows and the stop slice: every training image
            print(f"finetune: refit on all {stop_images(everything)} training images for the {kept + 1} epoch(s) "
                  "early stopping chose")
            top = fresh_top(TOP_NAME)
            refitted = refit(everything, top, len(classes), settings, seed, kept + 1, frozen_blocks)
            chosen = refit_summary(refitted, stop_images(everything), chosen)
            del everything  # its maps live in the scratch folder
        saved = {}
        if settings.ensemble:
            top = ensemble_top(top, fresh_top(ENSEMBLE_PARTS["head"]))
            if not settings.refit:  # after a refit the stop slice is training data: no figure on it is held out
                # metrics.json describes the saved model: the average's figures on the same stop set, beside each
                # part's by the same measure (`eval` is Keras' loss, with any smoothing or L2 in it).
                saved = {"ensemble_stop_set": stop_set_scores(top, stop, frozen_blocks, settings.batch_size)}
        del fit, stop
        data.clear()
    with atomic_dir(paths["finetuned"]) as tmp:
        save_model(top, tmp / TOP_FILE)
        write_json(tmp / RECIPE_FILE, {**recipe(config.extract, settings.blocks), "input_shape": list(frozen_shape),
                                       "classes": classes})
    summary = {"enabled": True, "augment": settings.augment, "ensemble": settings.ensemble,
               "refit": settings.refit, **chosen, **saved}
    # dvclive's summary is the last epoch's; the saved model is the kept epoch's.
    write_json(paths["finetune_metrics"] / "metrics.json", summary)
    seconds = time.perf_counter() - started
    averaged = "; saved averaged with the frozen head (finetune.ensemble)" if settings.ensemble else ""
    if saved:
        mean = saved["ensemble_stop_set"]["ensemble"]
        averaged += f": {stop_name} log loss {mean['loss']:.4f}, accuracy {mean['accuracy']:.4f}"
    chose = kept_message(summary.get("selection", summary), stop_name)
    if settings.refit:
        chose = (f"{chose}; saved its refit on all {summary['training_images']} training images "
                 f"(finetune.refit): training loss {summary['train']['loss']:.4f}, "
                 f"accuracy {summary['train']['accuracy']:.4f}")
    print(f"finetune: top {settings.blocks} block(s) in {seconds:.0f} s ({prepared:.0f} s for the frozen "
          f"blocks), {chose}{averaged} -> {paths['finetuned']}")


if __name__ == "__main__":
    from bottleneck_clf.errors import run

    run(main, "finetune")
