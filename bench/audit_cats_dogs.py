"""The audit on a real data set, and the validation accuracy with and without the training files it suspects.

    python bench/audit_cats_dogs.py [--data ../shared/data/cats-dogs-small] [--top 20]

In a temporary copy of the project with the data as data/raw (pre-split train/ + validation/):
  1. `dvc repro`: the baseline model, scored on validation, and the audit over both splits;
  2. the training-split suspects (label errors) and the training side of every cross-split near-duplicate
     pair go into data/exclude.txt; validation is left as it is, so both runs are scored on the same files;
  3. `dvc repro` again: the model trained without them.
Prints and writes bench/results/audit-cats-dogs.md: the audit's counts, the accuracy of both runs on all
validation files with 95 % intervals, the same on validation without its own suspects (reported apart, not
dropped), and the images on which exactly one run is right. The top suspects and pairs are copied beside the
results (label_issues.csv, near_duplicates.csv and the two galleries) for a person to look at: how many of the
top N are real is a judgement, filled in by hand.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def repro(repo: Path) -> None:
    result = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True, check=False,
                            env={**os.environ})
    if result.returncode != 0:
        raise SystemExit(f"dvc repro failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def scored(predictions: list[dict], leave_out: set[str] = frozenset()) -> tuple[int, int]:
    rows = [r for r in predictions if r["path"] not in leave_out]
    return sum(r["actual"] == r["predicted"] for r in rows), len(rows)


def describe(right: int, total: int) -> str:
    from bottleneck_clf.scoring import wilson_interval

    low, high = wilson_interval(right, total)
    return f"{right / total:.4f} ({right}/{total}; 95 % {low:.4f}-{high:.4f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/cats-dogs-small")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--keep", type=Path, help="build the repo here and keep it (default: a temp folder)")
    args = parser.parse_args()
    import report
    from extract_bench import make_repo

    results = report.RESULTS / "audit-cats-dogs"
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        repo = make_repo(args.keep or Path(tmp) / "repo", args.data.resolve())
        repro(repo)
        audit = repo / "metrics/audit"
        counts = json.loads((audit / "metrics.json").read_text())
        suspects = read_csv(audit / "label_issues.csv")
        pairs = read_csv(audit / "near_duplicates.csv")
        before = read_csv(repo / "metrics/eval/predictions.csv")
        results.mkdir(parents=True, exist_ok=True)
        for name in ("label_issues.csv", "near_duplicates.csv", "plots/label_issues.png",
                     "plots/near_duplicates.png"):
            shutil.copy2(audit / name, results / Path(name).name)

        leave = {r["path"]: f"audit: labelled {r['given_label']}, suggested {r['suggested_label']}"
                 for r in suspects if r["split"] == "train"}
        for p in pairs:
            if p["cross_split"] == "True":
                side = "a" if p["split_a"] == "train" else "b"
                if p[f"split_{side}"] == "train":
                    leave.setdefault(p[f"path_{side}"], "audit: near-duplicate of a validation image")
        (repo / "data/exclude.txt").write_text("".join(f"{p}  # {why}\n" for p, why in sorted(leave.items())),
                                               encoding="utf-8")
        repro(repo)
        after = read_csv(repo / "metrics/eval/predictions.csv")

    assert [r["path"] for r in before] == [r["path"] for r in after], "both runs must score the same files"
    validation_suspects = {r["path"] for r in suspects if r["split"] == "validation"}
    one_right = sum((a["actual"] == a["predicted"]) != (b["actual"] == b["predicted"])
                    for a, b in zip(before, after, strict=True))
    body = [
        f"Data: `{args.data}`; default params; audit over both splits.",
        "",
        f"- suspected label errors: {counts['label_issues']['suspects']} "
        f"({counts['label_issues'].get('in_train', 0)} in train, "
        f"{counts['label_issues'].get('in_validation', 0)} in validation)",
        f"- near-duplicate pairs: {counts['near_duplicates']['pairs']} "
        f"({counts['near_duplicates']['within_split']} within a split, "
        f"{counts['near_duplicates']['across_splits']} across splits; {counts['near_duplicates']['by_features']} "
        f"by features, {counts['near_duplicates']['by_hash']} by pHash, {counts['near_duplicates']['same_bytes']} "
        "identical bytes)",
        f"- of the top {args.top} suspects, real label errors when looked at: (fill in by hand, from "
        "audit-cats-dogs/label_issues.png, written here but not committed: it shows the data's photos)",
        f"- of the top {args.top} pairs, real near-duplicates when looked at: (fill in by hand, from "
        "audit-cats-dogs/near_duplicates.png, written here but not committed: it shows the data's photos)",
        "",
        f"Retrained without {len(leave)} training file(s) (the training suspects and the training side of each "
        "cross-split pair); both runs scored on the same validation files:",
        "",
        "| validation files | with every training file | without the excluded ones |",
        "|---|---|---|",
        f"| all ({len(before)}) | {describe(*scored(before))} | {describe(*scored(after))} |",
        f"| without its {len(validation_suspects)} own suspects | {describe(*scored(before, validation_suspects))} "
        f"| {describe(*scored(after, validation_suspects))} |",
        "",
        f"Images on which exactly one of the two runs is right: {one_right}. A difference smaller than the "
        "intervals' half-width is no measurable difference (README, 'Which numbers to believe').",
    ]
    for line in body:
        print(line)
    report.write("audit-cats-dogs", "Audit on cats-dogs-small: suspects, near-duplicates, accuracy without them",
                 body)


if __name__ == "__main__":
    main()
