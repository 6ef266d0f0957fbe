"""Extraction benchmark on real images: every figure of the README's "Speed and memory" table, in one run.

    python bench/extract_bench.py [--data ../shared/data/cats-dogs-small] [--ratio-images 256]

Prints, measured side by side on this machine:
  1. bare `model.predict` img/s on images already decoded into one array, the pipeline's img/s on the same
     JPEG files (decode + resize overlapped with inference), and their ratio;
  2. wall time of a cold `dvc repro` (empty feature cache), of `dvc repro` after adding 10 new images, and of
     `dvc exp run -S head.dropout=0.3`;
  3. float32 vs bfloat16: extraction img/s and validation accuracy;
  4. peak RSS of extract_features at two data sizes.
Takes about 20 minutes on 2 cores. Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from project_copy import copy_project  # noqa: E402


def sh(command: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds, result.stdout


def make_repo(path: Path, images: Path, only_validation: bool = False) -> Path:
    copy_project(path)
    if only_validation:
        # 800 images, split into train/validation by prepare: the same settings on fewer images.
        shutil.copytree(images / "validation", path / "data/raw")
    else:
        shutil.copytree(images, path / "data/raw")
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "bench@example.com"],
                    ["git", "config", "user.name", "bench"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                    ["git", "commit", "-q", "-m", "bench"]):
        subprocess.run(command, cwd=path, check=True, capture_output=True)
    return path


def accuracy(repo: Path) -> float:
    return json.loads((repo / "metrics/eval/metrics.json").read_text())["accuracy"]


def encode_rate(output: str) -> tuple[int, float]:
    match = re.search(r"(\d+) encoded, .*?([\d.]+) img/s", output)
    return (int(match.group(1)), float(match.group(2))) if match else (0, float("nan"))


class PeakRss:
    """Highest resident memory of any process whose command line contains `needle`, sampled every 50 ms."""

    def __init__(self, needle: str):
        self.needle, self.peak, self._stop = needle, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for process in psutil.process_iter(["cmdline", "memory_info"]):
                cmdline = " ".join(process.info["cmdline"] or [])
                if self.needle in cmdline and "extract_bench" not in cmdline and process.info["memory_info"]:
                    self.peak = max(self.peak, process.info["memory_info"].rss)
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def ratio_benchmark(repo: Path, images: list[Path], params: dict) -> tuple[float, float]:
    """(bare predict img/s, pipeline img/s) on the same files, same model, same batch size."""
    import keras

    from bottleneck_clf.config import ExtractConfig
    from bottleneck_clf.features import build_extractor, fill_features
    from bottleneck_clf.images import load_array

    extract = ExtractConfig.from_mapping(params)
    size, batch = extract.image_size, extract.batch_size
    model = build_extractor(repo / "data/weights/vgg16_notop.weights.h5", size, params["pooling"])
    decoded = np.stack([load_array(p, size, params["interpolation"]) for p in images])
    x = keras.applications.vgg16.preprocess_input(decoded.astype(np.float32))
    model.predict(x[:batch], batch_size=batch, verbose=0)  # warm-up: trace and allocate once
    started = time.perf_counter()
    model.predict(x, batch_size=batch, verbose=0)
    bare = len(images) / (time.perf_counter() - started)

    out = np.zeros((len(images), *model.output_shape[1:]), np.float32)
    # Real digests: the pipeline checks each file's bytes against them (duplicates would be encoded once).
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in images]
    fill_features(model, [str(p) for p in images[:batch]], digests[:batch], out[:batch], None, extract)
    started = time.perf_counter()
    fill_features(model, [str(p) for p in images], digests, out, None, extract)
    pipeline = len(images) / (time.perf_counter() - started)
    return bare, pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/cats-dogs-small")
    parser.add_argument("--ratio-images", type=int, default=256)
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        raise SystemExit(f"{args.data}: expected the cats-dogs-small layout (train/, validation/)")
    from bottleneck_clf.params import load_params

    params = load_params(ROOT / "params.yaml")["extract"]
    work = Path(tempfile.mkdtemp(prefix="extract-bench-"))
    env = {**os.environ, "BOTTLENECK_FEATURE_CACHE": str(work / "feature-cache")}
    print(f"bench: {args.data}, image_size {params['image_size']}, pooling {params['pooling']}, "
          f"batch {params['batch_size']}, {os.cpu_count()} CPUs; work folder {work}", flush=True)

    full = make_repo(work / "full", args.data)

    def staged_repro() -> tuple[float, float, str]:
        """(whole repro wall time, extract_features stage wall time, its output), stage by stage."""
        before, _ = sh(["dvc", "repro", "prepare"], full, env)
        extract, out = sh(["dvc", "repro", "extract_features"], full, env)
        after, _ = sh(["dvc", "repro"], full, env)
        return before + extract + after, extract, out

    with PeakRss("stages.extract_features") as rss_full:
        cold, cold_extract, out = staged_repro()
    n_cold, rate32 = encode_rate(out)
    print(f"cold dvc repro: {cold:.1f} s, extract_features {cold_extract:.1f} s ({n_cold} images encoded at "
          f"{rate32:.2f} img/s, float32), validation accuracy {accuracy(full):.4f}", flush=True)
    subprocess.run(["git", "add", "-A"], cwd=full, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "cold run"], cwd=full, check=True)

    # 10 new images: mirror images of existing ones, so new bytes of the same kind.
    for n, source in enumerate(sorted((full / "data/raw/train/cats").iterdir())[:10]):
        with Image.open(source) as image:
            ImageOps.mirror(image).save(full / f"data/raw/train/cats/mirrored-{n}.jpg", quality=90)
    plus10, plus10_extract, out = staged_repro()
    n_plus = encode_rate(out)[0]
    acc32 = accuracy(full)
    extract_line = next((line for line in out.splitlines() if line.startswith("extract_features:")), "")
    print(f"dvc repro after adding 10 images: {plus10:.1f} s, extract_features {plus10_extract:.1f} s "
          f"({n_plus} encoded); validation accuracy {acc32:.4f}\n  {extract_line}", flush=True)
    subprocess.run(["git", "add", "-A"], cwd=full, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "plus 10"], cwd=full, check=True)

    head_only, out = sh(["dvc", "exp", "run", "-S", "head.dropout=0.3"], full, env)
    ran = re.findall(r"Running stage '([^']+)'", out)
    print(f"dvc exp run -S head.dropout=0.3: {head_only:.1f} s (stages run: {', '.join(ran)})", flush=True)

    bf16_time, out = sh(["dvc", "exp", "run", "-S", "extract.precision=bfloat16", "-S", "head.dropout=0.5"],
                        full, env)
    n16, rate16 = encode_rate(out)
    acc16 = accuracy(full)
    print(f"bfloat16: {n16} images encoded at {rate16:.2f} img/s, validation accuracy {acc16:.4f} "
          f"(exp run {bf16_time:.1f} s)", flush=True)

    small = make_repo(work / "small", args.data, only_validation=True)
    with PeakRss("stages.extract_features") as rss_small:
        sh(["dvc", "repro", "extract_features"], small, {**env, "BOTTLENECK_FEATURE_CACHE": str(work / "c2")})
    images = sorted((args.data / "train").rglob("*.jpg"))[: args.ratio_images]
    bare, pipeline = ratio_benchmark(full, images, params)

    summary = [
        "| figure | value |",
        "|---|---|",
        f"| bare `model.predict` on images pre-decoded into one array | {bare:.2f} img/s |",
        f"| pipeline on the same JPEGs (decode + resize overlapped) | {pipeline:.2f} img/s "
        f"(ratio {pipeline / bare:.3f}) |",
        f"| cold `dvc repro`, {n_cold} images, empty feature cache | {cold:.1f} s "
        f"(extract_features {cold_extract:.1f} s) |",
        f"| `dvc repro` after adding 10 images | {plus10:.1f} s (extract_features {plus10_extract:.1f} s = "
        f"{100 * plus10_extract / cold_extract:.1f} % of cold) |",
        f"| `dvc exp run -S head.dropout=0.3` | {head_only:.1f} s |",
        f"| float32 vs bfloat16 extraction | {rate32:.2f} vs {rate16:.2f} img/s ({rate16 / rate32:.2f}x) |",
        f"| validation accuracy, float32 vs bfloat16 (one seed) | {acc32:.4f} vs {acc16:.4f} "
        f"({100 * (acc16 - acc32):+.2f} points) |",
        f"| peak RSS of extract_features | {rss_small.peak / 2**20:.0f} MiB at 800 images, "
        f"{rss_full.peak / 2**20:.0f} MiB at {n_cold} |",
    ]
    print("\n== summary ==\n" + "\n".join(summary))
    from report import write

    write("extract", "Extraction speed, cache and memory (cats-dogs-small, default params)", summary)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
