"""The split rules: which images are usable, which split each goes to, and the leaks they must not open.

Identical bytes are one image: under two labels none is kept, and all copies share one split.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from bottleneck_clf.config import PrepareConfig
from bottleneck_clf.dataset import (
    SPLITS,
    Entry,
    assign_splits,
    check_images,
    check_presplit_classes,
    check_split_sizes,
    class_names,
    counts_by_split,
    find_candidates,
)
from bottleneck_clf.errors import UserError


def require_classes(labels: list[str], root: Path, when: str) -> None:
    counts = Counter(labels)
    if len(counts) < 2:
        found = ", ".join(f"'{k}' ({v})" for k, v in sorted(counts.items())) or "none"
        raise UserError(
            f"{root}: a classifier needs at least two classes of usable images {when}; found {found}. "
            "Put each class in its own folder: data/raw/<class>/<image>."
        )


def split_images(raw: Path, config: PrepareConfig, seed: int) -> tuple[list[Entry], list[tuple[str, str]], str]:
    """(manifest entries, [(path, reason)] skipped, layout used) for the images under `raw`."""
    layout, candidates = find_candidates(raw, config.layout)
    # Fail before decoding anything when the file counts alone already rule the split out.
    require_classes([c.label for c in candidates], raw, "before checking")
    if layout == "by_class" and config.small_classes == "fail":
        check_split_sizes(Counter(c.label for c in candidates), config.validation_fraction, config.test_fraction,
                          "file(s)")
    good, bad = check_images(raw, candidates)
    good = drop_conflicting(good, bad)
    if bad and config.on_bad_image == "fail":
        listing = "\n  ".join(f"{raw / p}: {reason}" for p, reason in sorted(bad))
        raise UserError(
            f"{len(bad)} unusable file(s) and prepare.on_bad_image is 'fail':\n  {listing}\n"
            "Fix or remove them, or set prepare.on_bad_image: skip to leave them out."
        )
    require_classes([c.label for c, _ in good], raw, "after skipping unusable files")

    if layout == "pre_split":
        entries = presplit_entries(good, raw)
    else:
        entries = assign_splits(good, config.validation_fraction, config.test_fraction, seed, config.small_classes)
    return entries, sorted(bad), layout


def drop_conflicting(good: list, bad: list[tuple[str, str]]) -> list:
    """`good` without files whose bytes also carry another label; each of those is appended to `bad`.

    The same bytes under two labels cannot both be right: report every such file, keep none.
    """
    labels_of: dict[str, set[str]] = {}
    for candidate, digest in good:
        labels_of.setdefault(digest, set()).add(candidate.label)
    conflicted = {d for d, labels in labels_of.items() if len(labels) > 1}
    for candidate, digest in good:
        if digest in conflicted:
            others = sorted(labels_of[digest] - {candidate.label})
            bad.append((candidate.path, f"same bytes also labelled {', '.join(others)} (conflicting labels)"))
    return [(c, d) for c, d in good if d not in conflicted]


def presplit_entries(good, raw: Path) -> list[Entry]:
    """Keep the user's split; identical files in two splits would leak, so all copies join the first split."""
    first: dict[str, str] = {}
    for candidate, digest in sorted(good, key=lambda item: SPLITS.index(item[0].split)):
        first.setdefault(digest, candidate.split)
    for split in ("train", "validation"):
        if split not in first.values():
            raise UserError(f"the pre-split layout has no usable images in {split}/")
    entries = [Entry(c.path, d, c.label, first[d]) for c, d in good]
    check_presplit_classes(entries, raw)
    return entries


def data_report(entries: list[Entry], bad: list[tuple[str, str]], layout: str) -> dict:
    duplicates = len(entries) - len({e.sha256 for e in entries})
    return {
        "layout": layout,
        "classes": class_names(entries),
        "images": len(entries),
        "skipped": len(bad),
        "duplicate_files": duplicates,
        "counts": counts_by_split(entries),
        # Classes missing from a split (few-shot rule, README "Few-shot classes"): not scored there.
        "classes_missing_from": {
            split: sorted(set(class_names(entries)) - {e.label for e in entries if e.split == split})
            for split in SPLITS if any(e.split == split for e in entries)
        },
    }
