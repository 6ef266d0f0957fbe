"""Stage `finetune`: train the top VGG16 blocks together with the head, when `finetune.enabled` is true.

With `finetune.refit`, the run with early stopping only chooses the epoch count, and the saved model is a second
run from the head, for that many epochs, on every image early stopping watched as well: the slice of training,
or the validation split when prepare made a test split. Evaluate's split stays out.

It starts from the head early stopping kept (train_head's `early_stopped_head`), never from a head.refit's,
which has trained on the stop set that fine-tuning stops on. It saves the fine-tuned top alone; the stage
finetune_ensemble turns it into the model evaluate and export use (averaged with a head for finetune.ensemble),
so a change of the saved head (head.ensemble, head.refit) reruns that averaging, not this training.

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
from bottleneck_clf.machine import record_with
from bottleneck_clf.paths import project_paths


def write_disabled(model_dir: Path, metrics_dir: Path) -> None:
    from bottleneck_clf.finetune import write_disabled_marker

    write_disabled_marker(model_dir)
    with atomic_dir(metrics_dir) as tmp:
        # Empty curves (a header, no epochs) keep `dvc plots show` from reporting missing files.
        for split in ("train", "eval"):
            curve = tmp / "plots" / "metrics" / split / "loss.tsv"
            curve.parent.mkdir(parents=True)
            curve.write_text("step\tloss\n")
        write_json(tmp / "metrics.json", {"enabled": False})


def training_data(config, entries: list, classes: list[str], weights, paths: dict, scratch: Path) -> tuple:
    """({split: (inputs, labels)} for train and validation, the frozen blocks to run in each step or None).

    Maps (finetune.augment: maps): the frozen blocks run once per image here, through the feature cache and
    on Ray when configured. Pixels: resized images, and the frozen blocks go inside every training step.
    """
    from bottleneck_clf.engine import device, local_device, open_engine
    from bottleneck_clf.feature_cache import feature_cache_dir
    from bottleneck_clf.finetune import FrozenMaps, pixel_frozen_blocks, split_maps, split_pixels

    settings, splits = config.finetune, ("train", "validation")
    if settings.augment == "pixels":
        data = {split: split_pixels(entries, split, paths["raw"], classes, config.extract, scratch) for split in splits}
        print(f"finetune: frozen blocks and training: {local_device()} (inside each step: not on Ray)")
        return data, pixel_frozen_blocks(weights, config.extract, settings.blocks)
    with open_engine(config.ray) as engine:
        frozen = FrozenMaps(weights, config.extract, settings.blocks, feature_cache_dir(), engine)
        data = {split: split_maps(frozen, entries, split, paths["raw"], classes, scratch) for split in splits}
        print(f"finetune: frozen blocks: {device(engine)}; training: {local_device()}")
        if engine is not None:  # maps from the cluster's nodes, training here
            record_with(paths["machine"], "finetune", engine.made_on())
    return data, None


def main() -> None:
    import keras
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    from bottleneck_clf.finetune import (
        RECIPE_FILE,
        TOP_FILE,
        build_top,
        finetune,
        made_from,
        map_shape,
        recipe,
        refit,
    )
    from bottleneck_clf.head import (
        kept_summary,
        refit_notice,
        refit_set,
        refit_splits,
        refit_summary,
        saved_message,
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
        write_disabled(paths["finetune_top"], paths["finetune_metrics"])
        ignored = " (finetune.refit needs it on)" if settings.refit else ""
        print(f"finetune: disabled (finetune.enabled: false){ignored} -> {paths['finetune_top']}")
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
    has_test = any(e.split == "test" for e in entries)
    weights = read_weights(paths["weights"])
    with tempfile.TemporaryDirectory(prefix="finetune-maps-") as scratch:
        data, frozen_blocks = training_data(config, entries, classes, weights, paths, Path(scratch))
        prepared = time.perf_counter() - started
        # The same images to stop on as train_head's (same labels, fraction and seed).
        fit, stop, stop_name = stopping_sets(data["train"], data["validation"], has_test,
                                             config.head.early_stopping_fraction, seed)
        head = keras.saving.load_model(paths["early_stopped_head"], compile=False)
        frozen_shape = map_shape(config.extract.image_size, settings.blocks)
        top = build_top(frozen_shape, settings.blocks, config.extract.pooling, weights, head)
        live = Live(str(paths["finetune_metrics"]), dvcyaml=False, save_dvc_exp=False)
        history, kept = finetune(fit, stop, top, len(classes), settings, seed, callbacks=[DVCLiveCallback(live=live)],
                                 frozen=frozen_blocks)
        chosen = kept_summary(history, kept, stop_images(stop))

        if settings.refit:
            everything, splits = refit_set(fit, stop, has_test, Path(scratch)), refit_splits(has_test)
            print(refit_notice("finetune", len(everything[1]), splits, kept + 1))
            # A fresh copy of the head: the one inside `top` was trained along with the blocks.
            head = keras.saving.load_model(paths["early_stopped_head"], compile=False)
            top = build_top(frozen_shape, settings.blocks, config.extract.pooling, weights, head)
            refitted = refit(everything, top, len(classes), settings, seed, kept + 1, frozen_blocks)
            chosen = refit_summary(*refitted, splits, chosen)
            del everything
        del fit, stop
        data.clear()
    with atomic_dir(paths["finetune_top"]) as tmp:
        save_model(top, tmp / TOP_FILE)
        # How it was trained too: finetune_ensemble scores the average on this top's stop set and picks its
        # partner head by whether the top trained on that set (refit); evaluate and export check what it started
        # from (made_from, finetune.check_current).
        write_json(tmp / RECIPE_FILE, {**recipe(config.extract, settings.blocks), "input_shape": list(frozen_shape),
                                       "classes": classes, "refit": settings.refit,
                                       "stop_set": {"seed": seed, "fraction": config.head.early_stopping_fraction},
                                       "made_from": made_from([paths["early_stopped_head"], paths["weights"]])})
    summary = {"enabled": True, "augment": settings.augment, "refit": settings.refit, **chosen}
    # dvclive's summary is the last epoch's; the saved model is the kept epoch's.
    write_json(paths["finetune_metrics"] / "metrics.json", summary)
    seconds = time.perf_counter() - started
    print(f"finetune: top {settings.blocks} block(s) in {seconds:.0f} s ({prepared:.0f} s for the frozen "
          f"blocks), {saved_message(summary, stop_name, 'finetune')} -> {paths['finetune_top']}")


if __name__ == "__main__":
    from bottleneck_clf.errors import run

    run(main, "finetune")
