"""From a folder of labelled images to a manifest: which file, which bytes, which class, which split."""

from __future__ import annotations

import csv
import difflib
import hashlib
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from bottleneck_clf.errors import UserError
from bottleneck_clf.images import BadImage, decode_rgb, list_files

SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.csv"  # inside the prepare stage's output folder
REPORT = "report.json"     # beside it: counts, skipped, excluded, near-duplicates
MANIFEST_FIELDS = ("path", "sha256", "label", "split", "phash")  # phash: near_duplicates.phash of the pixels


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the raw data folder, POSIX separators
    sha256: str
    label: str
    split: str
    phash: str = ""  # 64-bit perceptual hash of the decoded pixels, 16 hex digits


@dataclass(frozen=True)
class Candidate:
    path: str
    label: str
    split: str | None  # given by a pre-split layout, else decided later


def detect_layout(root: Path, layout: str) -> str:
    """'pre_split' when the top folders are train/validation[/test], else 'by_class'."""
    top = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    looks_split = {"train", "validation"} <= top and top <= set(SPLITS)
    if layout == "auto":
        return "pre_split" if looks_split else "by_class"
    if layout == "pre_split" and not looks_split:
        raise UserError(
            f"{root}: prepare.layout is pre_split but the top folders are {sorted(top)}; expected "
            "train/ and validation/ (and optionally test/), each holding one folder per class"
        )
    return layout


