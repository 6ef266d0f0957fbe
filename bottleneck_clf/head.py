"""The small dense classifier trained on bottleneck features."""

from __future__ import annotations

import random
from pathlib import Path

import keras
import numpy as np
from keras import layers

from bottleneck_clf.config import HeadConfig
from bottleneck_clf.errors import UserError
from bottleneck_clf.params import OPTIMIZERS
from bottleneck_clf.scoring import accuracy_and_loss


def seed_everything(seed: int) -> None:
    """Python, NumPy and Keras from one seed, and deterministic TensorFlow kernels.

    Not PYTHONHASHSEED: the interpreter reads it only at start-up, so setting it here changed nothing.
    """
    import tensorflow as tf

    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def is_binary(n_classes: int) -> bool:
    return n_classes == 2


def build_head(input_shape: tuple[int, ...], n_classes: int, units: int, dropout: float, *,
               batch_norm: bool = False, l2: float = 0.0):
    """The seed's head: Flatten, Dense relu, Dropout, then sigmoid for two classes or softmax for more.

    `batch_norm` puts a BatchNormalization between the hidden Dense and its relu; `l2` penalises the
    Dense kernels (both levers of README "Accuracy levers"; off by default).
    """
    if n_classes < 2:
        raise UserError(f"a classifier needs at least two classes, got {n_classes}")
    regularizer = keras.regularizers.L2(l2) if l2 > 0 else None
    inputs = keras.Input(shape=input_shape, name="features")
    x = layers.Flatten(name="flatten")(inputs)
    if batch_norm:
        x = layers.Dense(units, use_bias=False, kernel_regularizer=regularizer, name="dense")(x)
        x = layers.BatchNormalization(name="batch_norm")(x)
        x = layers.Activation("relu", name="relu")(x)
    else:
        x = layers.Dense(units, activation="relu", kernel_regularizer=regularizer, name="dense")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    if is_binary(n_classes):
        outputs = layers.Dense(1, activation="sigmoid", kernel_regularizer=regularizer, name="probability")(x)
    else:
        outputs = layers.Dense(n_classes, activation="softmax", kernel_regularizer=regularizer,
                               name="probabilities")(x)
    return keras.Model(inputs, outputs, name="head")


def make_optimizer(name: str, learning_rate: float):
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    raise UserError(f"unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZERS)}")


@keras.saving.register_keras_serializable(package="bottleneck_clf")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy with label smoothing for integer labels (Keras' sparse loss has none)."""

    def __init__(self, n_classes: int, label_smoothing: float, **kwargs):
        super().__init__(**kwargs)
        self.n_classes, self.label_smoothing = n_classes, label_smoothing

    def call(self, y_true, y_pred):
        one_hot = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, [-1]), "int32"), self.n_classes)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "n_classes": self.n_classes, "label_smoothing": self.label_smoothing}


def loss_for(n_classes: int, label_smoothing: float = 0.0):
    """The training loss; label smoothing pulls the targets from 0/1 towards 1/n_classes."""
    if label_smoothing == 0:
        # Keras' own names: the models trained before the option existed stay bit for bit the same.
        return "binary_crossentropy" if is_binary(n_classes) else "sparse_categorical_crossentropy"
    if is_binary(n_classes):
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    return SmoothedSparseCrossentropy(n_classes, label_smoothing)


def learning_rate_for(config, fit_images: int):
    """The optimizer's step size: a number, or a cosine decay to 0 over `config.epochs` epochs."""
    if config.schedule == "cosine":
        steps = config.epochs * int(np.ceil(fit_images / config.batch_size))
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=max(1, steps))
    return config.learning_rate


