"""Stage `prepare`: check every image in data/raw, split it, and write the manifest and a data report."""

from __future__ import annotations

import csv
from pathlib import Path

from bottleneck_clf.atomic import atomic_dir, write_json
from bottleneck_clf.config import load_config
from bottleneck_clf.dataset import MANIFEST, write_manifest
from bottleneck_clf.splits import data_report, split_images

REPORT = "report.json"
SKIPPED = "skipped.csv"


def main() -> None:
    from bottleneck_clf.paths import project_paths

    config = load_config()
    paths = project_paths()
    entries, bad, layout = split_images(paths["raw"], config.prepare, config.base.seed)
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
    for split, missing in report["classes_missing_from"].items():
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            print(f"prepare: {len(missing)} class(es) too small to have an image in {split}: {shown} "
                  "(README, \"Few-shot classes\")")
    if report["duplicate_files"]:
        print(f"prepare: {report['duplicate_files']} duplicate file(s) kept in the same split as their twin")


if __name__ == "__main__":
    from bottleneck_clf.errors import run

    run(main, "prepare")
