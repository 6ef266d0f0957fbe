"""Reproducibility as a checked property: two cold runs agree, and `bottleneck check-repro` names what does not."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from conftest import commit, copy_repo, dvc, git, repo_template, update_params, write_image

from bottleneck_clf import machine, repro_check
from bottleneck_clf.cli import run_command
from bottleneck_clf.demo import write_demo_set

pytestmark = pytest.mark.slow


def committed_demo_run(repo, env: dict | None = None) -> None:
    write_demo_set(repo / "data/raw")  # the defaults, which check-repro regenerates
    dvc(repo, "repro", env=env)
    commit(repo, "demo run: dvc.lock and metrics")


# A committed demo run costs a whole `dvc repro`; the tests that start from one each get a copy of the same
# repository (git history, DVC cache and all) instead of running it again.
@pytest.fixture(scope="session")
def demo_run_template(tmp_path_factory, tiny_weights):
    return repo_template(tmp_path_factory, tiny_weights, "demo-run", committed_demo_run)


@pytest.fixture(scope="session")
def other_cpu_template(tmp_path_factory, tiny_weights):
    return repo_template(tmp_path_factory, tiny_weights, "other-cpu-run", commit_run_from_other_cpu)


@pytest.fixture
def demo_run_repo(demo_run_template, tmp_path, monkeypatch):
    return copy_repo(demo_run_template, tmp_path, monkeypatch)


@pytest.fixture
def other_cpu_repo(other_cpu_template, tmp_path, monkeypatch):
    return copy_repo(other_cpu_template, tmp_path, monkeypatch)


def test_a_fresh_clone_reruns_cold_and_matches_the_committed_run_exactly(demo_run_template, tmp_path, monkeypatch,
                                                                         capsys):
    """check-repro in a fresh clone, as CI runs it: no outputs, no DVC cache, demo images regenerated, every stage
    rerun with an empty feature cache, against the committed run (itself a cold run with its own cache)."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(demo_run_template), str(clone)], check=True)
    monkeypatch.chdir(clone)
    subprocess.run(["rm", "-rf", "data/raw"], check=True)
    assert run_command(["check-repro"]) == 0
    out = capsys.readouterr().out
    assert "inputs: regenerated the demo images in data/raw" in out
    assert "mode: strict: every stage in dvc.lock was made on this machine's signature" in out
    assert "check-repro: OK, HEAD reproduces: output hashes and metrics exactly" in out
    for name in ("dvc.lock", "metrics/eval/metrics.json", "metrics/eval/predictions.csv"):
        # dvc.lock as rewritten by the rerun: every dependency and output hash, features and model included
        assert (clone / name).read_text() == (demo_run_template / name).read_text(), name


def test_param_changed_without_repro(demo_run_repo, capsys):
    dvc_repo = demo_run_repo
    update_params(dvc_repo, {"head": {"dropout": 0.3}})
    assert run_command(["check-repro"]) == 1
    out = capsys.readouterr().out
    assert "stale lock: stage 'train_head': param head.dropout modified (params.yaml)" in out
    assert "check-repro: FAILED" in out


def test_data_changed_without_repro(demo_run_repo, capsys):
    dvc_repo = demo_run_repo
    write_image(dvc_repo / "data/raw/3/000.png", (1, 2, 3), seed=5)
    assert run_command(["check-repro"]) == 1
    out = capsys.readouterr().out
    assert "stale lock: stage 'prepare': dependency data/raw modified" in out
    assert "stale lock: stage 'extract_features': dependency data/raw modified" in out


def publish_wrong_accuracy(repo) -> None:
    """Commit published numbers that the code does not produce, as once happened to DVC's own Keras example."""
    path = repo / "metrics/eval/metrics.json"
    metrics = json.loads(path.read_text())
    metrics["accuracy"] = round(metrics["accuracy"] - 0.25, 6)
    path.write_text(json.dumps(metrics, indent=4))
    git(repo, "commit", "-q", "-am", "edit the published accuracy")


def test_metric_drift_past_tolerance(demo_run_repo, capsys):
    dvc_repo = demo_run_repo
    publish_wrong_accuracy(dvc_repo)

    assert run_command(["check-repro", "--tolerance", "0.01"]) == 1
    out = capsys.readouterr().out
    assert "metric drift: metrics/eval/metrics.json: accuracy" in out and "> tolerance 0.01" in out
    assert "check-repro: FAILED, 1 finding(s)" in out  # every output still matches dvc.lock exactly

    assert run_command(["check-repro", "--metrics-only", "--tolerance", "0.3"]) == 0
    assert "check-repro: OK, HEAD reproduces: metrics within tolerance (--tolerance 0.3)" in capsys.readouterr().out


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
    assert repro_check.stale_findings(status, {"data/prepared"}) == expected


# The two kinds of machine this project has run on: a Zen 3 with AVX2 only, and a Zen 4 with AVX-512 and
# AVX512-BF16 (or with AVX-512 hidden from the guest, when its flags read as the Zen 3's).
ZEN3 = {"vendor": "AuthenticAMD", "model_name": "AMD EPYC 7B13", "family": "25", "model": "1",
        "flags": ["avx2", "fma"], "cores": 2}
