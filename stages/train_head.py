"""Stage `train_head`: fit the dense head on the training features, validating each epoch.

With `head.refit`, the run with early stopping only chooses the epoch count, and the saved head is a second run
from scratch, for that many epochs, on every image early stopping watched as well: the slice of training, or
the validation split when prepare made a test split. Evaluate's split stays out. The head early stopping kept
is saved either way (`early_stopped_head`): fine-tuning starts from it.

With `head.ensemble` above 1, more heads are trained the same way from other seeds (head.member_seed) and the
saved head averages them all; the early-stopped head stays member 1's, so fine-tuning does not depend on it.
"""

from __future__ import annotations

import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
from bottleneck_clf.atomic import write_json
from bottleneck_clf.config import load_config
from bottleneck_clf.features import load_meta, load_split
from bottleneck_clf.head import (
    average_heads,
    ensemble_summary,
    kept_summary,
    member_seed,
    refit_head,
    refit_notice,
    refit_set,
    refit_splits,
    refit_summary,
    saved_message,
    seed_everything,
    stop_images,
    stopping_sets,
    train_head,
)
from bottleneck_clf.machine import record as record_machine
from bottleneck_clf.model_files import save_model
from bottleneck_clf.paths import project_paths


def train_member(fit: tuple, stop: tuple, has_test: bool, n_classes: int, config, seed: int, callbacks=None):
    """One head as head.* says: early stopping on `stop`, then its refit if asked.
    Returns (the head early stopping kept, the head to save, its metrics summary)."""
    kept_model, history, kept = train_head(fit, stop, n_classes, config, seed, callbacks=callbacks)
    summary = kept_summary(history, kept, stop_images(stop))
    model = kept_model
    if config.refit:
        everything, splits = refit_set(fit, stop, has_test), refit_splits(has_test)
        print(refit_notice("train_head", len(everything[1]), splits, kept + 1))
        model, *refit = refit_head(everything, n_classes, config, seed, kept + 1)
        summary = refit_summary(*refit, splits, summary)
    return kept_model, model, {"refit": config.refit, **summary}


def main() -> None:
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    config = load_config()
    seed = config.base.seed
    paths = project_paths()
    record_machine(paths["machine"], "train_head")  # the CPU that made these floats (check-repro)
    seed_everything(seed)
    meta = load_meta(paths["features"])
    has_test = "test" in meta["counts"]
    fit, stop, stop_name = stopping_sets(
        load_split(paths["features"], "train")[:2], load_split(paths["features"], "validation")[:2],
        has_test, config.head.early_stopping_fraction, seed)
    n_classes = len(meta["classes"])
    # dvc.yaml declares the plots itself; dvclive must not rewrite it nor save experiments on its own.
    # Its curves are member 1's: the single head's, and the one fine-tuning starts from.
    live = Live(str(paths["train_metrics"]), dvcyaml=False, save_dvc_exp=False)
    early_stopped, model, summary = train_member(fit, stop, has_test, n_classes, config.head, seed,
                                                 callbacks=[DVCLiveCallback(live=live)])
    # Fine-tuning starts from this one and stops on the same stop set, which a refitted head has trained on.
    save_model(early_stopped, paths["early_stopped_head"])
    members, summaries = [model], [summary]
    for member in range(1, config.head.ensemble):
        member_seeded = member_seed(seed, member)
        print(f"train_head: head {member + 1} of {config.head.ensemble} (head.ensemble), seed {member_seeded}")
        seed_everything(member_seeded)
        _, model, summary = train_member(fit, stop, has_test, n_classes, config.head, member_seeded)
        members.append(model)
        summaries.append(summary)
    model = average_heads(members)
    if len(members) > 1:  # the saved average's own figures; each member's under `members`
        summary = {"refit": config.head.refit, **ensemble_summary(model, summaries, fit, stop, config.head.refit)}
    save_model(model, paths["model"])
    # dvclive's summary is the last epoch's; the saved model is the kept epoch's (or its refit, or their average).
    write_json(paths["train_metrics"] / "metrics.json", summary)
    print(f"train_head: {saved_message(summary, stop_name, 'head')} -> {paths['model']}")


if __name__ == "__main__":
    from bottleneck_clf.errors import run

    run(main, "train_head")