def schedule_callbacks(config) -> list:
    """reduce-on-plateau: a fifth of the step size after half the early-stopping patience without progress."""
    if config.schedule != "plateau":
        return []
    return [keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.2,
                                              patience=max(1, config.patience // 2), verbose=1)]


def compile_head(model, n_classes: int, optimizer: str, learning_rate, label_smoothing: float = 0.0) -> None:
    """`learning_rate`: a number or a schedule (learning_rate_for)."""
    model.compile(optimizer=make_optimizer(optimizer, learning_rate), loss=loss_for(n_classes, label_smoothing),
                  metrics=["accuracy"])


def probabilities(model, features: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(N, n_classes) class probabilities, whichever output the head has."""
    chunks = [
        np.asarray(model.predict_on_batch(np.asarray(features[i : i + batch_size], np.float32)), np.float64)
        for i in range(0, len(features), batch_size)
    ]
    return as_columns(np.concatenate(chunks) if chunks else np.zeros((0, 1)))


def as_columns(out: np.ndarray) -> np.ndarray:
    """A head's output as (N, n_classes) probabilities: one sigmoid column becomes two."""
    out = np.asarray(out, np.float64)
    if out.shape[1] == 1:
        return np.concatenate([1.0 - out, out], axis=1)
    return out


class FeatureBatches(keras.utils.PyDataset):
    """Batches read from memory-mapped features (only `rows` of them, when given), reshuffled each epoch.

    Only one batch of features is in memory at a time, whatever the size of the split.
    """

    def __init__(self, features, labels, rows=None, *, batch_size: int, shuffle: bool, seed: int):
        super().__init__()
        self.features, self.labels = features, labels
        self.rows = np.arange(len(labels)) if rows is None else np.asarray(rows)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch = 0
        self.order = self._order()

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return self.rows
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.rows)

    def __len__(self) -> int:
        return int(np.ceil(len(self.rows) / self.batch_size))

    def __getitem__(self, index: int):
        # Sorted rows read the memory map front to back; order inside a batch does not change the gradient.
        rows = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        return np.asarray(self.features[rows], np.float32), np.asarray(self.labels[rows])

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()


# A reported score must come from images that no training choice looked at. Early stopping (and the
# epoch it keeps) is such a choice, so it watches validation only when a test split is what evaluate
# reports; otherwise it watches a stratified, seeded slice of the training split.
STOP_SLICE = "train slice"


def stopping_rows(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows to fit, rows to stop on): `fraction` of each class, at least one, never a class's last image."""
    rng = np.random.default_rng([seed, 7])
    stop = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        take = min(len(rows) - 1, max(1, round(fraction * len(rows))))
        stop.extend(rng.permutation(rows)[:take].tolist())
    stop_rows = np.sort(np.array(stop, np.int64))
    return np.setdiff1d(np.arange(len(labels)), stop_rows), stop_rows


def stopping_sets(train: tuple, validation: tuple, has_test: bool, fraction: float, seed: int):
    """((features, labels, rows) to fit, the same to stop on, what the stop set is) for one training run."""
    if has_test:
        return (*train, None), (*validation, None), "validation"
    fit_rows, stop_rows = stopping_rows(np.asarray(train[1]), fraction, seed)
    if len(stop_rows) == 0:
        raise UserError("head.early_stopping_fraction: no class has two training images to spare one for early "
                         "stopping; add images, or let prepare make a test split (prepare.test_fraction)")
    return (*train, fit_rows), (*train, stop_rows), STOP_SLICE


def fit_kept(model, fit: tuple, stop: tuple, config, seed: int, callbacks: list | None = None,
             stop_batch_size: int | None = None) -> tuple[dict, int]:
    """Fit with early stopping on `stop`; returns (history per epoch, index of the epoch whose weights are kept).

    `config` is the training section (HeadConfig or FinetuneConfig): its epochs, batch_size and patience.
    """
    callbacks = list(callbacks or []) + schedule_callbacks(config)
    stopper = None
    if config.patience > 0:
        stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                                restore_best_weights=True, verbose=1)
        # First, so that the best weights are back before the loggers close.
        callbacks.insert(0, stopper)
    history = model.fit(
        training_batches(fit, config, seed),
        validation_data=FeatureBatches(*stop, batch_size=stop_batch_size or config.batch_size, shuffle=False,
                                       seed=seed),
        epochs=config.epochs, callbacks=callbacks, verbose=2,
    ).history
    # Without early stopping the last epoch is what gets saved.
    kept = stopper.best_epoch if stopper is not None else len(history["loss"]) - 1
    return history, int(kept)


def fit_epochs(model, fit: tuple, config, seed: int, epochs: int, callbacks: list | None = None) -> dict:
    """Fit for exactly `epochs` epochs with no stop set (a refit); returns the history per epoch."""
    return model.fit(training_batches(fit, config, seed), epochs=epochs, callbacks=callbacks, verbose=2).history


def training_batches(fit: tuple, config, seed: int) -> FeatureBatches:
    """The fitted rows in `config.batch_size` batches, reshuffled each epoch from `seed`."""
    return FeatureBatches(*fit, batch_size=config.batch_size, shuffle=True, seed=seed)


class PreciseBatchNorm(keras.callbacks.Callback):
    """Sets a BatchNormalization layer's moving statistics to the exact ones of the rows it is fitted on.

    Keras keeps a moving average (momentum 0.99) of the batches' statistics: with few steps (a folder of 100
    images is 3 steps an epoch) it still sits near its start, and the model, right on every training batch,
    answers one class at inference. So after each epoch's last step, before the epoch is scored on the stop
    set (and before early stopping keeps its weights), the statistics become the mean and variance of the
    layer's input over every fitted row ("precise BN", Wu & Johnson 2021). Rows in a fixed order: reproducible.
    """

    def __init__(self, layer_input, norm_layer, fit: tuple, batch_size: int = 1024):
        super().__init__()
        self.layer_input, self.norm_layer = layer_input, norm_layer
        self.rows = FeatureBatches(*fit, batch_size=batch_size, shuffle=False, seed=0)

    def on_train_batch_end(self, batch, logs=None) -> None:
        if batch == self.params["steps"] - 1:
            self.recalibrate()

    def recalibrate(self) -> None:
        outputs = np.concatenate([
            np.asarray(self.layer_input.predict_on_batch(self.rows[i][0]), np.float64) for i in range(len(self.rows))
        ])
        self.norm_layer.moving_mean.assign(outputs.mean(axis=0).astype(np.float32))
        self.norm_layer.moving_variance.assign(outputs.var(axis=0).astype(np.float32))


def precise_batch_norm(model, fit: tuple) -> list:
    """The PreciseBatchNorm callback for a head built with batch_norm, else none."""
    try:
        norm = model.get_layer("batch_norm")
    except ValueError:
        return []
    return [PreciseBatchNorm(keras.Model(model.inputs, model.get_layer("dense").output), norm, fit)]


def new_head(fit: tuple, n_classes: int, config: HeadConfig):
    """A fresh head for (features, labels, rows) to fit, compiled (a cosine schedule over the fit's steps)."""
    model = build_head(fit[0].shape[1:], n_classes, config.units, config.dropout, batch_norm=config.batch_norm,
                       l2=config.l2)
    compile_head(model, n_classes, config.optimizer, learning_rate_for(config, stop_images(fit)),
                 config.label_smoothing)
    return model


def train_head(fit: tuple, stop: tuple, n_classes: int, config: HeadConfig, seed: int,
               callbacks: list | None = None):
    """Train a head on (features, labels, rows) to fit and to stop on; returns (model, history, kept epoch)."""
    model = new_head(fit, n_classes, config)
    # It acts at the epoch's last step, so the stop-set score and early stopping's copy see its statistics.
    callbacks = precise_batch_norm(model, fit) + list(callbacks or [])
    history, kept = fit_kept(model, fit, stop, config, seed, callbacks, stop_batch_size=max(config.batch_size, 256))
    return model, history, kept


def refit_set(fit: tuple, stop: tuple, has_test: bool, scratch: Path | None = None) -> tuple:
    """What a refit trains on, as (features, labels, None): every training row, the stop slice that `fit` left
    out too; with a test split the stop set was validation, so validation joins instead. Test stays out.
    With `scratch` (a folder) the joined features are a memory-mapped file there, not a copy in memory."""
    if not has_test:
        return (*fit[:2], None)
    shape = (len(fit[0]) + len(stop[0]), *fit[0].shape[1:])
    if scratch is None:
        features = np.empty(shape, np.float32)
    else:
        features = np.lib.format.open_memmap(scratch / "refit.npy", mode="w+", dtype=np.float32, shape=shape)
    features[:len(fit[0])], features[len(fit[0]):] = fit[0], stop[0]
    return features, np.concatenate([fit[1], stop[1]]), None


def refit_splits(has_test: bool) -> str:
    """The splits a refit trains on, as the console and metrics.json name them."""
    return "train + validation" if has_test else "training"


def refit_head(everything: tuple, n_classes: int, config: HeadConfig, seed: int, epochs: int):
    """head.refit: a fresh head trained on `everything` (refit_set) for the `epochs` early stopping chose;
    returns (model, history, images trained on). Seeded again, so its initialisation and shuffling are the
    choosing run's, not wherever that run left the generators."""
    seed_everything(seed)
    model = new_head(everything, n_classes, config)
    # Its batch-norm statistics are those of every row it trains on, as the choosing run's were of its fitted rows.
    history = fit_epochs(model, everything, config, seed, epochs, callbacks=precise_batch_norm(model, everything))
    return model, history, stop_images(everything)


def member_seed(seed: int, member: int) -> int:
    """head.ensemble: the seed of member `member`. Member 0's is the single head's, so `ensemble: 1` saves exactly
    the head it always did; the others are far apart so that no two members of nearby base seeds coincide."""
    return seed + 1000 * member


def average_heads(members: list) -> keras.Model:
    """head.ensemble: features -> the mean of the members' probabilities, one model to save, evaluate and export
    (a single member is returned as it is). The members see the same features and stop set and differ only in
    initialisation and batch order; where they err on different images, the mean can right some of each one's
    mistakes (README, "Accuracy levers")."""
    if len(members) == 1:
        return members[0]
    inputs = keras.Input(shape=members[0].input_shape[1:], name="features")
    parts = []
    for number, member in enumerate(members, start=1):
        # Uncompiled copies: the saved file would otherwise carry each member's optimizer state, which nothing
        # loads; nested models need names of their own (numbered from 1, as metrics.json and the console do).
        part = keras.Model.from_config(member.get_config())
        part.set_weights(member.get_weights())
        part.name = f"head_{number}"
        parts.append(part)
    mean = layers.Average(name="average")([part(inputs) for part in parts])
    return keras.Model(inputs, mean, name="head_ensemble")


def scored_rows(model, data: tuple, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of (features, labels, rows): the rows picked, or all of it, a slice at a time, so
    memory-mapped features are never all read at once."""
    features, labels, rows = data
    rows = np.arange(len(labels)) if rows is None else np.asarray(rows)
    chunks = [probabilities(model, features[rows[i : i + batch_size]]) for i in range(0, len(rows), batch_size)]
    return np.concatenate(chunks), np.asarray(labels)[rows]


def ensemble_summary(model, members: list[dict], fit: tuple, stop: tuple, refit: bool) -> dict:
    """metrics.json of an averaged head: the saved average's own accuracy and log loss (inference mode, no dropout,
    penalty or smoothing: not the members' training losses, hence keys of their own) on the images its members
    trained on (`fit`, and `stop` too after a refit) and on the stop set when none of them trained on it;
    each member's summary under `members`, by number from 1 (member 1's is what a single head writes)."""
    def score(*sets):
        probs, labels = zip(*(scored_rows(model, data) for data in sets), strict=True)
        figures = accuracy_and_loss(np.concatenate(probs), np.concatenate(labels), 0.5)
        return {"accuracy": figures["accuracy"], "log_loss": figures["loss"]}

    trained_on = (fit, stop) if refit else (fit,)
    average = {"trained_on": score(*trained_on)}
    if not refit:
        average["stop_set"] = score(stop)
    return {"ensemble": len(members), "average": average,
            "training_images": sum(stop_images(data) for data in trained_on),
            "members": {str(number): member for number, member in enumerate(members, start=1)}}


def stop_images(stop: tuple) -> int:
    """How many images the stop set (features, labels, rows) holds: its rows, or all of it."""
    return len(stop[2]) if stop[2] is not None else len(stop[1])


def kept_summary(history: dict, kept: int, stop_images: int) -> dict:
    """metrics.json of a training stage: the saved epoch's figures, not the last epoch's."""
    return {
        "epochs_run": len(history["loss"]),
        "best_epoch": kept + 1,
        "train": {"loss": float(history["loss"][kept]), "accuracy": float(history["accuracy"][kept])},
        "eval": {"loss": float(history["val_loss"][kept]), "accuracy": float(history["val_accuracy"][kept])},
        "early_stopping_images": int(stop_images),
    }


def refit_summary(history: dict, images: int, splits: str, selection: dict) -> dict:
    """metrics.json after a refit: the saved model's own figures are its last epoch's on the images it trained
    on (nothing it did not train on but the reported split is left to score it by), and `selection` is the run
    that chose its epochs."""
    return {
        "epochs_run": len(history["loss"]),
        "train": {"loss": float(history["loss"][-1]), "accuracy": float(history["accuracy"][-1])},
        "training_images": int(images),
        "refit_splits": splits,
        "selection": selection,
    }


def kept_message(summary: dict, stop_name: str) -> str:
    return (f"{summary['epochs_run']} epochs, saved epoch {summary['best_epoch']}: {stop_name} loss "
            f"{summary['eval']['loss']:.4f}, accuracy {summary['eval']['accuracy']:.4f} "
            f"({summary['early_stopping_images']} images)")


def saved_message(summary: dict, stop_name: str, section: str) -> str:
    """The console's account of a training stage's metrics.json: the kept epoch, then the refit if `section`
    asked for one (the summary then holds the choosing run under `selection`), or the average of an ensemble."""
    if "members" in summary:
        return ensemble_message(summary, stop_name, section)
    said = kept_message(summary.get("selection", summary), stop_name)
    if summary["refit"]:
        said += (f"; saved its refit on all {summary['training_images']} {summary['refit_splits']} images "
                 f"({section}.refit): training loss {summary['train']['loss']:.4f}, accuracy "
                 f"{summary['train']['accuracy']:.4f}")
    return said


def ensemble_message(summary: dict, stop_name: str, section: str) -> str:
    """The console's account of an averaged head (head.ensemble): its own figures, then member 1's."""
    average = summary["average"]
    said = (f"saved the average of {summary['ensemble']} heads ({section}.ensemble): accuracy "
            f"{average['trained_on']['accuracy']:.4f}, log loss {average['trained_on']['log_loss']:.4f} on the "
            f"{summary['training_images']} images they trained on")
    if "stop_set" in average:
        said += (f", accuracy {average['stop_set']['accuracy']:.4f}, log loss "
                 f"{average['stop_set']['log_loss']:.4f} on the {stop_name}")
    return f"{said}; member 1: {saved_message(summary['members']['1'], stop_name, section)}"


def refit_notice(stage: str, images: int, splits: str, epochs: int) -> str:
    return f"{stage}: refit on all {images} {splits} images for the {epochs} epoch(s) early stopping chose"
