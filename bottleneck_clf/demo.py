"""Write a small real image set into data/raw: scikit-learn's bundled 8x8 digits, upscaled to PNG.

A fresh machine may reach only the package registries, so the demo uses data that an installed package
ships. It never touches a data/raw that holds anything but an earlier demo: it deletes only the files its
marker lists, and only when every file there still has the bytes it wrote.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from bottleneck_clf.atomic import atomic_path, nearest_existing, write_json
from bottleneck_clf.errors import UserError
from bottleneck_clf.images import list_files

# Hidden, so prepare ignores it. JSON: every file the demo wrote, with its sha256, so that a rerun can prove
# a file is its own and unchanged before deleting it.
MARKER = ".demo-digits"
SHOWN = 5  # files named in a refusal; the rest are counted
# The marker's "written_by", kept byte for byte from when the demo was `python -m stages.demo_data`: the marker
# is part of data/raw's hash in dvc.lock, so new text would make every committed demo run look stale.
WRITTEN_BY = "python -m stages.demo_data"
MAX_PER_CLASS = 170  # the fewest digits of any class in scikit-learn's set


def render_digits(per_class: int, size: int) -> dict[str, bytes]:
    """PNG bytes of up to `per_class` digits of each class, keyed by their path `<digit>/<n>.png`."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    files = {}
    for label in range(10):
        for n, pixels in enumerate(digits.images[digits.target == label][:per_class]):
            gray = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)
            image = Image.fromarray(gray, "L").resize((size, size), Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=False)
            files[f"{label}/{n:03d}.png"] = buffer.getvalue()
    return files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_marker(raw: Path) -> dict[str, str]:
    """{path: sha256} of the files an earlier demo wrote; refuses a marker without that list."""
    try:
        files = json.loads((raw / MARKER).read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError):
        files = None
    if not isinstance(files, dict):
        raise UserError(
            f"{raw / MARKER} does not list the files the demo wrote (an older demo made it), so the demo cannot "
            f"tell its images from yours and deletes nothing. If {raw} holds only the demo, delete it and rerun."
        )
    return files


def not_removable(raw: Path, written: dict[str, str]) -> list[str]:
    """Lines naming each visible file under `raw` that is not an unchanged file of the earlier demo."""
    problems = []
    for relative in list_files(raw):
        key = relative.as_posix()
        if key not in written:
            problems.append(f"{raw / relative}: not written by the demo")
        elif sha256((raw / relative).read_bytes()) != written[key]:
            problems.append(f"{raw / relative}: changed since the demo wrote it")
    return problems


def remove_earlier_demo(raw: Path) -> None:
    """Delete the earlier demo's files, all of them or (when any file is not provably its own) none."""
    written = read_marker(raw)
    problems = not_removable(raw, written)
    if problems:
        more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise UserError(
            f"{raw} holds an earlier demo, but {len(problems)} file(s) there are not the demo's own:\n  "
            + "\n  ".join(problems[:SHOWN]) + more + "\n"
            f"Nothing was deleted. Move those files out of {raw} and rerun, or pass --out to another folder."
        )
    for key in written:
        (raw / key).unlink(missing_ok=True)


def write_demo(raw: Path, files: dict[str, bytes]) -> None:
    # The list goes first: a run killed halfway leaves only files that the list vouches for.
    write_json(raw / MARKER, {"written_by": WRITTEN_BY,
                              "files": {key: sha256(data) for key, data in files.items()}})
    for key, data in files.items():
        with atomic_path(raw / key) as tmp:
            tmp.write_bytes(data)


def write_demo_set(raw: Path | None = None, per_class: int = 40, size: int = 64) -> tuple[Path, int]:
    """Write the demo into `raw` (default: paths.raw in dvc.yaml), replacing an earlier demo.

    Returns (the folder, the number of images written).
    """
    if not 1 <= per_class <= MAX_PER_CLASS:
        raise UserError(f"per_class must be between 1 and {MAX_PER_CLASS}, got {per_class}")
    if raw is None:
        from bottleneck_clf.paths import project_paths

        raw = project_paths()["raw"]
    raw = Path(raw)
    existing = nearest_existing(raw)
    if not existing.is_dir():
        raise UserError(f"{raw}: {existing} is a file, not a folder; pass --out a folder to write the demo into")
    if raw.exists() and list_files(raw) and not (raw / MARKER).exists():
        raise UserError(
            f"{raw} already holds {len(list_files(raw))} files that are not the demo; the demo never "
            "overwrites your images. Move them away or pass --out to another folder."
        )
    files = render_digits(per_class, size)
    if (raw / MARKER).exists():
        # A new run replaces the old demo wholesale, so --per-class can shrink it.
        remove_earlier_demo(raw)
    write_demo(raw, files)
    return raw, len(files)
