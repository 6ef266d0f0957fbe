"""Stage `prepare`: check every image in data/raw, split it, and write the manifest and a data report."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from bottleneck_clf.atomic import atomic_dir, write_json
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
    write_manifest,
)
from bottleneck_clf.params import load_params

MANIFEST = "manifest.csv"
REPORT = "report.json"
SKIPPED = "skipped.csv"


def require_classes(labels: list[str], root: Path, when: str) -> None:
    counts = Counter(labels)
    if len(counts) < 2:
        found = ", ".join(f"'{k}' ({v})" for k, v in sorted(counts.items())) or "none"
        raise ValueError(
            f"{root}: a classifier needs at least two classes of usable images {when}; found {found}. "
            "Put each class in its own folder: data/raw/<class>/<image>."
        )


def prepare(raw: Path, layout: str, validation_fraction: float, test_fraction: float, seed: int,
            on_bad_image: str) -> tuple[list[Entry], list[tuple[str, str]], str]:
    """(manifest entries, [(path, reason)] skipped, layout used) for the images under `raw`."""
    layout, candidates = find_candidates(raw, layout)
    # Fail before decoding anything when the file counts alone already rule the split out.
    require_classes([c.label for c in candidates], raw, "before checking")
    if layout == "by_class":
        check_split_sizes(Counter(c.label for c in candidates), validation_fraction, test_fraction, "file(s)")
    good, bad = check_images(raw, candidates)

    # The same bytes under two labels cannot both be right: report every such file, keep none.
    labels_of: dict[str, set[str]] = {}
    for candidate, digest in good:
        labels_of.setdefault(digest, set()).add(candidate.label)
    conflicted = {d for d, labels in labels_of.items() if len(labels) > 1}
    for candidate, digest in good:
        if digest in conflicted:
            others = sorted(labels_of[digest] - {candidate.label})
            bad.append((candidate.path, f"same bytes also labelled {', '.join(others)} (conflicting labels)"))
    good = [(c, d) for c, d in good if d not in conflicted]

    if bad and on_bad_image == "fail":
        listing = "\n  ".join(f"{raw / p}: {reason}" for p, reason in sorted(bad))
        raise ValueError(
            f"{len(bad)} unusable file(s) and prepare.on_bad_image is 'fail':\n  {listing}\n"
            "Fix or remove them, or set prepare.on_bad_image: skip to leave them out."
        )
    require_classes([c.label for c, _ in good], raw, "after skipping unusable files")

    if layout == "pre_split":
        entries = presplit_entries(good, raw)
    else:
        entries = assign_splits(good, validation_fraction, test_fraction, seed)
    return entries, sorted(bad), layout


def presplit_entries(good, raw: Path) -> list[Entry]:
    """Keep the user's split; identical files in two splits would leak, so all copies join the first split."""
    first: dict[str, str] = {}
    for candidate, digest in sorted(good, key=lambda item: SPLITS.index(item[0].split)):
        first.setdefault(digest, candidate.split)
    for split in ("train", "validation"):
        if split not in first.values():
            raise ValueError(f"the pre-split layout has no usable images in {split}/")
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
    }


def main() -> None:
    from bottleneck_clf.paths import project_paths

    params = load_params()
    settings = params["prepare"]
    paths = project_paths()
    entries, bad, layout = prepare(
        paths["raw"], settings["layout"], settings["validation_fraction"], settings["test_fraction"],
        params["base"]["seed"], settings["on_bad_image"],
    )
    report = data_report(entries, bad, layout)
    with atomic_dir(paths["prepared"]) as tmp:
        write_manifest(entries, tmp / MANIFEST)
        write_json(tmp / REPORT, report)
        with open(tmp / SKIPPED, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(("path", "reason"))
            writer.writerows(bad)
    print_report(report, paths["prepared"])


def print_report(report: dict, out: Path) -> None:
    splits = list(report["counts"])
    width = max(len(c) for c in report["classes"]) + 2
    print(f"prepare: {report['images']} images, {len(report['classes'])} classes, layout {report['layout']}")
    print(" " * width + "".join(f"{s:>12}" for s in splits))
    for label in report["classes"]:
        print(f"{label:<{width}}" + "".join(f"{report['counts'][s][label]:>12}" for s in splits))
    if report["skipped"]:
        print(f"prepare: skipped {report['skipped']} unusable file(s); see {out / SKIPPED}")
    if report["duplicate_files"]:
        print(f"prepare: {report['duplicate_files']} duplicate file(s) kept in the same split as their twin")


if __name__ == "__main__":
    from bottleneck_clf.errors import run

    run(main, "prepare")
