"""Reproducibility as a checked property: two cold runs agree, and check_repro names what does not."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import dvc, git, update_params, write_image

from stages import check_repro, demo_data

pytestmark = pytest.mark.slow


def committed_demo_run(repo) -> None:
    demo_data.main([])  # the defaults, which check_repro regenerates
    dvc(repo, "repro")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "demo run: dvc.lock and metrics")


def test_two_cold_runs_in_two_clones_are_identical(dvc_repo, tmp_path):
    results = []
    for name in ("first", "second"):
        clone = tmp_path / name
        subprocess.run(["git", "clone", "-q", str(dvc_repo), str(clone)], check=True)
        subprocess.run(["python", "-m", "stages.demo_data"], cwd=clone, check=True, capture_output=True)
        # each clone encodes every image itself: a shared feature cache would hide a difference
        dvc(clone, "repro", env={"BOTTLENECK_FEATURE_CACHE": str(tmp_path / f"{name}-cache")})
        results.append({
            "lock": (clone / "dvc.lock").read_text(),
            "metrics": (clone / "metrics/eval/metrics.json").read_text(),
            "predictions": (clone / "metrics/eval/predictions.csv").read_text(),
        })
    first, second = results
    assert first["lock"] == second["lock"]  # every dependency and output hash, features and model included
    assert first["metrics"] == second["metrics"]
    assert first["predictions"] == second["predictions"]


def test_clean_checkout_passes_and_regenerates_demo(dvc_repo, capsys):
    committed_demo_run(dvc_repo)
    subprocess.run(["rm", "-rf", "data/raw", "data/features", "data/prepared", "data/models"], check=True)
    assert check_repro.main([]) == 0
    out = capsys.readouterr().out
    assert "inputs: regenerated the demo images in data/raw" in out
    assert "check_repro: OK, output hashes and metrics reproduce HEAD (tolerance 0)" in out


def test_param_changed_without_repro(dvc_repo, capsys):
    committed_demo_run(dvc_repo)
    update_params(dvc_repo, {"head": {"dropout": 0.3}})
    assert check_repro.main([]) == 1
    out = capsys.readouterr().out
    assert "stale lock: stage 'train_head': param head.dropout modified (params.yaml)" in out
    assert "check_repro: FAILED" in out


def test_data_changed_without_repro(dvc_repo, capsys):
    committed_demo_run(dvc_repo)
    write_image(dvc_repo / "data/raw/3/000.png", (1, 2, 3), seed=5)
    assert check_repro.main([]) == 1
    out = capsys.readouterr().out
    assert "stale lock: stage 'prepare': dependency data/raw modified" in out
    assert "stale lock: stage 'extract_features': dependency data/raw modified" in out


def test_metric_drift_past_tolerance(dvc_repo, capsys):
    committed_demo_run(dvc_repo)
    # Published numbers that the code does not produce, as once happened to DVC's own Keras example.
    path = dvc_repo / "metrics/eval/metrics.json"
    metrics = json.loads(path.read_text())
    metrics["accuracy"] = round(metrics["accuracy"] - 0.25, 6)
    path.write_text(json.dumps(metrics, indent=4))
    git(dvc_repo, "commit", "-q", "-am", "edit the published accuracy")

    assert check_repro.main(["--tolerance", "0.01"]) == 1
    out = capsys.readouterr().out
    assert "metric drift: metrics/eval/metrics.json: accuracy" in out and "> tolerance 0.01" in out
    assert "check_repro: FAILED, 1 finding(s)" in out  # every output still matches dvc.lock exactly

    assert check_repro.main(["--metrics-only", "--tolerance", "0.3"]) == 0
    assert "check_repro: OK, metrics reproduce HEAD (tolerance 0.3)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"extract_features": [{"changed deps": {"data/prepared": "deleted"}}]}, []),
        ({"prepare": [{"changed outs": {"data/prepared": "deleted"}}]}, []),
        ({"export": [{"changed deps": {"data/prepared/meta.json": "deleted"}}]}, []),
        ({"export": [{"changed deps": {"data/prepared-old/x": "deleted"}}]},
         ["stale lock: stage 'export': dependency data/prepared-old/x deleted"]),
        ({"train_head": ["changed command"]}, ["stale lock: stage 'train_head': command changed since dvc.lock"]),
        ({"prepare": [{"changed deps": {"data/raw": "deleted"}}]},
         ["stale lock: stage 'prepare': dependency data/raw deleted"]),
    ],
)
def test_stale_findings_ignore_outputs_not_yet_built(status, expected):
    assert check_repro.stale_findings(status, {"data/prepared"}) == expected
