"""Fine-tuning the top VGG16 blocks together with the trained head, on cached outputs of the frozen blocks.

The bottleneck idea one level lower: the blocks that stay frozen are run once per image (and cached by content,
like the features), so each epoch only costs the blocks being trained. Augmentation is therefore applied to
the frozen blocks' feature maps by default (finetune.augment: maps): a horizontal flip, a small rotation and
zoom of a map approximate those of the image. finetune.augment: pixels applies them to the images instead and
runs the frozen blocks inside every training step: exact, and about as slow per epoch as extracting the
training images again (README, "Fine-tuning").
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers

from bottleneck_clf.config import ExtractConfig, FinetuneConfig
from bottleneck_clf.errors import UserError
from bottleneck_clf.scoring import accuracy_and_loss
from bottleneck_clf.vgg_weights import VGG16_CONV_LAYERS

BLOCKS = (1, 2, 3, 4)
TOP_NAME = "top"
# finetune.ensemble: the saved model averages two tops on the same maps; evaluate scores each part too.
ENSEMBLE_NAME = "ensemble"
ENSEMBLE_PARTS = {"finetuned": TOP_NAME, "head": "frozen_top"}  # metrics key -> nested model's name
MEAN_NAME = "mean_probabilities"
# Inside the output folders of finetune (the top) and finetune_ensemble (the model evaluate and export use).
TOP_FILE = "model.keras"
RECIPE_FILE = "recipe.json"
DISABLED_FILE = "DISABLED"  # instead of a model when finetune.enabled is false


def split_layer(blocks: int) -> str:
    """The last frozen layer when the top `blocks` conv blocks train."""
    if blocks not in BLOCKS:
        raise UserError(f"finetune.blocks is {blocks!r}; valid choices: {', '.join(map(str, BLOCKS))}")
    return f"block{5 - blocks}_pool"


def map_shape(image_size: int, blocks: int) -> tuple[int, int, int]:
    """Shape of the frozen blocks' output: each block halves the side; block k ends with 64 * 2**(k-1) channels."""
    frozen = 5 - blocks
    side = image_size // 2**frozen
    return (side, side, min(64 * 2 ** (frozen - 1), 512))


def trained_layers(blocks: int) -> list[str]:
    """Conv layers of the top `blocks` blocks, in network order."""
    first = 6 - blocks
    return [name for name, _, _ in VGG16_CONV_LAYERS if int(name[5]) >= first]


