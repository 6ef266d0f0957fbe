"""Classify image files with an exported model.

    bottleneck predict MODEL IMAGE_OR_DIR... [--output preds.csv] [--batch-size 32]

MODEL is any file the export stage wrote (README, "Shipping: formats and runtimes"): `model.keras`, the
`saved_model` folder, `model_float32.tflite`, `model_int8.tflite` or `model.onnx`, told apart by extension; the
format used is printed on stderr. Images are decoded and resized the pipeline's way, then run `--batch-size` at a
time. Class names and the decision threshold (`evaluate.threshold`) come from `classes.json` beside it, so the
classes are evaluate's. Folders are searched recursively, skipping hidden and
system files. Prints `path,class,probability` per image (the probability of the class given), or writes them
with every class's probability to --output. A file that cannot be read is reported with the reason and skipped;
the exit status is 1 only when no image at all could be classified.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
from bottleneck_clf.atomic import atomic_path, nearest_existing
from bottleneck_clf.errors import UserError
from bottleneck_clf.export import CLASSES_FILE
from bottleneck_clf.images import BadImage, decode_rgb, list_files
from bottleneck_clf.params import check_threshold
from bottleneck_clf.scoring import predict_labels

DEFAULT_THRESHOLD = 0.5  # for a model exported before classes.json recorded evaluate.threshold
DEFAULT_BATCH_SIZE = 32  # images per runtime call


def find_images(targets: list[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(files to classify, [(path, reason)] for arguments that are neither a file nor a folder)."""
    files, missing = [], []
    for target in map(Path, targets):
        if target.is_dir():
            files.extend(target / relative for relative in list_files(target))
        elif target.is_file():
            files.append(target)
        else:
            missing.append((target, "no such file or folder"))
    return files, missing


