"""float32 vs bfloat16 features: validation accuracy of the head over several seeds, on real images.

    python bench/precision_seeds.py [--data ../shared/data/cats-dogs-small] [--seeds 42 1 2 3 4]

Extracts the features once per precision (through the shared feature cache, so a warm cache makes this
quick), then trains the default head on each with every seed and prints the accuracies side by side: one
seed's difference between the two precisions is within the seed-to-seed spread of either, or it is not.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from extract_bench import make_repo  # noqa: E402

from bottleneck_clf.params import load_params  # noqa: E402

PRECISIONS = ("float32", "bfloat16")


def extract(repo: Path, precision: str) -> Path:
    params_file = repo / "params.yaml"
    params = load_params(params_file)
    params["extract"]["precision"] = precision
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("weights", "prepare", "extract_features"):
        result = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=repo, capture_output=True, text=True,
                                check=False)
        if result.returncode != 0:
            raise SystemExit(f"{stage} failed:\n{result.stderr[-3000:]}")
        if stage == "extract_features":
            print(f"{precision}: {result.stdout.strip().splitlines()[-1]}", flush=True)
    target = repo / f"features-{precision}"
    shutil.move(repo / "data/features", target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/cats-dogs-small")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    args = parser.parse_args()
    from bottleneck_clf.config import HeadConfig
    from bottleneck_clf.features import load_meta, load_split
    from bottleneck_clf.head import probabilities, seed_everything, stopping_sets, train_head
    from bottleneck_clf.scoring import predict_labels

    work = Path(tempfile.mkdtemp(prefix="precision-seeds-"))
    repo = make_repo(work / "repo", args.data)
    head = HeadConfig.from_mapping(load_params(ROOT / "params.yaml")["head"])
    accuracy: dict[str, list[float]] = {}
    for precision in PRECISIONS:
        features = extract(repo, precision)
        n_classes = len(load_meta(features)["classes"])
        train = load_split(features, "train")[:2]
        validation = load_split(features, "validation")[:2]
        accuracy[precision] = []
        for seed in args.seeds:
            seed_everything(seed)
            # Early stopping on a slice of training, as the pipeline does: validation stays unseen.
            fit, stop, _ = stopping_sets(train, validation, False, head.early_stopping_fraction, seed)
            model, _, _ = train_head(fit, stop, n_classes, head, seed)
            predicted = predict_labels(probabilities(model, validation[0]), 0.5)
            accuracy[precision].append(float(np.mean(predicted == validation[1])))
    rows = ["| seed | float32 | bfloat16 | difference |", "|---|---|---|---|"]
    for i, seed in enumerate(args.seeds):
        a, b = (100 * accuracy[p][i] for p in PRECISIONS)
        rows.append(f"| {seed} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    means = {p: 100 * np.mean(v) for p, v in accuracy.items()}
    spreads = {p: 100 * np.std(v, ddof=1) if len(v) > 1 else 0.0 for p, v in accuracy.items()}
    rows.append(f"| mean | {means['float32']:.2f} | {means['bfloat16']:.2f} | "
                f"{means['bfloat16'] - means['float32']:+.2f} |")
    rows.append(f"| std | {spreads['float32']:.2f} | {spreads['bfloat16']:.2f} | |")
    print("\n== validation accuracy (%) by seed ==\n" + "\n".join(rows))
    from report import write

    write("precision_seeds", "float32 vs bfloat16 features: validation accuracy (%) of the head by seed", rows)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