def build_top(input_shape: tuple[int, ...], blocks: int, pooling: str, weights, head,
              model_name: str = TOP_NAME) -> keras.Model:
    """The top `blocks` VGG16 blocks (ImageNet weights from `weights`), the extractor's pooling, then `head`.

    With blocks=0 it is pooling + head: what the pipeline runs after the whole frozen conv base.
    """
    inputs = keras.Input(shape=input_shape, name="frozen_maps")
    x = inputs
    for block in range(6 - blocks, 6):
        for name, _, filters in VGG16_CONV_LAYERS:
            if int(name[5]) == block:
                x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=name)(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
    if pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    elif pooling != "flatten":
        raise UserError(f"unknown pooling {pooling!r}; valid choices: flatten, avg, max")
    # A head's batch normalisation keeps the statistics train_head measured (Keras: a BatchNormalization that
    # is not trainable runs in inference mode): updated from batches of augmented maps while the blocks below
    # move, they would lag as they did before head.PreciseBatchNorm (Keras' fine-tuning guide does the same).
    # Nested models too: a head.ensemble average holds each member as a model of its own.
    for layer in batch_norms(head):
        layer.trainable = False
    outputs = head(x)
    model = keras.Model(inputs, outputs, name=model_name)
    for name in trained_layers(blocks) if blocks else []:
        model.get_layer(name).set_weights(list(weights[name]))
    return model


def batch_norms(model):
    """Every BatchNormalization layer in `model`, at any depth of nested models."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            yield layer
        elif hasattr(layer, "layers"):
            yield from batch_norms(layer)


def ensemble_partner(head_refit: bool, finetune_refit: bool) -> str:
    """The project path (paths.py) of the head that finetune.ensemble averages with.

    The saved head ("model": every head.ensemble member averaged, refitted when head.refit), unless it has
    trained on the stop set while the fine-tuned top has not (head.refit without finetune.refit): then the
    average's stop-set figures would not be held out, so it is the head early stopping kept (the first
    member, before any refit), the one fine-tuning starts from.
    """
    return "early_stopped_head" if head_refit and not finetune_refit else "model"


def ensemble_top(finetuned: keras.Model, frozen: keras.Model) -> keras.Model:
    """Maps -> the mean of the fine-tuned top's and the untouched top's probabilities (finetune.ensemble).

    `frozen` is build_top on the ImageNet blocks and a head of train_head's (ensemble_partner), named
    ENSEMBLE_PARTS["head"]: that head's prediction rebuilt on the same maps (exactly so in float32; with
    extract.precision bfloat16 its top blocks run in float32 on bfloat16 maps, about 2e-4 from the head on
    bfloat16 features). Where the two err on different images, averaging can fix some of either's mistakes, at
    the cost of running the trained blocks twice (README, "Fine-tuning": on cats-dogs-small it did not
    measurably).
    """
    inputs = keras.Input(shape=finetuned.input_shape[1:], name="frozen_maps")
    mean = layers.Average(name=MEAN_NAME)([finetuned(inputs), frozen(inputs)])
    return keras.Model(inputs, mean, name=ENSEMBLE_NAME)


def ensemble_parts(top: keras.Model) -> dict[str, keras.Model]:
    """The nested tops of an ensemble by metrics key ({} for a single top)."""
    if top.name != ENSEMBLE_NAME:
        return {}
    return {key: top.get_layer(name) for key, name in ENSEMBLE_PARTS.items()}


def ensemble_outputs(top: keras.Model) -> keras.Model:
    """Maps -> {"ensemble": the saved average, "finetuned": ..., "head": ...}, each part run once: the ensemble's
    own layers (its Average included) wired to give the parts' outputs too."""
    parts = ensemble_parts(top)
    if not parts:
        raise ValueError(f"model {top.name!r} is not an ensemble (finetune.ensemble); it has no parts to score")
    inputs = keras.Input(shape=top.input_shape[1:], name="frozen_maps")
    outputs = {key: part(inputs) for key, part in parts.items()}
    outputs[ENSEMBLE_NAME] = top.get_layer(MEAN_NAME)([outputs[key] for key in ENSEMBLE_PARTS])
    return keras.Model(inputs, outputs, name="ensemble_and_parts")


def part_probabilities(outputs: keras.Model, batches) -> dict[str, np.ndarray]:
    """(N, n_classes) probabilities of each of ensemble_outputs' outputs over an iterable of map batches."""
    from bottleneck_clf.head import as_columns

    chunks = [outputs.predict_on_batch(np.asarray(batch, np.float32)) for batch in batches]
    keys = (ENSEMBLE_NAME, *ENSEMBLE_PARTS)
    if not chunks:  # no images: no rows, as head.probabilities gives
        return {key: as_columns(np.zeros((0, 1))) for key in keys}
    return {key: as_columns(np.concatenate([chunk[key] for chunk in chunks])) for key in keys}


def stop_set_scores(top: keras.Model, stop: tuple, batch_size: int = 32) -> dict:
    """Accuracy and log loss (no smoothing, no L2: the same measure for all three) of an ensemble and of each
    part on the stop set (frozen-block maps, labels, rows): the saved model's figures beside the fine-tuned
    part's."""
    maps, labels, rows = stop
    rows = np.arange(len(labels)) if rows is None else np.asarray(rows)

    def batches():
        for start in range(0, len(rows), batch_size):
            yield np.asarray(maps[rows[start:start + batch_size]], np.float32)

    truth = np.asarray(labels)[rows]
    # Threshold 0.5: the plain most-probable rule, as the stop set's own Keras accuracy counts.
    return {key: accuracy_and_loss(probs, truth, 0.5)
            for key, probs in part_probabilities(ensemble_outputs(top), batches()).items()}


