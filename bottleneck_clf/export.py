"""One self-contained `.keras` classifier: uint8 RGB images of any size in, class probabilities out.

Everything the pipeline does between a decoded image and a probability is a standard Keras layer inside the
model (no Lambda, no custom class), so `keras.saving.load_model(path)` loads it in safe mode anywhere:
  uint8 -> float (Rescaling 1.0) -> resize (Resizing, antialiased: the pipeline's own op) -> VGG16
  preprocessing (a fixed 1x1 convolution: RGB -> BGR minus the ImageNet mean) -> frozen VGG16 blocks ->
  trained top (fine-tuned blocks, if any, pooling and head; with finetune.ensemble, that and the untouched top
  side by side, averaged) -> probabilities, two columns for two classes.

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
from bottleneck_clf.features import build_extractor, vgg_preprocessing
from bottleneck_clf.images import RESIZE_METHODS

# Inside the export stage's output folder.
CLASSES_FILE = "classes.json"
CLASSIFIER_FILE = "model.keras"


def two_columns() -> layers.Dense:
    """p -> [1 - p, p]: a sigmoid head's single output as the probabilities of both classes."""
    layer = layers.Dense(2, name="class_probabilities", trainable=False)
    layer.build((None, 1))
    layer.set_weights([np.array([[-1.0, 1.0]], np.float32), np.array([1.0, 0.0], np.float32)])
    return layer


def mirror(size: int) -> keras.Sequential:
    """Images flipped left to right, with standard layers only (safe to load, converts to LiteRT and ONNX): the
    width axis moved last and multiplied by the exchange matrix, which is exact (each output is one input
    times 1.0 plus zeros)."""
    dense = layers.Dense(size, use_bias=False, name="exchange", trainable=False)
    dense.build((None, size))
    dense.set_weights([np.eye(size, dtype=np.float32)[::-1]])
    return keras.Sequential([keras.Input((size, size, 3)), layers.Permute((1, 3, 2), name="width_last"), dense,
                             layers.Permute((1, 3, 2), name="width_back")], name="mirror")


def flip_tta_base(frozen: keras.Model, size: int, pooling: str, flip_tta: str) -> keras.Model:
    """The frozen conv base on an image and on its mirror, pooled as extraction pools, combined as
    features.combine_flips does: preprocessed images in, the head's input out."""
    inputs = keras.Input((size, size, 3), name="preprocessed")
    pools = {"avg": layers.GlobalAveragePooling2D, "max": layers.GlobalMaxPooling2D,
             "flatten": lambda name: layers.Identity(name=name)}
    both = [pools[pooling](name=f"{name}_pool")(frozen(x, training=False))
            for name, x in (("plain", inputs), ("mirrored", mirror(size)(inputs)))]
    combined = layers.Average(name="flip_average")(both) if flip_tta == "average" else \
        layers.Concatenate(axis=-1, name="flip_stack")(both)
    return keras.Model(inputs, combined, name="vgg16_flip_tta")


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
    if extract.flip_tta != "none":  # the features were of each image and its mirror; `top` is the head alone
        frozen = flip_tta_base(frozen, size, extract.pooling, extract.flip_tta)
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
    from bottleneck_clf.finetune import ENSEMBLE_NAME, TOP_FILE, build_top, read_recipe

    if (finetuned / TOP_FILE).exists():
        recipe = read_recipe(finetuned)
        top = keras.saving.load_model(finetuned / TOP_FILE, compile=False)
        source = "ensemble" if top.name == ENSEMBLE_NAME else "finetuned"  # evaluate's name for the model
        return top, recipe["blocks"], source, ExtractConfig.from_mapping(recipe)
    extract = ExtractConfig.from_mapping({**meta["fingerprint"], "flip_tta": meta.get("flip_tta", "none")})
    side = extract.image_size // 32
    head = keras.saving.load_model(head_file, compile=False)
    if extract.flip_tta != "none":  # pooled and combined in build_classifier, before the head
        return head, 0, "head", extract
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
