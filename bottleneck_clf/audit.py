"""The audit over every split: suspected label errors and near-duplicate pairs, as rows, counts and sheets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bottleneck_clf.config import AuditConfig
from bottleneck_clf.gallery import Cell, draw_sheet
from bottleneck_clf.label_issues import LabelIssue, audit_labels
from bottleneck_clf.near_duplicates import Pair, find_pairs

LABEL_FIELDS = ("rank", "path", "split", "given_label", "suggested_label", "label_quality", "p_suggested")
PAIR_FIELDS = ("path_a", "split_a", "path_b", "split_b", "cross_split", "similarity", "phash_distance",
               "by_features", "by_hash", "same_bytes")


@dataclass
class Audit:
    ids: list[str]            # paths relative to the raw folder, one per row of all splits
    splits: list[str]
    labels: np.ndarray
    classes: list[str]
    issues: list[LabelIssue]
    pairs: list[Pair]         # cross-split pairs first, then the most similar
    digests: list[str]
    folds: int | None         # folds used by the label audit; None when it could not run
    not_audited: list[str]    # classes whose single image no head could be trained without


def run_audit(features, labels: np.ndarray, ids: list[str], splits: list[str], hashes: list[str],
              digests: list[str], classes: list[str], audit: AuditConfig, phash_distance: int, seed: int) -> Audit:
    """Label audit and near-duplicate search over the rows of `features` (every split, in one array)."""
    issues, plan = audit_labels(features, labels, len(classes), audit, seed)
    pairs = find_pairs(features, hashes, audit.similarity, phash_distance)
    pairs.sort(key=lambda p: (splits[p.a] == splits[p.b], -p.similarity, p.hash_distance, ids[p.a], ids[p.b]))
    not_audited = [classes[c] for c in plan.skipped_classes] if plan else list(classes)
    return Audit(list(ids), list(splits), labels, classes, issues, pairs, list(digests),
                 plan.folds if plan else None, not_audited)


def label_rows(result: Audit) -> list[tuple]:
    return [(rank, result.ids[i.row], result.splits[i.row], result.classes[i.given], result.classes[i.suggested],
             f"{i.quality:.6f}", f"{i.p_suggested:.6f}") for rank, i in enumerate(result.issues, start=1)]


def pair_rows(result: Audit) -> list[tuple]:
    rows = []
    for p in result.pairs:
        a, b = p.a, p.b
        rows.append((result.ids[a], result.splits[a], result.ids[b], result.splits[b],
                     result.splits[a] != result.splits[b], f"{p.similarity:.6f}", p.hash_distance, p.by_features,
                     p.by_hash, result.digests[a] == result.digests[b]))
    return rows


def metrics(result: Audit) -> dict:
    """Counts for `dvc exp show`: suspects per split, pairs within and across splits (leaks)."""
    split_names = list(dict.fromkeys(result.splits))
    by_split = dict.fromkeys(split_names, 0)
    for issue in result.issues:
        by_split[result.splits[issue.row]] += 1
    across = sum(result.splits[p.a] != result.splits[p.b] for p in result.pairs)
    return {
        "images": len(result.ids),
        "label_issues": {"suspects": len(result.issues), **{f"in_{s}": n for s, n in by_split.items()},
                         "folds": result.folds or 0, "classes_not_audited": len(result.not_audited)},
        "near_duplicates": {
            "pairs": len(result.pairs),
            "within_split": len(result.pairs) - across,
            "across_splits": across,  # leaks: an evaluated image (nearly) seen in training
            "by_features": sum(p.by_features for p in result.pairs),
            "by_hash": sum(p.by_hash for p in result.pairs),
            "same_bytes": sum(result.digests[p.a] == result.digests[p.b] for p in result.pairs),
        },
    }


def draw_sheets(result: Audit, raw: Path, folder: Path, size: int) -> None:
    """label_issues.png (most suspect first) and near_duplicates.png (pairs side by side, leaks first)."""
    cells = [Cell((raw / result.ids[i.row],), (Path(result.ids[i.row]).name,
                                               f"{result.splits[i.row]}: labelled {result.classes[i.given]}",
                                               f"suggested {result.classes[i.suggested]} {i.p_suggested:.3f}"))
             for i in result.issues[:size]]
    draw_sheet(cells, folder / "label_issues.png",
               f"Suspected label errors, most suspect first ({len(cells)} of {len(result.issues)})")
    cells = []
    for p in result.pairs[:size]:
        a, b = result.ids[p.a], result.ids[p.b]
        where = f"{result.splits[p.a]} / {result.splits[p.b]}"
        leak = " LEAK" if result.splits[p.a] != result.splits[p.b] else ""
        cells.append(Cell((raw / a, raw / b), (Path(a).name, Path(b).name, f"{where}{leak}",
                                               f"cosine {p.similarity:.3f}, pHash {p.hash_distance}/64")))
    draw_sheet(cells, folder / "near_duplicates.png",
               f"Near-duplicate pairs, across splits first ({len(cells)} of {len(result.pairs)})", columns=2)