def augmentation(flip: bool, rotation: float, zoom: float, seed: int) -> keras.Sequential:
    """Random flip/rotation/zoom of feature maps; active only in training, identity otherwise."""
    steps = [layers.Identity(name="no_augmentation")]
    if flip:
        steps.append(layers.RandomFlip("horizontal", seed=seed, name="flip"))
    if rotation > 0:
        steps.append(layers.RandomRotation(rotation, fill_mode="reflect", seed=seed + 1, name="rotation"))
    if zoom > 0:
        steps.append(layers.RandomZoom(zoom, fill_mode="reflect", seed=seed + 2, name="zoom"))
    return keras.Sequential(steps, name="augmentation")


def pixel_frozen_blocks(weights, extract: ExtractConfig, blocks: int) -> keras.Model:
    """Resized images (float32, as the features are decoded) -> the frozen blocks' maps, for
    finetune.augment: pixels: VGG16's preprocessing as a layer, then the frozen blocks, none of it trainable."""
    from bottleneck_clf.features import build_extractor, vgg_preprocessing

    size = extract.image_size
    inputs = keras.Input((size, size, 3), name="resized_image")
    frozen = build_extractor(weights, size, "flatten", extract.precision, output=split_layer(blocks))
    model = keras.Model(inputs, frozen(vgg_preprocessing()(inputs), training=False), name="frozen_blocks")
    model.trainable = False
    return model


def finetune(fit: tuple, stop: tuple, top: keras.Model, n_classes: int, config: FinetuneConfig, seed: int,
             callbacks: list | None = None, frozen: keras.Model | None = None) -> tuple[dict, int]:
    """Train `top` on (maps, labels, rows) with augmentation in front; returns (history, kept epoch).

    With `frozen` (pixel_frozen_blocks), `fit` and `stop` hold resized images instead of maps: augmentation
    acts on the pixels and `frozen` makes the maps in every step. `top` itself is trained in place and holds
    the kept epoch's weights afterwards.
    """
    from bottleneck_clf.head import fit_kept

    model = compiled(top, n_classes, config, seed, fit, frozen)
    return fit_kept(model, fit, stop, config, seed, callbacks)


def refit(everything: tuple, top: keras.Model, n_classes: int, config: FinetuneConfig, seed: int, epochs: int,
          frozen: keras.Model | None = None) -> tuple[dict, int]:
    """finetune.refit: train `top` (fresh from the head) on `everything` (head.refit_set: the fitted rows and the
    stop set that chose), for the `epochs` that early stopping chose, with no stop set left to choose by; returns
    (history, images trained on). Same model, optimizer, augmentation and seed as `finetune`; a cosine schedule
    decays over as many steps per epoch as the refit takes."""
    from bottleneck_clf.head import fit_epochs, seed_everything, stop_images

    # Seeded again here: the refit's dropout and shuffling do not depend on how far the first run drew.
    seed_everything(seed)
    model = compiled(top, n_classes, config, seed, everything, frozen)
    return fit_epochs(model, everything, config, seed, epochs), stop_images(everything)


def compiled(top: keras.Model, n_classes: int, config: FinetuneConfig, seed: int, fit: tuple,
             frozen: keras.Model | None) -> keras.Model:
    """Augmentation, the frozen blocks in pixel mode, then `top`, compiled with SGD and the loss."""
    from bottleneck_clf.head import learning_rate_for, loss_for, stop_images

    augment = augmentation(config.flip, config.rotation, config.zoom, seed)
    if frozen is None:
        inputs = keras.Input(shape=top.input_shape[1:], name="frozen_maps")
        maps = augment(inputs)
    else:
        inputs = keras.Input(shape=frozen.input_shape[1:], name="resized_image")
        maps = frozen(augment(inputs), training=False)
    model = keras.Model(inputs, top(maps), name="finetune")
    rate = learning_rate_for(config, stop_images(fit))
    model.compile(optimizer=keras.optimizers.SGD(rate, momentum=config.momentum),
                  loss=loss_for(n_classes, config.label_smoothing), metrics=["accuracy"])
    return model


