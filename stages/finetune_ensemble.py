"""Stage `finetune_ensemble`: the fine-tuned model that evaluate and export use.

finetune's top as it is, or with finetune.ensemble one model that runs it and the untouched top (the ImageNet
blocks and a head of train_head's) side by side on the same frozen-block maps and averages their probabilities.
The head is the saved one (every head.ensemble member) unless it has trained on the stop set and the fine-tuned
top has not (head.refit without finetune.refit, each as recorded by the stage that ran with it: train_head's
metrics.json, the top's recipe.json): then the early-stopped head (finetune.ensemble_partner).

A stage of its own, after finetune, so that a change of the saved head (head.ensemble, head.refit) reruns this
averaging, seconds, and not fine-tuning's training. Disabled fine-tuning: a marker, and evaluate and export use
the head alone.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
from bottleneck_clf.atomic import atomic_dir, write_json
from bottleneck_clf.config import load_config
from bottleneck_clf.dataset import MANIFEST, class_names, read_manifest
from bottleneck_clf.errors import UserError
from bottleneck_clf.machine import record as record_machine
from bottleneck_clf.machine import record_with
from bottleneck_clf.paths import project_paths

# metrics.json's `ensemble_with` (finetune.ensemble_partner's path name) in the console's words.
PARTNER_WORDS = {"model": "saved head", "early_stopped_head": "early-stopped head"}


def stop_set_scores_of(model, recipe: dict, weights, paths: dict, config) -> tuple[dict, str]:
    """The average's and each part's accuracy and log loss on the stop set finetune stopped on, and its name; the
    maps as the top was trained on them and the stop set it stopped on (its recipe), as evaluate rebuilds them,
    from the feature cache or computed where `ray` says (after finetune.augment: pixels, nothing is cached)."""
    from bottleneck_clf.config import ExtractConfig
    from bottleneck_clf.engine import device, open_engine
    from bottleneck_clf.feature_cache import feature_cache_dir
    from bottleneck_clf.finetune import FrozenMaps, stop_set_maps, stop_set_scores

    entries = read_manifest(paths["prepared"] / MANIFEST)
    with open_engine(config.ray) as engine, tempfile.TemporaryDirectory(prefix="finetune-ensemble-maps-") as scratch:
        frozen = FrozenMaps(weights, ExtractConfig.from_mapping(recipe), recipe["blocks"], feature_cache_dir(),
                            engine)
        stop, name = stop_set_maps(frozen, entries, paths["raw"], class_names(entries),
                                   recipe["stop_set"]["fraction"], recipe["stop_set"]["seed"], Path(scratch))
        scores = stop_set_scores(model, stop, config.finetune.batch_size)
        del stop
        if engine is not None:
            print(f"finetune_ensemble: frozen blocks: {device(engine)}")
            record_with(paths["machine"], "finetune_ensemble", engine.made_on())
    return scores, name


def recipe_made_from(recipe: dict, files: list[Path]) -> dict:
    """The top's recipe for the model made from it and `files`: what the top started from (its made_from) and
    those files' digests, which evaluate and export check (finetune.check_current)."""
    from bottleneck_clf.finetune import made_from

    return {**recipe, "made_from": {**recipe["made_from"], **made_from(files)}}


def saved_head_refit(paths: dict) -> bool:
    """Whether the saved head trained on the stop set: head.refit as train_head ran with it, from its own record
    (params.yaml may have changed since, by hand)."""
    path = paths["train_metrics"] / "metrics.json"
    try:
        return bool(json.loads(path.read_text(encoding="utf-8"))["refit"])
    except (OSError, ValueError, KeyError):
        raise UserError(f"{path}: no record of whether the saved head was refit (train_head has not finished); "
                        "run `dvc repro train_head`") from None


def main() -> None:
    import keras

    from bottleneck_clf.finetune import (
        DISABLED_FILE,
        ENSEMBLE_PARTS,
        RECIPE_FILE,
        TOP_FILE,
        build_top,
        ensemble_partner,
        ensemble_top,
        read_recipe,
        write_disabled_marker,
    )
    from bottleneck_clf.model_files import save_model
    from bottleneck_clf.vgg_weights import read_weights

    config = load_config()
    settings, paths = config.finetune, project_paths()
    record_machine(paths["machine"], "finetune_ensemble")  # the CPU that made these floats (check-repro)
    source, target = paths["finetune_top"], paths["finetuned"]
    if not settings.enabled:
        write_disabled_marker(target)
        write_json(paths["ensemble_metrics"] / "metrics.json", {"enabled": False})
        ignored = " (finetune.ensemble needs it on)" if settings.ensemble else ""
        print(f"finetune_ensemble: fine-tuning disabled (finetune.enabled: false){ignored} -> {target}")
        return
    if not (source / TOP_FILE).exists():
        state = "ran with finetune.enabled: false" if (source / DISABLED_FILE).exists() else "has not run"
        raise UserError(f"{source}: no fine-tuned top (finetune {state}); run `dvc repro finetune_ensemble`, which "
                        "runs finetune first")
    recipe = read_recipe(source)
    if "stop_set" not in recipe or "made_from" not in recipe:
        raise UserError(f"{source / RECIPE_FILE}: no record of the stop set the top was trained with (an older "
                        "version made it); fine-tune it again with `dvc repro --force finetune`, then `dvc repro`")
    summary = {"enabled": True, "ensemble": settings.ensemble}
    if not settings.ensemble:  # the top as finetune saved it, byte for byte
        with atomic_dir(target) as tmp:
            shutil.copyfile(source / TOP_FILE, tmp / TOP_FILE)
            write_json(tmp / RECIPE_FILE, recipe_made_from(recipe, [source / TOP_FILE]))
        write_json(paths["ensemble_metrics"] / "metrics.json", summary)
        print(f"finetune_ensemble: the fine-tuned top as it is (finetune.ensemble: false) -> {target}")
        return
    top = keras.saving.load_model(source / TOP_FILE, compile=False)
    partner = ensemble_partner(saved_head_refit(paths), recipe["refit"])
    head = keras.saving.load_model(paths[partner], compile=False)
    weights = read_weights(paths["weights"])
    frozen = build_top(tuple(recipe["input_shape"]), recipe["blocks"], recipe["pooling"], weights, head,
                       model_name=ENSEMBLE_PARTS["head"])
    top = ensemble_top(top, frozen)
    summary["ensemble_with"] = partner
    said = f"the fine-tuned top averaged with the {PARTNER_WORDS[partner]} (finetune.ensemble)"
    if not recipe["refit"]:  # after a refit the stop slice is training data: no figure on it is held out
        # metrics.json describes the saved model: the average's figures on finetune's stop set, beside each
        # part's by the same measure (finetune's `eval` is Keras' loss, with any smoothing or L2 in it).
        summary["ensemble_stop_set"], stop_name = stop_set_scores_of(top, recipe, weights, paths, config)
        mean = summary["ensemble_stop_set"]["ensemble"]
        said += f": {stop_name} log loss {mean['loss']:.4f}, accuracy {mean['accuracy']:.4f}"
    with atomic_dir(target) as tmp:
        save_model(top, tmp / TOP_FILE)
        write_json(tmp / RECIPE_FILE, recipe_made_from(recipe, [source / TOP_FILE, paths[partner]]))
    write_json(paths["ensemble_metrics"] / "metrics.json", summary)
    print(f"finetune_ensemble: saved {said} -> {target}")


if __name__ == "__main__":
    from bottleneck_clf.errors import run

    run(main, "finetune_ensemble")
