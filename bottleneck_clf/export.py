"""One self-contained `.keras` classifier: uint8 RGB images of any size in, class probabilities out.

Everything the pipeline does between a decoded image and a probability is a standard Keras layer inside the
model (no Lambda, no custom class), so `keras.saving.load_model(path)` loads it in safe mode anywhere:
  uint8 -> float (Rescaling 1.0) -> resize (Resizing, antialiased: the pipeline's own op) -> VGG16
  preprocessing (a fixed 1x1 convolution: RGB -> BGR minus the ImageNet mean) -> frozen VGG16 blocks ->
  trained top (fine-tuned blocks, if any, pooling and head) -> probabilities, two columns for two classes.

The frozen blocks compute in the precision the features were extracted in (`extract.precision`), so the shipped
model gives the probabilities evaluate scored; everything after them is float32, and so is the output.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers

from bottleneck_clf.config import ExtractConfig
from bottleneck_clf.errors import UserError
from bottleneck_clf.features import build_extractor
from bottleneck_clf.images import RESIZE_METHODS

IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)
# Inside the export stage's output folder.
CLASSES_FILE = "classes.json"
CLASSIFIER_FILE = "model.keras"


def vgg_preprocessing() -> layers.Conv2D:
    """keras.applications.vgg16.preprocess_input as a frozen 1x1 convolution (safe to load, no Lambda)."""
    layer = layers.Conv2D(3, 1, name="vgg16_preprocessing", trainable=False)
    layer.build((None, None, None, 3))
    flip = np.zeros((1, 1, 3, 3), np.float32)
    for channel in range(3):
        flip[0, 0, channel, 2 - channel] = 1.0  # input RGB channel c becomes BGR channel 2 - c
    layer.set_weights([flip, -np.asarray(IMAGENET_MEAN_BGR, np.float32)])
    return layer


def two_columns() -> layers.Dense:
    """p -> [1 - p, p]: a sigmoid head's single output as the probabilities of both classes."""
    layer = layers.Dense(2, name="class_probabilities", trainable=False)
    layer.build((None, 1))
    layer.set_weights([np.array([[-1.0, 1.0]], np.float32), np.array([1.0, 0.0], np.float32)])
    return layer


def build_classifier(weights, top: keras.Model, blocks: int, n_classes: int, extract: ExtractConfig) -> keras.Model:
    """Raw images -> class probabilities, with `top` after the frozen VGG16 blocks below the top `blocks`.

    blocks=0: the whole conv base is frozen and `top` is pooling + head. The images are resized as `extract`
    says, and the frozen blocks compute in its precision (bfloat16: Keras' mixed_bfloat16 policy, as in
    extraction); `top` keeps its own float32 layers.
    """
    from bottleneck_clf.finetune import split_layer

    if extract.interpolation not in RESIZE_METHODS:
        raise UserError(f"unknown interpolation {extract.interpolation!r}; valid choices: "
                         f"{', '.join(RESIZE_METHODS)}")
    size = extract.image_size
    inputs = keras.Input(shape=(None, None, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1.0, name="to_float")(inputs)
    x = layers.Resizing(size, size, interpolation=RESIZE_METHODS[extract.interpolation], antialias=True,
                        name="resize")(x)
    x = vgg_preprocessing()(x)
    last_frozen = split_layer(blocks) if blocks else "block5_pool"
    frozen = build_extractor(weights, size, "flatten", extract.precision, output=last_frozen)
    x = frozen(x, training=False)
    x = top(x, training=False)
    if n_classes == 2:
        x = two_columns()(x)
    model = keras.Model(inputs, x, name="bottleneck_classifier")
    model.trainable = False
    return model


def load_top(finetuned: Path, head_file: Path, meta: dict):
    """(top model, conv blocks it holds, what it came from, the extraction settings evaluate scored it with).

    The settings are the fine-tuning recipe's when there is a fine-tuned top (evaluate rebuilds its input from
    them), else those the features were extracted with (`meta`, the features' meta.json).
    """
    from bottleneck_clf.finetune import TOP_FILE, build_top, read_recipe

    if (finetuned / TOP_FILE).exists():
        recipe = read_recipe(finetuned)
        top = keras.saving.load_model(finetuned / TOP_FILE, compile=False)
        return top, recipe["blocks"], "finetuned", ExtractConfig.from_mapping(recipe)
    extract = ExtractConfig.from_mapping(meta["fingerprint"])
    side = extract.image_size // 32
    head = keras.saving.load_model(head_file, compile=False)
    return build_top((side, side, 512), 0, extract.pooling, None, head), 0, "head", extract


def classes_record(classes: list[str], threshold: float, extract: ExtractConfig, source: str) -> dict:
    """classes.json: what predict needs beside the model, and what the model expects and gives."""
    return {
        "classes": classes,
        "input": "uint8 RGB images, shape (batch, height, width, 3), any height and width",
        "output": "class probabilities, shape (batch, number of classes), in the order of `classes`",
        "threshold": threshold,
        "decision": "two classes: the second when its probability reaches `threshold`; more: the most probable",
        "image_size": extract.image_size,
        "interpolation": extract.interpolation,
        "precision": extract.precision,
        "trained": source,
    }
