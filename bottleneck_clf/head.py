"""The small dense classifier trained on bottleneck features."""

from __future__ import annotations

import os
import random

import keras
import numpy as np
from keras import layers

from bottleneck_clf.params import OPTIMIZERS


def seed_everything(seed: int) -> None:
    """Python, NumPy and Keras from one seed, and deterministic TensorFlow kernels."""
    import tensorflow as tf

    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def is_binary(n_classes: int) -> bool:
    return n_classes == 2


def build_head(input_shape: tuple[int, ...], n_classes: int, units: int, dropout: float):
    """The seed's head: Flatten, Dense relu, Dropout, then sigmoid for two classes or softmax for more."""
    if n_classes < 2:
        raise ValueError(f"a classifier needs at least two classes, got {n_classes}")
    inputs = keras.Input(shape=input_shape, name="features")
    x = layers.Flatten(name="flatten")(inputs)
    x = layers.Dense(units, activation="relu", name="dense")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    if is_binary(n_classes):
        outputs = layers.Dense(1, activation="sigmoid", name="probability")(x)
    else:
        outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="head")


def make_optimizer(name: str, learning_rate: float):
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZERS)}")


def compile_head(model, n_classes: int, optimizer: str, learning_rate: float) -> None:
    loss = "binary_crossentropy" if is_binary(n_classes) else "sparse_categorical_crossentropy"
    model.compile(optimizer=make_optimizer(optimizer, learning_rate), loss=loss, metrics=["accuracy"])


def probabilities(model, features: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(N, n_classes) class probabilities, whichever output the head has."""
    chunks = [
        np.asarray(model.predict_on_batch(np.asarray(features[i : i + batch_size], np.float32)), np.float64)
        for i in range(0, len(features), batch_size)
    ]
    out = np.concatenate(chunks) if chunks else np.zeros((0, 1))
    if out.shape[1] == 1:
        return np.concatenate([1.0 - out, out], axis=1)
    return out


class FeatureBatches(keras.utils.PyDataset):
    """Batches read from memory-mapped features, reshuffled each epoch from the seed.

    Only one batch of features is in memory at a time, whatever the size of the split.
    """

    def __init__(self, features, labels, batch_size: int, shuffle: bool, seed: int):
        super().__init__()
        self.features, self.labels = features, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch = 0
        self.order = self._order()

    def _order(self) -> np.ndarray:
        n = len(self.labels)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n)

    def __len__(self) -> int:
        return int(np.ceil(len(self.labels) / self.batch_size))

    def __getitem__(self, index: int):
        # Sorted rows read the memory map front to back; order inside a batch does not change the gradient.
        rows = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        return np.asarray(self.features[rows], np.float32), np.asarray(self.labels[rows])

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()
