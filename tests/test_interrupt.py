"""kill -9 in the middle of extract_features leaves nothing that passes as complete; the rerun matches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import make_class_folders, update_params

from bottleneck_clf.features import load_split
from stages import extract_features, prepare, weights

pytestmark = pytest.mark.slow


def start_extract(project) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stages.extract_features"], cwd=project,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_extraction_then_rerun(project, tmp_path, monkeypatch):
    make_class_folders(project / "data/raw", per_class=60)
    update_params(project, {"extract": {"image_size": 64, "batch_size": 4}})
    weights.main()
    prepare.main()
    extract_features.main()
    reference = {s: np.array(load_split(project / "data/features", s)[0]) for s in ("train", "validation", "test")}
    old_meta = (project / "data/features/meta.json").read_text()
    # An empty cache, so the killed run really encodes; it leaves a partly filled cache for the rerun.
    monkeypatch.setenv("BOTTLENECK_FEATURE_CACHE", str(tmp_path / "cache-of-the-killed-run"))

    process = start_extract(project)
    deadline = time.monotonic() + 120
    partial = []
    while time.monotonic() < deadline and not partial:
        partial = list((project / "data").glob(".features.tmp-*/train_features.npy"))
        time.sleep(0.05)
    assert partial, "extraction never started writing"
    # Killed as soon as a few images are in the cache: mid-run on a machine of any speed, not after a fixed time.
    cache = tmp_path / "cache-of-the-killed-run"
    while time.monotonic() < deadline and len(list(cache.rglob("*.npy"))) < 8:
        time.sleep(0.02)
    assert process.poll() is None, "extraction finished before it could be killed; give it more work"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    # The interrupted run replaced nothing: the folder still holds the complete earlier result.
    assert (project / "data/features/meta.json").read_text() == old_meta
    (project / "data/features").rename(project / "data/features.before")

    rerun = start_extract(project)
    _, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr
    assert not list((project / "data").glob(".features.tmp-*")), "the rerun left the killed run's leftovers"
    for split, expected in reference.items():
        np.testing.assert_array_equal(load_split(project / "data/features", split)[0], expected)
