"""A sweep through DVC's experiment queue in a real temporary git + DVC repository: two workers, one shared
feature cache, every experiment listed with its params and metrics, no image encoded twice."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest
from conftest import FIRST_RUN_PER_CLASS, dvc, first_run_log, git, template_cache

pytestmark = pytest.mark.slow
IMAGES = 2 * FIRST_RUN_PER_CLASS  # cats and dogs
# Two experiments with a new extract setting, queued first so that the two workers start them together and
# both need the same new features at once (the race the cache's encoding lock is for); then the head grid.
GRID = {
    "bicubic-d01": {"extract.interpolation": "bicubic", "head.dropout": 0.1},
    # A small rate: `-S` writes it as `5e-05`, which the stages must read as a number (YAML 1.2, as DVC does).
    "bicubic-d03": {"extract.interpolation": "bicubic", "head.dropout": 0.3, "head.learning_rate": 0.00005},
    "head-d01-u8": {"head.dropout": 0.1, "head.units": 8},
    "head-d03-u16": {"head.dropout": 0.3, "head.units": 16},
}
TIMEOUT = 1200  # seconds for the whole queue; on 2 busy cores it takes a few minutes


def queue_status(repo) -> dict[str, str]:
    """Experiment name -> Queued / Running / Success / Failed, from `dvc queue status`."""
    out = dvc(repo, "queue", "status").stdout
    return {m[1]: m[2] for m in re.finditer(r"^\S+\s+(\S+)\s+.*?\b(Queued|Running|Success|Failed)\b", out, re.M)}


def wait_for_queue(repo) -> dict[str, str]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        status = queue_status(repo)
        if set(GRID) <= set(status) and not {"Queued", "Running"} & set(status.values()):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"queue not done after {TIMEOUT} s: {status}\n{dvc(repo, 'queue', 'status').stdout}")
        time.sleep(5)


def encoded_by(repo, name: str) -> int:
    """Images the experiment's extract_features encoded (0 when the stage did not run)."""
    log = dvc(repo, "queue", "logs", name).stdout
    return sum(int(n) for n in re.findall(r"extract_features: \d+ images: (\d+) encoded", log))


def experiments(repo) -> dict[str, dict]:
    """Name -> {"rev", "params": params.yaml, "metrics": metrics/eval/metrics.json} from `dvc exp show --json`."""
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    baseline = next(row for row in shown if row["rev"] != "workspace")
    found = {}
    for branch in baseline.get("experiments") or []:
        for run in branch["revs"]:
            data = run["data"]
            found[run.get("name") or data.get("name")] = {
                "rev": run["rev"],
                "params": data["params"]["params.yaml"]["data"],
                "metrics": (data.get("metrics") or {}).get("metrics/eval/metrics.json", {}).get("data"),
            }
    return found


@pytest.mark.timeout(TIMEOUT + 600)  # its own wait for the queue, plus building first_run_template
def test_queued_sweep_shares_the_feature_cache(first_run_template, first_run, feature_cache):
    # The baseline is the session's first run: committed with data/raw (the queue's temporary workspaces are made
    # from the commit), every image encoded into its feature cache, which becomes this test's.
    repo = first_run
    assert f"{IMAGES} encoded" in first_run_log(first_run_template).read_text()
    shutil.copytree(template_cache(first_run_template), feature_cache, dirs_exist_ok=True)
    (baseline_folder,) = [p for p in feature_cache.iterdir() if p.is_dir()]

    for name, changes in GRID.items():
        # Up to evaluate, as bench/accuracy_sweep.py queues them: export and audit change no score.
        dvc(repo, "exp", "run", "--queue", "-n", name, *[a for k, v in changes.items() for a in ("-S", f"{k}={v}")],
            "evaluate")
    started = time.monotonic()
    try:
        dvc(repo, "queue", "start", "-j", "2")
        status = wait_for_queue(repo)
    finally:
        dvc(repo, "queue", "stop", check=False)  # the workers would otherwise idle on for about 10 s
    print(f"queue of {len(GRID)} experiments, 2 workers: {time.monotonic() - started:.0f} s")
    logs = {name: dvc(repo, "queue", "logs", name, check=False).stdout for name in GRID}
    assert {name: status.get(name) for name in GRID} == dict.fromkeys(GRID, "Success"), logs

    shown = experiments(repo)
    for name, changes in GRID.items():
        assert name in shown, sorted(shown)
        params, metrics = shown[name]["params"], shown[name]["metrics"]
        for key, value in changes.items():
            section, field = key.split(".")
            assert params[section][field] == value, (name, key)
        # The experiment's own evaluate output, as its commit holds it.
        assert metrics == json.loads(git(repo, "show", f"{shown[name]['rev']}:metrics/eval/metrics.json").stdout), name

    # Head-only experiments reuse the committed features: extract_features does not even run.
    encoded = {name: encoded_by(repo, name) for name in GRID}
    assert all(encoded[name] == 0 for name in GRID if name.startswith("head-")), encoded
    # The two bicubic experiments ran side by side, in two workspaces, on one cache: each image encoded once.
    assert encoded["bicubic-d01"] + encoded["bicubic-d03"] == IMAGES, encoded

    # The workers saw this test's cache (BOTTLENECK_FEATURE_CACHE is inherited), one entry per distinct image.
    folders = {json.loads((p / "fingerprint.json").read_text())["interpolation"]: p
               for p in feature_cache.iterdir() if p.is_dir()}
    assert set(folders) == {"bilinear", "bicubic"} and folders["bilinear"] == baseline_folder
    for folder in folders.values():
        assert len(list(folder.rglob("*.npy"))) == IMAGES
        assert not list(folder.rglob("*.tmp"))
