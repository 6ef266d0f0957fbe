"""Stage `train_head`: fit the dense head on the training features, validating each epoch."""

from __future__ import annotations

import keras
import numpy as np

import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
from bottleneck_clf.features import load_meta, load_split
from bottleneck_clf.head import FeatureBatches, build_head, compile_head, seed_everything
from bottleneck_clf.machine import record as record_machine
from bottleneck_clf.model_files import save_model
from bottleneck_clf.params import load_params
from bottleneck_clf.paths import project_paths


def train_head(train: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray], n_classes: int,
               units: int, dropout: float, optimizer: str, learning_rate: float, epochs: int, batch_size: int,
               patience: int, seed: int, callbacks: list | None = None):
    """Train a head on (features, labels) pairs; returns (model, keras History)."""
    model = build_head(train[0].shape[1:], n_classes, units, dropout)
    compile_head(model, n_classes, optimizer, learning_rate)
    callbacks = list(callbacks or [])
    if patience > 0:
        # Early stopping goes first so that the best weights are back before the loggers close.
        callbacks.insert(0, keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=patience, restore_best_weights=True, verbose=1))
    history = model.fit(
        FeatureBatches(*train, batch_size=batch_size, shuffle=True, seed=seed),
        validation_data=FeatureBatches(*validation, batch_size=max(batch_size, 256), shuffle=False, seed=seed),
        epochs=epochs, callbacks=callbacks, verbose=2,
    )
    return model, history


def main() -> None:
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    params = load_params()
    settings = params["head"]
    seed = params["base"]["seed"]
    paths = project_paths()
    record_machine(paths["machine"], "train_head")  # which CPU made these floats (check_repro reads it)
    seed_everything(seed)
    meta = load_meta(paths["features"])
    train = load_split(paths["features"], "train")[:2]
    validation = load_split(paths["features"], "validation")[:2]
    # dvc.yaml declares the plots itself; dvclive must not rewrite it nor save experiments on its own.
    live = Live(str(paths["train_metrics"]), dvcyaml=False, save_dvc_exp=False)
    model, history = train_head(
        train, validation, len(meta["classes"]), settings["units"], settings["dropout"], settings["optimizer"],
        settings["learning_rate"], settings["epochs"], settings["batch_size"], settings["patience"], seed,
        callbacks=[DVCLiveCallback(live=live)],
    )
    save_model(model, paths["model"])
    epochs_run = len(history.history["loss"])
    # Early stopping restores the best epoch; without it the last epoch is what gets saved.
    kept = int(np.argmin(history.history["val_loss"])) if settings["patience"] > 0 else epochs_run - 1
    print(f"train_head: {epochs_run} epochs, saved epoch {kept + 1}: val_loss "
          f"{history.history['val_loss'][kept]:.4f}, val accuracy {history.history['val_accuracy'][kept]:.4f} "
          f"-> {paths['model']}")


if __name__ == "__main__":
    main()