RECIPE_KEYS = ("image_size", "interpolation", "pooling", "precision", "batch_size")  # recipe.json's order


def recipe(extract: ExtractConfig, blocks: int) -> dict:
    """What a fine-tuned top was trained on; saved beside it so evaluate and export rebuild the same input."""
    return {"blocks": blocks, **{key: getattr(extract, key) for key in RECIPE_KEYS}}


def write_disabled_marker(model_dir: Path) -> None:
    """The model folder of disabled fine-tuning (finetune, finetune_ensemble): a note, no model, so evaluate and
    export use the head."""
    from bottleneck_clf.atomic import atomic_dir

    with atomic_dir(model_dir) as tmp:
        (tmp / DISABLED_FILE).write_text(
            "finetune.enabled is false in params.yaml; evaluate and export use the head.\n")


def read_recipe(finetuned: Path) -> dict:
    import json

    return json.loads((finetuned / RECIPE_FILE).read_text(encoding="utf-8"))


def made_from(files: list[Path]) -> dict[str, str]:
    """{path: sha256} of the files a model was made from, for its recipe (recipe["made_from"]): check_current
    tells from it whether they have changed since."""
    from bottleneck_clf.dataset import sha256_bytes

    return {Path(file).as_posix(): sha256_bytes(Path(file).read_bytes()) for file in files}


def check_current(finetuned: Path, finetune_top: Path) -> None:
    """Refuse a finetuned model (finetune_ensemble's) that is not made from the files as they are now (the
    fine-tuned top, the head and weights it started from, the head it averages with), before evaluate scores it
    or export ships it: that happens only when a stage was run by hand out of order (`dvc repro` never does)."""
    if (finetuned / TOP_FILE).exists():
        recorded = read_recipe(finetuned).get("made_from")
        if recorded is None:
            stale = f"{finetuned} was made by an older version, which did not record what it was made from"
        else:
            changed = [path for path, digest in recorded.items()
                       if not Path(path).is_file() or made_from([Path(path)])[path] != digest]
            if not changed:
                return
            stale = f"{finetuned} was made from {' and '.join(changed)} as they were before (changed or gone since)"
    elif (finetune_top / TOP_FILE).exists():
        stale = f"{finetune_top} holds a fine-tuned top that {finetuned} does not have"
    else:
        return
    # Not only finetune_ensemble: with finetune.enabled changed since finetune ran, finetune must run first.
    raise UserError(f"{stale}: a stage was run by hand out of order. Run `dvc repro`, which runs the stages in "
                    "order (by hand: `python -m stages.finetune` if its inputs changed since it ran, then "
                    "`python -m stages.finetune_ensemble`), then this one again")


class FrozenMaps:
    """Outputs of the frozen blocks for lists of images, each image encoded once per recipe (feature cache)."""

    def __init__(self, weights, extract: ExtractConfig, blocks: int, cache_root: Path, engine=None):
        from bottleneck_clf.feature_cache import FeatureCache
        from bottleneck_clf.features import fingerprint, made_on, model_or_encoder, source_digest
        from bottleneck_clf.vgg_weights import weights_digest

        self.extract = extract
        settings = fingerprint(weights_digest(weights), extract)
        # This class and the helpers it calls choose which layer the maps come from: their code is in the key
        # (not the whole module, so editing the training loop keeps the maps).
        code = source_digest(FrozenMaps, split_layer, map_shape)
        # The maps stop before any pooling, whatever extract.pooling is: "none" in the key.
        self.cache = FeatureCache(cache_root, {**settings, "pooling": "none", "output": split_layer(blocks),
                                               "frozen_maps_code": code, "made_on": made_on(engine)})
        # `engine` as Extractor's: None runs the frozen blocks here, the Ray engine on its cluster.
        self.model, self.encode = model_or_encoder(engine, weights, extract, "flatten", split_layer(blocks))
        self.shape = map_shape(extract.image_size, blocks)

    def compute(self, paths: list[str], digests: list[str], target: Path, desc: str):
        """(memory-mapped maps, encoded, from cache), the maps streamed into the `.npy` file `target`."""
        from bottleneck_clf.features import fill_memmap

        encoded, hit = fill_memmap(target, self.model, paths, digests, shape=self.shape, cache=self.cache,
                                   extract=self.extract, desc=desc, encode=self.encode)
        return np.load(target, mmap_mode="r"), encoded, hit