def read_info(path: Path) -> dict:
    """classes.json as export wrote it, or one message naming the file."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read it as JSON ({exc}); pass the classes.json written beside the "
                        "exported model") from None
    classes = info.get("classes") if isinstance(info, dict) else None
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        raise UserError(f"{path}: no list of class names under \"classes\"; pass the classes.json written beside "
                        "the exported model")
    return info


def check_output(output: Path) -> None:
    """Before any work: a --output that cannot be written would lose every prediction at the end. Nothing is
    made yet (atomic_path makes the missing folders when the file is written)."""
    if output.is_dir():
        raise UserError(f"--output {output}: is a folder; give the path of a CSV file to write")
    folder = nearest_existing(output.parent)
    if not folder.is_dir():
        raise UserError(f"--output {output}: {folder} is a file, not a folder; give a path in a folder you can "
                        "write to")
    if not os.access(folder, os.W_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise UserError(f"--output {output}: not writable; give a path in a folder you can write to")


def read_classes(model_path: Path, path: Path, info: dict | None, given: bool, n_outputs: int
                 ) -> tuple[list[str], float]:
    """(class names, decision threshold) from `info`, the classes.json at `path` exported with the model (None:
    there is none; `given`: the user named it with --classes)."""
    if info is None:
        if given:
            raise UserError(f"{path}: not found; pass the classes.json written beside the exported model")
        tell(f"predict: {path} not found; naming classes by index, threshold {DEFAULT_THRESHOLD}")
        return [str(i) for i in range(n_outputs)], DEFAULT_THRESHOLD
    classes = info["classes"]
    if len(classes) != n_outputs:
        raise UserError(f"{path}: lists {len(classes)} classes but {model_path} outputs {n_outputs}; "
                         "use the classes.json exported with this model")
    return classes, read_threshold(path, info, len(classes))


def read_threshold(path: Path, info: dict, n_classes: int) -> float:
    if "threshold" not in info:
        # Exported before export recorded evaluate.threshold; 0.5 was the only rule predict knew then.
        tell(f"predict: {path} records no threshold; using {DEFAULT_THRESHOLD} (rerun `dvc repro export` to "
             "record evaluate.threshold)")
        return DEFAULT_THRESHOLD
    threshold = info["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold < 1:
        raise UserError(f"{path}: threshold must be a number in (0, 1), got {threshold!r}; "
                         "rerun `dvc repro export` to write a valid one")
    try:
        return check_threshold(threshold, n_classes)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}, then rerun `dvc repro export`") from None


def resize_settings(runner, info_path: Path, info: dict | None) -> tuple[int, str]:
    """(image size, params.yaml interpolation name) the images are resized with before the runtime sees them."""
    from bottleneck_clf.images import RESIZE_METHODS

    if info is not None and "image_size" in info and "interpolation" in info:
        size, interpolation = info["image_size"], info["interpolation"]
        if size != runner.image_size:
            raise UserError(f"{info_path}: image_size {size}, but the model takes {runner.image_size} px "
                            "images; use the classes.json exported with this model")
        if interpolation not in RESIZE_METHODS:
            raise UserError(f"{info_path}: unknown interpolation {interpolation!r} (valid: "
                            f"{', '.join(RESIZE_METHODS)}); use the classes.json exported with this model")
        return size, interpolation
    if runner.format == "keras":  # the model's own Resizing layer says it
        names = {method: name for name, method in RESIZE_METHODS.items()}
        return runner.image_size, names[runner.interpolation]
    raise UserError(f"{info_path}: needed for a {runner.format} model (its image_size and interpolation say how "
                    "to resize the images); pass the classes.json exported beside it with --classes")


def classify(runner, files: list[Path], image_size: int, interpolation: str, batch_size: int):
    """Yield (path, probabilities or None, error or None) per file, in order; `batch_size` images per call.

    Each image is decoded and resized as the pipeline does (the Resizing layer's op), so every format gets the
    very tensor evaluate's features came from.
    """
    from tqdm import tqdm

    from bottleneck_clf.images import resize

    pending: list[tuple[Path, np.ndarray]] = []

    def flush():
        probs = runner.run(np.stack([image for _, image in pending]))
        yield from ((path, row, None) for (path, _), row in zip(pending, probs, strict=True))
        pending.clear()

    for path in tqdm(files, desc="predict", unit="img", disable=len(files) < 2, file=sys.stderr):
        try:
            image = np.asarray(decode_rgb(path.read_bytes()), dtype=np.uint8)
        except (BadImage, OSError) as exc:
            if pending:
                yield from flush()
            yield path, None, str(exc)
            continue
        pending.append((path, np.asarray(resize(image, image_size, interpolation), np.float32)))
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()


def escaped(text: str) -> str:
    """`text` with the bytes of a file name that is not UTF-8 (surrogate escapes) written as \\xe9 escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def namer(stream):
    """How text naming files goes to `stream`: as it is where the stream writes a name's undecodable bytes as
    those bytes (surrogateescape, bytes_for_odd_names), else with them as \\xe9 escapes. Python's stderr would
    write `\\udce9`; a stream that encodes strictly (pytest's capture) would raise; Jupyter's shows `\\ufffd`
    (or, with an older jupyter_client, its output thread fails)."""
    return str if getattr(stream, "errors", None) == "surrogateescape" else escaped


def tell(text: str) -> None:
    """A line on stderr, file names in it written as namer says."""
    print(namer(sys.stderr)(text), file=sys.stderr)


@contextlib.contextmanager
def bytes_for_odd_names(stream):
    """While classifying, a file name that is not UTF-8 goes to `stream` as the bytes it is, not as a
    UnicodeEncodeError after the whole run; the stream's own setting comes back after. Yields how to write a
    name (namer): as escapes where the stream cannot be reconfigured (a notebook's)."""
    errors = getattr(stream, "errors", None)
    if errors is None or not hasattr(stream, "reconfigure"):
        yield namer(stream)
        return
    stream.reconfigure(errors="surrogateescape")
    try:
        yield namer(stream)
    finally:
        stream.reconfigure(errors=errors)


def classified(runner, files: list[Path], failures: list, classes: list[str], threshold: float, image_size: int,
               interpolation: str, batch_size: int, echo=None) -> list[tuple]:
    """(path, class, its probability, every probability) per readable file; unreadable ones go to `failures`;
    with `echo` (how a name is written: bytes_for_odd_names), each row printed as `path,class,probability` as it
    comes."""
    rows = []
    for path, probs, error in classify(runner, files, image_size, interpolation, batch_size):
        if error is not None:
            failures.append((path, error))
            continue
        best = int(predict_labels(probs[None], threshold)[0])  # evaluate's rule, so labels agree
        rows.append((path, classes[best], probs[best], probs))
        if echo is not None:
            print(f"{echo(str(path))},{classes[best]},{probs[best]:.6f}")
    return rows


def predict(model_path: Path, targets: list[str], output: Path | None = None,
            classes_path: Path | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
    """Classify `targets` (files and folders) with an exported model of any format; the exit status (1: nothing
    classified)."""
    from bottleneck_clf.runtimes import format_of, load_runner

    model_path = Path(model_path)
    output = None if output is None else Path(output)
    classes_path = None if classes_path is None else Path(classes_path)
    # The cheap checks first, so a mistake is told before the model takes seconds to load.
    format_of(model_path)  # a missing file, or one of no known format
    if output is not None:
        check_output(output)
    files, failures = find_images(targets)
    if not files and not failures:
        raise UserError(f"{', '.join(targets)}: no files to classify in there (hidden and system files are "
                        "skipped); pass image files or folders that hold them")
    runner = load_runner(model_path)  # UserError for a missing, unknown or damaged file
    info_path = classes_path or model_path.parent / CLASSES_FILE
    info = read_info(info_path) if info_path.exists() else None  # read once, for the classes and the resizing
    classes, threshold = read_classes(model_path, info_path, info, classes_path is not None, runner.n_outputs)
    image_size, interpolation = resize_settings(runner, info_path, info)
    tell(f"predict: format {runner.format} ({model_path}), batches of {batch_size}")
    with bytes_for_odd_names(sys.stdout) as name:
        rows = classified(runner, files, failures, classes, threshold, image_size, interpolation, batch_size,
                          echo=name if output is None else None)
    if output is not None:
        # surrogateescape: a file name that is not UTF-8 is written as the bytes the file system holds.
        with atomic_path(output) as tmp, open(tmp, "w", newline="", encoding="utf-8",
                                              errors="surrogateescape") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["path", "class", "probability", *[f"p_{c}" for c in classes], "error"])
            for path, name, prob, probs in rows:
                writer.writerow([str(path), name, f"{prob:.6f}", *[f"{p:.6f}" for p in probs], ""])
            for path, error in failures:
                writer.writerow([str(path), "", "", *[""] * len(classes), error])
    for path, error in failures:
        tell(f"predict: {path}: skipped: {error}")
    where = f" -> {output}" if output else ""
    tell(f"predict: {len(rows)} classified, {len(failures)} not readable{where}")
    return 0 if rows else 1

