"""Write a small real image set into data/raw: scikit-learn's bundled 8x8 digits, upscaled to PNG.

A fresh machine may reach only the package registries, so the demo uses data that an installed package
ships. It never touches a data/raw that holds anything but an earlier demo.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from bottleneck_clf.images import list_files

MARKER = ".demo-digits"  # hidden, so prepare ignores it; tells a demo folder from the user's images


def write_digits(raw: Path, per_class: int, size: int) -> int:
    """Save up to `per_class` digits of each class as `<raw>/<digit>/<n>.png`; returns the count."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    written = 0
    for label in range(10):
        folder = raw / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        for n, pixels in enumerate(digits.images[digits.target == label][:per_class]):
            gray = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)
            image = Image.fromarray(gray, "L").resize((size, size), Image.Resampling.BICUBIC)
            image.save(folder / f"{n:03d}.png", optimize=False)
            written += 1
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="target folder (default: paths.raw in dvc.yaml)")
    parser.add_argument("--per-class", type=int, default=40, help="images per digit, at most 170 (default 40)")
    parser.add_argument("--size", type=int, default=64, help="side of the saved PNGs in pixels (default 64)")
    args = parser.parse_args(argv)
    if not 1 <= args.per_class <= 170:
        parser.error("--per-class must be between 1 and 170")
    if args.out is None:
        from bottleneck_clf.paths import project_paths

        args.out = project_paths()["raw"]
    raw: Path = args.out
    if raw.exists() and list_files(raw) and not (raw / MARKER).exists():
        raise SystemExit(
            f"{raw} already holds {len(list_files(raw))} files that are not the demo; the demo never "
            "overwrites your images. Move them away or pass --out to another folder."
        )
    if (raw / MARKER).exists():
        # A new run replaces the old demo wholesale, so --per-class can shrink it.
        for path in list_files(raw):
            (raw / path).unlink()
    raw.mkdir(parents=True, exist_ok=True)
    (raw / MARKER).write_text("written by python -m stages.demo_data\n", encoding="utf-8")
    count = write_digits(raw, args.per_class, args.size)
    print(f"demo_data: wrote {count} digit images (10 classes, {args.size}x{args.size} PNG) into {raw}")


if __name__ == "__main__":
    main()