def split_rows(entries: list, split: str, classes: list[str]) -> tuple[list, np.ndarray]:
    """(manifest rows, class indices) of one split, in manifest order: the order finetune trains and stops in."""
    rows = [e for e in entries if e.split == split]
    return rows, np.array([classes.index(e.label) for e in rows], np.int32)


def split_pixels(entries: list, split: str, raw: Path, classes: list[str], extract: ExtractConfig, scratch: Path):
    """(resized images, labels) of one split for finetune.augment: pixels, memory-mapped from `scratch`."""
    from tqdm import tqdm

    from bottleneck_clf.features import iter_pixels

    rows, labels = split_rows(entries, split, classes)
    size = extract.image_size
    pixels = np.lib.format.open_memmap(scratch / f"{split}-pixels.npy", mode="w+", dtype=np.float32,
                                       shape=(len(rows), size, size, 3))
    start = 0
    with tqdm(total=len(rows), desc=f"decode {split}", unit="img", mininterval=2.0) as bar:
        for batch in iter_pixels([str(raw / e.path) for e in rows], size, extract.interpolation,
                                 extract.batch_size, [e.sha256 for e in rows]):
            pixels[start:start + len(batch)] = batch
            start += len(batch)
            bar.update(len(batch))
    pixels.flush()
    print(f"finetune: {split}: {len(rows)} images decoded; the frozen blocks run in every training step "
          "(finetune.augment: pixels)")
    return pixels, labels


def stop_set_maps(frozen: FrozenMaps, entries: list, raw: Path, classes: list[str], fraction: float, seed: int,
                  scratch: Path) -> tuple[tuple, str]:
    """((maps, labels, None), its name) of the stop set finetune stopped on: the validation split when prepare made
    a test split, else the slice of training that head.stopping_sets picks (the same fraction and seed), and
    only those images through the frozen blocks (from the cache after finetune.augment: maps; with pixels, where
    `frozen`'s engine runs)."""
    from bottleneck_clf.head import stopping_sets

    has_test = any(e.split == "test" for e in entries)
    rows, labels = split_rows(entries, "validation" if has_test else "train", classes)
    _, (_, _, picked), name = stopping_sets((None, labels), (None, labels), has_test, fraction, seed)
    if picked is not None:
        rows, labels = [rows[i] for i in picked], labels[picked]
    maps, _, _ = frozen.compute([str(raw / e.path) for e in rows], [e.sha256 for e in rows], scratch / "stop.npy",
                                desc=f"frozen blocks {name}")
    return (maps, labels, None), name


def split_maps(frozen: FrozenMaps, entries: list, split: str, raw: Path, classes: list[str], scratch: Path):
    """(maps, labels) of one split of the manifest `entries`, the maps memory-mapped from a file in `scratch`.

    Outside FrozenMaps on purpose: that class's source is in the maps' cache key, and this one changes no map.
    """
    rows, labels = split_rows(entries, split, classes)
    maps, encoded, hit = frozen.compute([str(raw / e.path) for e in rows], [e.sha256 for e in rows],
                                        scratch / f"{split}.npy", desc=f"frozen blocks {split}")
    print(f"finetune: {split}: {len(rows)} images, {encoded} through the frozen blocks, {hit} from the cache")
    return maps, labels
