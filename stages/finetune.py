"""Stage `finetune`: train the top VGG16 blocks together with the head, when `finetune.enabled` is true.

Disabled, it only records that (an empty model folder and `enabled: false` in its metrics), so the stage
costs nothing and evaluate and export use the head alone.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
from bottleneck_clf.atomic import atomic_dir, write_json
from bottleneck_clf.dataset import class_names, read_manifest
from bottleneck_clf.machine import record as record_machine
from bottleneck_clf.params import load_params
from bottleneck_clf.paths import project_paths

MANIFEST = "manifest.csv"


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

    from bottleneck_clf.feature_cache import feature_cache_dir
    from bottleneck_clf.finetune import MODEL_FILE, RECIPE_FILE, FrozenMaps, build_top, finetune, recipe
    from bottleneck_clf.head import kept_message, kept_summary, seed_everything, stopping_sets
    from bottleneck_clf.model_files import save_model
    from bottleneck_clf.vgg_weights import read_weights

    params = load_params()
    settings = params["finetune"]
    paths = project_paths()
    record_machine(paths["machine"], "finetune")  # which CPU made these floats (check_repro reads it)
    if not settings["enabled"]:
        write_disabled(paths["finetuned"], paths["finetune_metrics"])
        print(f"finetune: disabled (finetune.enabled: false) -> {paths['finetuned']}")
        return
    seed = params["base"]["seed"]
    seed_everything(seed)
    started = time.perf_counter()
    entries = read_manifest(paths["prepared"] / MANIFEST)
    classes = class_names(entries)
    weights = read_weights(paths["weights"])
    plan = recipe(params["extract"], settings["blocks"])
    frozen = FrozenMaps(weights, plan, feature_cache_dir())
    data = {}
    with tempfile.TemporaryDirectory(prefix="finetune-maps-") as scratch:
        for split in ("train", "validation"):
            rows = [e for e in entries if e.split == split]
            maps, encoded, hit = frozen.compute([str(paths["raw"] / e.path) for e in rows], [e.sha256 for e in rows],
                                                Path(scratch) / f"{split}.npy", desc=f"frozen blocks {split}")
            labels = np.array([classes.index(e.label) for e in rows], np.int32)
            data[split] = (maps, labels)
            print(f"finetune: {split}: {len(rows)} images, {encoded} through the frozen blocks, {hit} from the cache")
        del frozen
        prepared = time.perf_counter() - started
        # The same images to stop on as train_head's (same labels, fraction and seed).
        fit, stop, stop_name = stopping_sets(data["train"], data["validation"], any(e.split == "test" for e in entries),
                                             params["head"]["early_stopping_fraction"], seed)
        head = keras.saving.load_model(paths["model"], compile=False)
        frozen_shape = data["train"][0].shape[1:]
        top = build_top(frozen_shape, settings["blocks"], plan["pooling"], weights, head)
        live = Live(str(paths["finetune_metrics"]), dvcyaml=False, save_dvc_exp=False)
        history, kept = finetune(fit, stop, top, len(classes), settings, seed, callbacks=[DVCLiveCallback(live=live)])
        stop_images = len(stop[2]) if stop[2] is not None else len(stop[1])
        del fit, stop
        data.clear()
    with atomic_dir(paths["finetuned"]) as tmp:
        save_model(top, tmp / MODEL_FILE)
        write_json(tmp / RECIPE_FILE, {**plan, "input_shape": list(frozen_shape), "classes": classes})
    summary = {"enabled": True, **kept_summary(history, kept, stop_images)}
    # dvclive's summary is the last epoch's; the saved model is the kept epoch's.
    write_json(paths["finetune_metrics"] / "metrics.json", summary)
    seconds = time.perf_counter() - started
    print(f"finetune: top {settings['blocks']} block(s) in {seconds:.0f} s ({prepared:.0f} s for the frozen "
          f"blocks), {kept_message(summary, stop_name)} -> {paths['finetuned']}")


if __name__ == "__main__":
    from bottleneck_clf.errors import run

    run(main, "finetune")
