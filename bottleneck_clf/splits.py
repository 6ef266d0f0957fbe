"""The split rules: which images are usable, which split each goes to, and the leaks they must not open.

Identical bytes are one image: under two labels none is kept, and all copies share one split. Files in the
exclude list are left out before anything is decoded. Near-duplicates (perceptual hashes within
prepare.phash_distance) are counted, and with prepare.near_duplicates: one_split share a split as copies do.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
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
from bottleneck_clf.exclude import apply_exclude_list
from bottleneck_clf.near_duplicates import groups, hash_pairs, phash


def require_classes(labels: list[str], root: Path, when: str) -> None:
    counts = Counter(labels)
    if len(counts) < 2:
        found = ", ".join(f"'{k}' ({v})" for k, v in sorted(counts.items())) or "none"
        raise UserError(
            f"{root}: a classifier needs at least two classes of usable images {when}; found {found}. "
            "Put each class in its own folder: data/raw/<class>/<image>."
        )


@dataclass
class Prepared:
    entries: list[Entry]
    bad: list[tuple[str, str]]                 # (path, reason) unusable, skipped
    layout: str
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) left out by the exclude list
    unmatched: list[str] = field(default_factory=list)  # exclude-list entries that name no file
    moved: list[tuple[str, str, str]] = field(default_factory=list)  # (path, from split, to split)
    near_pairs: list[tuple[str, str]] = field(default_factory=list)  # (path, path) near-duplicates, distinct bytes


def split_images(raw: Path, config: PrepareConfig, seed: int, exclude: dict[str, str] | None = None) -> Prepared:
    """The manifest entries and what was skipped, excluded, moved for the images under `raw`.

    `exclude`: {path relative to raw: reason} (exclude.read_exclude_list).
    """
    layout, candidates = find_candidates(raw, config.layout)
    candidates, excluded, unmatched = apply_exclude_list(candidates, exclude or {})
    # Fail before decoding anything when the file counts alone already rule the split out.
    require_classes([c.label for c in candidates], raw, "before checking")
    if layout == "by_class" and config.small_classes == "fail":
        check_split_sizes(Counter(c.label for c in candidates), config.validation_fraction, config.test_fraction,
                          "file(s)")
    good, bad, hashes = check_images(raw, candidates, hash_image=phash)
    good = drop_conflicting(good, bad)
    if bad and config.on_bad_image == "fail":
        listing = "\n  ".join(f"{raw / p}: {reason}" for p, reason in sorted(bad))
        raise UserError(
            f"{len(bad)} unusable file(s) and prepare.on_bad_image is 'fail':\n  {listing}\n"
            "Fix or remove them, or set prepare.on_bad_image: skip to leave them out."
        )
    require_classes([c.label for c, _ in good], raw, "after skipping unusable files")

    digests = sorted({d for _, d in good})
    first, second, _ = hash_pairs([hashes[d] for d in digests], config.phash_distance)
    group_of = None
    if config.near_duplicates == "one_split":
        roots = groups(len(digests), zip(first.tolist(), second.tolist(), strict=True))
        group_of = {d: digests[r] for d, r in zip(digests, roots, strict=True)}
    if layout == "pre_split":
        entries = presplit_entries(good, raw, group_of)
    else:
        entries = assign_splits(good, config.validation_fraction, config.test_fraction, seed,
                                config.small_classes, group_of)
    entries = [replace(e, phash=hashes[e.sha256]) for e in entries]
    given = {c.path: c.split for c, _ in good}
    moved = [(e.path, given[e.path], e.split) for e in entries if given[e.path] and given[e.path] != e.split]
    paths_of: dict[str, list[str]] = {}
    for e in entries:
        paths_of.setdefault(e.sha256, []).append(e.path)
    near_pairs = sorted((a, b) for i, j in zip(first.tolist(), second.tolist(), strict=True)
                        for a in paths_of[digests[i]] for b in paths_of[digests[j]])
    return Prepared(entries, sorted(bad), layout, excluded, unmatched, sorted(moved), near_pairs)


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


def presplit_entries(good, raw: Path, group_of: dict[str, str] | None = None) -> list[Entry]:
    """Keep the user's split; identical files in two splits would leak, so all copies join the first split.

    `group_of` (sha256 -> group key): near-duplicates, whose files join their group's first split too.
    """
    group_of = group_of or {}
    first: dict[str, str] = {}
    for candidate, digest in sorted(good, key=lambda item: SPLITS.index(item[0].split)):
        first.setdefault(group_of.get(digest, digest), candidate.split)
    for split in ("train", "validation"):
        if split not in first.values():
            raise UserError(f"the pre-split layout has no usable images in {split}/")
    entries = [Entry(c.path, d, c.label, first[group_of.get(d, d)]) for c, d in good]
    check_presplit_classes(entries, raw)
    return entries


def data_report(prepared: Prepared, near_duplicates: str) -> dict:
    entries = prepared.entries
    duplicates = len(entries) - len({e.sha256 for e in entries})
    split_of = {e.path: e.split for e in entries}
    return {
        "layout": prepared.layout,
        "classes": class_names(entries),
        "images": len(entries),
        "skipped": len(prepared.bad),
        "excluded": len(prepared.excluded),
        "duplicate_files": duplicates,
        "near_duplicates": {
            "setting": near_duplicates,
            "pairs": len(prepared.near_pairs),
            "pairs_across_splits": sum(split_of[a] != split_of[b] for a, b in prepared.near_pairs),
        },
        # pre_split layout: files put in another split than their folder's, to join their (near-)duplicate
        "moved": len(prepared.moved),
        "counts": counts_by_split(entries),
        # Classes missing from a split (few-shot rule, README "Few-shot classes"): not scored there.
        "classes_missing_from": {
            split: sorted(set(class_names(entries)) - {e.label for e in entries if e.split == split})
            for split in SPLITS if any(e.split == split for e in entries)
        },
    }