ZEN4 = {"vendor": "AuthenticAMD", "model_name": "AMD EPYC 9B14", "family": "25", "model": "17",
        "flags": ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"], "cores": 2}


def other_cpu() -> dict:
    """A CPU whose kernel flags differ from this machine's, whichever kind runs the tests."""
    return ZEN4 if machine.signature()["cpu"]["flags"] == ZEN3["flags"] else ZEN3


def commit_run_from_other_cpu(repo, env: dict | None = None) -> None:
    """Commit a demo run whose floats really differ from this machine's, recorded as made on another CPU.

    TensorFlow's own (Eigen) kernels on one thread round differently from this machine's default, as another
    CPU's kernels do: TensorFlow uses oneDNN by default only on CPUs with AVX512-VNNI or newer, so on an
    AVX2-only one Eigen is the default and only the thread count moves the bits (2.8e-7 apart, measured). The
    committed records then name a CPU with other kernel flags (other_cpu), as a lock written on one would.
    """
    write_demo_set(repo / "data/raw")
    dvc(repo, "repro", env={**(env or {}), "TF_ENABLE_ONEDNN_OPTS": "0", "TF_NUM_INTRAOP_THREADS": "1"})
    for record in (repo / "metrics/machine").glob("*.json"):
        data = json.loads(record.read_text())
        data["cpu"] = other_cpu()
        record.write_text(json.dumps(data, indent=2) + "\n")
    dvc(repo, "commit", "-f", "-q")  # the records are outputs: dvc.lock takes their new hashes
    commit(repo, "demo run made on another CPU")


def clean_checkout(repo) -> None:
    """Back to the commit, with no outputs of earlier runs, as a fresh clone is."""
    git(repo, "checkout", "-q", "HEAD", "--", ".")
    subprocess.run(["rm", "-rf", "data/raw", "data/features", "data/prepared", "data/models"], cwd=repo, check=True)


def test_lock_from_another_cpu_compares_metrics_and_passes_on_round_off(other_cpu_repo, capsys):
    dvc_repo = other_cpu_repo
    clean_checkout(dvc_repo)

    assert run_command(["check-repro"]) == 0
    out = capsys.readouterr().out
    other = other_cpu()
    made_on = f"{other['model_name']} ({other['vendor']} family {other['family']} model {other['model']})"
    assert f"was made on {made_on}" in out
    assert f"cpu.flags: {other['flags']} -> " in out and ": comparing metrics (tolerances: continuous 0.0001" in out
    assert "check-repro: OK, HEAD reproduces: metrics within tolerance" in out

    # The floats did differ, so the pass above is not vacuous: the rerun's dvc.lock (left in the workspace),
    # compared bit for bit with the committed one as strict mode compares them, differs where VGG16 ran, only there.
    committed = yaml.safe_load(git(dvc_repo, "show", "HEAD:dvc.lock").stdout)
    reproduced = yaml.safe_load((dvc_repo / "dvc.lock").read_text())
    differs = "\n".join(repro_check.hash_findings(committed, reproduced))
    assert "output differs: stage 'extract_features': data/features" in differs
    assert "stage 'prepare'" not in differs and "stage 'weights'" not in differs

    # --strict asks for that comparison whatever the records say (a stale lock stops it before the rerun).
    clean_checkout(dvc_repo)
    update_params(dvc_repo, {"head": {"dropout": 0.3}})
    assert run_command(["check-repro", "--strict"]) == 1
    out = capsys.readouterr().out
    assert "mode: strict (--strict)" in out and "stale lock: stage 'train_head'" in out


def test_real_regressions_fail_when_comparing_metrics(other_cpu_repo, capsys):
    dvc_repo = other_cpu_repo
    publish_wrong_accuracy(dvc_repo)

    assert run_command(["check-repro"]) == 1
    out = capsys.readouterr().out
    assert "comparing metrics" in out
    assert "metric drift: metrics/eval/metrics.json: accuracy" in out and "> share tolerance 0.02" in out
    assert "check-repro: FAILED, 1 finding(s)" in out  # prepare and weights still match their hashes

    clean_checkout(dvc_repo)
    update_params(dvc_repo, {"head": {"dropout": 0.3}})
    with open(dvc_repo / "stages/evaluate.py", "a") as handle:
        handle.write("\n# a code change that no dvc repro followed\n")
    assert run_command(["check-repro"]) == 1
    out = capsys.readouterr().out
    assert "comparing metrics" in out
    assert "stale lock: stage 'train_head': param head.dropout modified (params.yaml)" in out
    assert "stale lock: stage 'evaluate': dependency stages/evaluate.py modified" in out


@pytest.mark.parametrize(
    ("name", "old", "new", "fails"),
    [
        ("loss", 0.1304, 0.1304 * (1 + 8e-7), False),  # round-off, as seen between Zen 3 and Zen 4
        ("loss", 0.1304, 0.1404, True),
        ("roc_auc", 0.9972, 0.99721, False),
        ("accuracy", 0.95, 0.9375, False),  # one image of the demo's 80
        ("accuracy", 0.95, 0.925, True),  # two images
        ("per_class.3.recall", 1.0, 0.75, True),
        ("epochs", 8, 8, False),
        ("epochs", 8, 9, True),
        ("formats.keras.file_bytes", 53488000, 53488003, False),  # zip of the same model's float bytes
        ("formats.keras.file_bytes", 53488000, 60000000, True),
        ("formats.onnx.max_abs_prob_diff", 0.0, 3e-7, False),  # round-off against round-off
        ("formats.onnx.max_abs_prob_diff", 0.0, 0.01, True),
        ("formats.litert_int8.label_agreement", 1.0, 0.9875, False),
    ],
)
def test_metric_tolerances(name, old, new, fails):
    diff = {"metrics/eval/metrics.json": {name: {"old": old, "new": new, "diff": new - old}}}
    assert bool(repro_check.metric_findings(diff, None)) is fails