def find_candidates(root: str | Path, layout: str) -> tuple[str, list[Candidate]]:
    """(layout used, every non-system file with its class and, for a pre-split layout, its split)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"{root}: raw data folder not found; put one folder per class there (or train/ and validation/ "
            "folders of class folders), or run `bottleneck demo` for a demo set"
        )
    layout = detect_layout(root, layout)
    depth = 3 if layout == "pre_split" else 2
    candidates = []
    for relative in list_files(root):
        parts = relative.parts
        path = root / relative
        if path.is_symlink() and path.is_dir():
            raise UserError(f"{path}: a link to the folder {os.readlink(path)}, and prepare reads only folders "
                            f"that are really there; move or copy that folder to {path} (links to files are fine)")
        if len(parts) != depth and path.is_symlink() and not path.exists():
            # A link to a class folder that moved, say: what to mend is the link, not where a file sits.
            raise UserError(f"{path}: a link to {os.readlink(path)}, which does not exist; remove the link")
        if len(parts) != depth:
            # Loose files beside the class folders carry no label; nested folders are ambiguous.
            raise UserError(
                f"{root / relative}: expected {'<split>/<class>/<file>' if depth == 3 else '<class>/<file>'}; "
                "move the file into a class folder or out of the raw data folder"
            )
        if not is_utf8(relative.as_posix()):
            # The manifest, the labels and every report are UTF-8 text; the name shown as the bytes it is.
            raise UserError(f"{os.fsencode(root / relative)!r}: its name is not UTF-8 text; rename the file or its "
                            "folder")
        split = parts[0] if depth == 3 else None
        candidates.append(Candidate(relative.as_posix(), parts[-2], split))
    return layout, candidates


def is_utf8(name: str) -> bool:
    """False for a file name that the file system gave as bytes Python could not decode (surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_images(root: Path, candidates: list[Candidate], hash_image=None
                 ) -> tuple[list[tuple[Candidate, str]], list[tuple[str, str]], dict[str, str]]:
    """Decode every candidate. Returns (good candidates with sha256, [(path, reason)] for bad ones,
    {sha256: hash_image(decoded pixels)}, empty without `hash_image`)."""
    from tqdm import tqdm

    good, bad, hashes = [], [], {}
    for candidate in tqdm(candidates, desc="prepare: checking images", unit="img", mininterval=1.0):
        path = root / candidate.path
        try:
            data = path.read_bytes()
        except OSError as exc:  # no permission, a file gone since it was listed, an I/O error, a broken link
            link = f"a link to {os.readlink(path)}: " if path.is_symlink() else ""
            bad.append((candidate.path, f"{link}cannot read the file ({exc.strerror})"))
            continue
        try:
            # Decoding the bytes we hashed means the hash always names the pixels we checked.
            image = decode_rgb(data)
        except BadImage as exc:
            bad.append((candidate.path, str(exc)))
            continue
        digest = sha256_bytes(data)
        if hash_image is not None and digest not in hashes:
            hashes[digest] = hash_image(image)
        good.append((candidate, digest))
    return good, bad, hashes


def assign_splits(
    items: list[tuple[Candidate, str]], validation_fraction: float, test_fraction: float, seed: int,
    small_classes: str = "fail", group_of: dict[str, str] | None = None,
) -> list[Entry]:
    """Stratified, seeded split; identical files (same sha256) always land in the same split.

    Classes too small for every split's share are refused (`small_classes="fail"`) or split by the few-shot
    rule (`"few_shot"`, few_shot_splits); the other classes are split exactly as if they were alone.
    `group_of` maps a sha256 to a group key (near-duplicates, prepare.near_duplicates: one_split): the files of
    a group land in one split too. Without it each sha256 is its own group.
    """
    from sklearn.model_selection import train_test_split

    group_of = group_of or {}
    groups: dict[str, str] = {}
    for candidate, digest in items:
        groups.setdefault(group_of.get(digest, digest), candidate.label)
    counts = Counter(groups.values())
    small = {label for label, n in counts.items() if n < split_need(validation_fraction, test_fraction)}
    if small_classes == "fail":
        check_split_sizes(counts, validation_fraction, test_fraction)
    keys = sorted(k for k in groups if groups[k] not in small)
    labels = [groups[k] for k in keys]
    split_of: dict[str, str] = dict.fromkeys(keys, "train")
    if keys:
        rest, rest_labels = keys, labels
        if test_fraction > 0:
            rest, test, rest_labels, _ = train_test_split(
                keys, labels, test_size=test_fraction, stratify=labels, random_state=seed
            )
            split_of.update(dict.fromkeys(test, "test"))
        _, validation = train_test_split(
            rest, test_size=validation_fraction / (1 - test_fraction), stratify=rest_labels, random_state=seed
        )
        split_of.update(dict.fromkeys(validation, "validation"))
    for label in sorted(set(labels)):
        present = {split_of[k] for k, lab in zip(keys, labels, strict=True) if lab == label}
        missing = [s for s in SPLITS if s in ("train", "validation") or test_fraction > 0]
        missing = [s for s in missing if s not in present]
        if missing:
            raise UserError(f"class '{label}': the seeded split left no image in {', '.join(missing)}; "
                             "add images to the class or change the fractions")
    for label in sorted(small):
        split_of.update(few_shot_splits(sorted(k for k in groups if groups[k] == label), test_fraction, seed))
    return [Entry(c.path, digest, c.label, split_of[group_of.get(digest, digest)]) for c, digest in items]


def split_need(validation_fraction: float, test_fraction: float) -> int:
    """Images a class needs so that every split's share of it is at least one image."""
    shares = [f for f in (1 - validation_fraction - test_fraction, validation_fraction, test_fraction) if f > 0]
    return max(math.ceil(1 / f - 1e-9) for f in shares)


def few_shot_splits(keys: list[str], test_fraction: float, seed: int) -> dict[str, str]:
    """The split of a class too small for the fractions: one image to train, then one to test (when there is a
    test split), then one to validation, the rest to train; the images' order is seeded.

    Training comes first so that no class the model can predict is missing from training; test before
    validation so that the reported score covers every class that has two images.
    """
    import random

    order = sorted(keys)
    random.Random(f"{seed}:{','.join(order)}").shuffle(order)
    turns = ["train", *(["test"] if test_fraction > 0 else []), "validation"]
    return {key: turns[i] if i < len(turns) else "train" for i, key in enumerate(order)}


def check_split_sizes(counts: Counter, validation_fraction: float, test_fraction: float,
                      what: str = "distinct image(s)") -> None:
    """Stop before any split when a class cannot give at least one image to every split."""
    fractions = {
        "train": 1 - validation_fraction - test_fraction,
        "validation": validation_fraction,
        "test": test_fraction,
    }
    wanted = {split: f for split, f in fractions.items() if f > 0}
    need = split_need(validation_fraction, test_fraction)
    for label, n in sorted(counts.items()):
        short = [split for split, f in wanted.items() if n * f < 1 - 1e-9]
        if short:
            raise UserError(
                f"class '{label}' has {n} {what}, too few for a {short[0]} share of "
                f"{wanted[short[0]]:g}: with prepare.validation_fraction={validation_fraction} and "
                f"prepare.test_fraction={test_fraction} each class needs at least {need}. Add images to "
                f"'{label}', remove its folder, change the fractions, or set prepare.small_classes: few_shot."
            )


def check_presplit_classes(entries: list[Entry], root: Path) -> None:
    """Every class must have images in every split the layout has; else name the odd folder and the fix.

    A class folder in one split only is most often a typo (`validation/Dogs` beside `train/dogs`), and would
    otherwise become a class the head never trains on, or one that is never validated.
    """
    splits = [s for s in SPLITS if any(e.split == s for e in entries)]
    found: dict[str, set[str]] = defaultdict(set)
    for e in entries:
        found[e.label].add(e.split)
    # The class in the fewest splits first: that is the typo, not the classes that lack it.
    for label in sorted(found, key=lambda k: (len(found[k]), k)):
        missing = [s for s in splits if s not in found[label]]
        if not missing:
            continue
        have = [s for s in splits if s in found[label]]
        like = difflib.get_close_matches(label, [k for k in found if k != label], n=1, cutoff=0.6)
        typo = f" (of '{like[0]}'?)" if like else ""
        raise UserError(
            f"{root / have[0] / label}: class '{label}' has usable images in {', '.join(s + '/' for s in have)} "
            f"but none in {', '.join(s + '/' for s in missing)}; every class needs images in each of "
            f"{', '.join(s + '/' for s in splits)}. Rename the folder if '{label}' is a typo{typo}, add images "
            f"to {root / missing[0] / label}, or remove the class."
        )


def write_manifest(entries: list[Entry], target: Path) -> None:
    from bottleneck_clf.atomic import atomic_path

    with atomic_path(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(MANIFEST_FIELDS)
        for e in sorted(entries, key=lambda e: (SPLITS.index(e.split), e.path)):
            writer.writerow((e.path, e.sha256, e.label, e.split, e.phash))


def read_manifest(path: str | Path) -> list[Entry]:
    path = Path(path)
    if not path.is_file():  # a stage run by hand before prepare
        raise UserError(f"{path}: not found; run the prepare stage first (`dvc repro prepare`, or "
                        "`python -m stages.prepare`)")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != MANIFEST_FIELDS:
            raise UserError(f"{path}: not a manifest (columns {reader.fieldnames}); rerun the prepare stage")
        return [Entry(row["path"], row["sha256"], row["label"], row["split"], row["phash"]) for row in reader]


def class_names(entries: list[Entry]) -> list[str]:
    return sorted({e.label for e in entries})


def counts_by_split(entries: list[Entry]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(class_names(entries), 0))
    for e in entries:
        counts[e.split][e.label] += 1
    return {split: counts[split] for split in SPLITS if split in counts}
