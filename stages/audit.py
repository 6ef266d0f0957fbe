"""Stage `audit`: suspected label errors and near-duplicates over every split, for the user to look at."""

from __future__ import annotations

import json

import numpy as np

import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
from bottleneck_clf.atomic import write_csv, write_json
from bottleneck_clf.audit import LABEL_FIELDS, PAIR_FIELDS, draw_sheets, label_rows, metrics, pair_rows, run_audit
from bottleneck_clf.config import load_config
from bottleneck_clf.dataset import MANIFEST, REPORT, read_manifest
from bottleneck_clf.errors import UserError
from bottleneck_clf.features import load_meta, load_split
from bottleneck_clf.head import seed_everything
from bottleneck_clf.machine import record as record_machine
from bottleneck_clf.paths import project_paths


def main() -> None:
    config = load_config()
    paths = project_paths()
    record_machine(paths["machine"], "audit")  # the CPU that made these floats (check-repro)
    seed_everything(config.base.seed)
    meta = load_meta(paths["features"])
    parts = [(split, *load_split(paths["features"], split)) for split in meta["counts"]]
    features = np.concatenate([np.asarray(f) for _, f, _, _ in parts])
    labels = np.concatenate([lab for _, _, lab, _ in parts]).astype(np.int64)
    ids = [str(i) for _, _, _, part_ids in parts for i in part_ids]
    splits = [split for split, _, _, part_ids in parts for _ in part_ids]
    entries = {e.path: e for e in read_manifest(paths["prepared"] / MANIFEST)}
    missing = [i for i in ids if i not in entries]
    if missing:
        raise UserError(f"{paths['features']}: {missing[0]} is not in {paths['prepared'] / MANIFEST}; run "
                        "`dvc repro audit` (not the stage alone) so that the features follow the manifest")
    result = run_audit(features, labels, ids, splits, [entries[i].phash for i in ids],
                       [entries[i].sha256 for i in ids], meta["classes"], config.audit,
                       config.prepare.phash_distance, config.base.seed)
    out = paths["audit_metrics"]
    write_csv(out / "label_issues.csv", LABEL_FIELDS, label_rows(result))
    write_csv(out / "near_duplicates.csv", PAIR_FIELDS, pair_rows(result))
    draw_sheets(result, paths["raw"], out / "plots", config.audit.gallery_size)
    summary = metrics(result)
    # What the exclude list took out before this audit (prepare's report): suspects acted on.
    summary["excluded"] = json.loads((paths["prepared"] / REPORT).read_text(encoding="utf-8")).get("excluded", 0)
    write_json(out / "metrics.json", summary)
    near = summary["near_duplicates"]
    skipped = f"; classes left out (one image): {', '.join(result.not_audited)}" if result.not_audited else ""
    print(f"audit: {summary['images']} images: {summary['label_issues']['suspects']} suspected label error(s) "
          f"({result.folds or 0}-fold{skipped}), {near['pairs']} near-duplicate pair(s), {near['across_splits']} "
          f"across splits -> {out}")


if __name__ == "__main__":
    from bottleneck_clf.errors import run

    run(main, "audit")
