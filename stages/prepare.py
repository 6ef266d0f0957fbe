"""Stage `prepare`: check every image in data/raw, split it, and write the manifest and a data report."""

from __future__ import annotations

from pathlib import Path

from bottleneck_clf.atomic import atomic_dir, write_csv, write_json
from bottleneck_clf.config import load_config
from bottleneck_clf.dataset import MANIFEST, REPORT, write_manifest
from bottleneck_clf.exclude import read_exclude_list
from bottleneck_clf.splits import data_report, split_images

SKIPPED = "skipped.csv"
EXCLUDED = "excluded.csv"
MOVED = "moved.csv"


def main() -> None:
    from bottleneck_clf.paths import project_paths

    config = load_config()
    paths = project_paths()
    exclude = read_exclude_list(paths["exclude"], paths["raw"])
    prepared = split_images(paths["raw"], config.prepare, config.base.seed, exclude)
    report = data_report(prepared, config.prepare.near_duplicates)
    with atomic_dir(paths["prepared"]) as tmp:
        write_manifest(prepared.entries, tmp / MANIFEST)
        write_json(tmp / REPORT, report)
        write_csv(tmp / SKIPPED, ("path", "reason"), prepared.bad)
        write_csv(tmp / EXCLUDED, ("path", "reason"), prepared.excluded)
        write_csv(tmp / MOVED, ("path", "from_split", "to_split"), prepared.moved)
    print_report(report, paths["prepared"])
    if prepared.excluded:
        print(f"prepare: left out {len(prepared.excluded)} file(s) listed in {paths['exclude']}; see "
              f"{paths['prepared'] / EXCLUDED}")
    if prepared.unmatched:
        shown = ", ".join(prepared.unmatched[:5]) + (", ..." if len(prepared.unmatched) > 5 else "")
        print(f"prepare: warning: {len(prepared.unmatched)} entr(ies) of {paths['exclude']} match no file under "
              f"{paths['raw']}: {shown}")


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
    near = report["near_duplicates"]
    if near["pairs"]:
        print(f"prepare: {near['pairs']} near-duplicate pair(s) by perceptual hash, {near['pairs_across_splits']} "
              f"across splits (prepare.near_duplicates: {near['setting']}; `dvc repro audit` shows them)")
    if report["moved"]:
        print(f"prepare: moved {report['moved']} file(s) into the split of their (near-)duplicate; see {out / MOVED}")


if __name__ == "__main__":
    from bottleneck_clf.errors import run

    run(main, "prepare")
