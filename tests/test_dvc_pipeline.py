"""The pipeline driven by DVC in a real temporary git + DVC repository: what reruns after which change."""

from __future__ import annotations

import json
import re

import pytest
from conftest import dvc, first_run_log, git, update_params, write_image

pytestmark = pytest.mark.slow
ALL_STAGES = {"weights", "prepare", "extract_features", "train_head", "finetune", "finetune_ensemble", "evaluate",
              "export", "audit"}
AFTER_HEAD = {"finetune", "finetune_ensemble", "evaluate", "export"}


def stages_run(out: str) -> set[str]:
    """The stages that `dvc repro` printed as run (not restored or skipped)."""
    return set(re.findall(r"Running stage '([^']+)'", out))


def repro(repo) -> set[str]:
    """Run `dvc repro`; return the stages that actually ran."""
    return stages_run(dvc(repo, "repro").stdout)


def test_reruns_only_what_a_change_touches(first_run_template, first_run):
    # The first run from nothing is the template's (the same tiny project, built once a session).
    assert stages_run(first_run_log(first_run_template).read_text()) == ALL_STAGES
    repo = first_run
    assert repro(repo) == set()
    assert dvc(repo, "status", "-q", check=False).returncode == 0

    update_params(repo, {"head": {"dropout": 0.3}})
    assert dvc(repo, "status", "-q", check=False).returncode == 1
    assert repro(repo) == {"train_head", *AFTER_HEAD}

    update_params(repo, {"evaluate": {"threshold": 0.6}})
    assert repro(repo) == {"evaluate", "export"}  # export records the threshold for predict
    update_params(repo, {"evaluate": {"gallery_size": 2}})
    assert repro(repo) == {"evaluate"}
    update_params(repo, {"evaluate": {"split": "validation"}})  # auto scored test: prepare made one
    assert repro(repo) == {"evaluate", "export"}  # other images scored: export checks every format on them
    assert json.loads((repo / "metrics/eval/metrics.json").read_text())["split"] == "validation"
    update_params(repo, {"audit": {"similarity": 0.99}})
    assert repro(repo) == {"audit"}  # off the path of train_head

    write_image(repo / "data/raw/cats/003.png", (10, 200, 10), seed=77)
    assert repro(repo) == {"prepare", "extract_features", "train_head", *AFTER_HEAD, "audit"}
    (repo / "data/exclude.txt").write_text("cats/003.png  # not a cat\n", encoding="utf-8")
    assert repro(repo) == {"prepare", "extract_features", "train_head", *AFTER_HEAD, "audit"}
    assert "cats/003.png" not in (repo / "data/prepared/manifest.csv").read_text()

    other = repo / "data/weights/user/other.weights.h5"
    import keras

    from bottleneck_clf.vgg_weights import LAYER_NAMES, write_weights_h5

    keras.utils.set_random_seed(1)
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    write_weights_h5({n: tuple(model.get_layer(n).get_weights()) for n in LAYER_NAMES}, other)
    update_params(repo, {"weights": {"source": "data/weights/user/other.weights.h5"}})
    assert repro(repo) == {"weights", "extract_features", "train_head", *AFTER_HEAD, "audit"}
    assert repro(repo) == set()


def test_finetune_switched_on_never_reruns_vgg_stages(first_run):
    repo = first_run
    update_params(repo, {"finetune": {"enabled": True}})
    assert repro(repo) == AFTER_HEAD
    assert json.loads((repo / "metrics/eval/metrics.json").read_text())["model"] == "finetuned"
    assert json.loads((repo / "data/models/classifier/classes.json").read_text())["trained"] == "finetuned"
    update_params(repo, {"evaluate": {"threshold": 0.4, "gallery_size": 2}})
    assert repro(repo) == {"evaluate", "export"}
    update_params(repo, {"finetune": {"zoom": 0.0}})
    assert repro(repo) == AFTER_HEAD


def test_a_change_of_the_saved_head_reruns_the_averaging_not_fine_tuning(first_run):
    """finetune.ensemble averages with the saved head, which head.ensemble and head.refit change; the top it
    averages starts from the early-stopped head, which they leave as it was (the same bytes): so DVC reruns
    finetune_ensemble, seconds, and not finetune's training."""
    repo = first_run
    # head.refit off: the partner is the saved head (with it on, the early-stopped one: ensemble_partner).
    update_params(repo, {"head": {"refit": False}, "finetune": {"enabled": True, "ensemble": True}})
    assert repro(repo) == {"train_head", *AFTER_HEAD}
    top = (repo / "data/models/finetune_top/model.keras").read_bytes()
    averaged = (repo / "data/models/finetuned/model.keras").read_bytes()
    update_params(repo, {"head": {"ensemble": 2}})
    assert repro(repo) == {"train_head", "finetune_ensemble", "evaluate", "export"}
    assert (repo / "data/models/finetune_top/model.keras").read_bytes() == top
    assert (repo / "data/models/finetuned/model.keras").read_bytes() != averaged  # now with two heads averaged
    averaged = (repo / "data/models/finetuned/model.keras").read_bytes()
    update_params(repo, {"head": {"refit": True}})  # the partner becomes the early-stopped head (ensemble_partner)
    assert repro(repo) == {"train_head", "finetune_ensemble", "evaluate", "export"}
    assert (repo / "data/models/finetune_top/model.keras").read_bytes() == top
    assert (repo / "data/models/finetuned/model.keras").read_bytes() != averaged
    update_params(repo, {"finetune": {"ensemble": False}})
    assert repro(repo) == {"finetune_ensemble", "evaluate", "export"}
    assert (repo / "data/models/finetuned/model.keras").read_bytes() == top
    assert json.loads((repo / "metrics/eval/metrics.json").read_text())["model"] == "finetuned"


def test_gallery_is_a_declared_plot(first_run):
    repo = first_run
    gallery = repo / "metrics/eval/plots/misclassified.png"
    assert gallery.read_bytes().startswith(b"\x89PNG")
    shown = dvc(repo, "plots", "show", "--json").stdout
    assert "metrics/eval/plots/misclassified.png" in shown
    assert "metrics/audit/plots/label_issues.png" in shown and "metrics/audit/plots/near_duplicates.png" in shown
    audit = json.loads(dvc(repo, "metrics", "show", "--json").stdout)
    assert "near_duplicates" in json.dumps(audit) and "metrics/audit/metrics.json" in json.dumps(audit)
    update_params(repo, {"evaluate": {"gallery_size": 1}})
    repro(repo)
    diffed = dvc(repo, "plots", "diff", "HEAD", "--json").stdout
    assert diffed.count("misclassified.png") >= 2  # one image per revision: HEAD and the workspace


def test_exp_run_and_show_list_both_runs(first_run):
    repo = first_run
    dvc(repo, "exp", "run", "-S", "head.dropout=0.3", "-n", "dropout-03")
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    # The first row is the workspace; then the baseline commit, which carries its experiments.
    baseline = next(row for row in shown if row["rev"] != "workspace")
    runs = [baseline] + [exp for branch in baseline.get("experiments") or [] for exp in branch["revs"]]
    by_dropout = {}
    for run in runs:
        data = run["data"]
        dropout = data["params"]["params.yaml"]["data"]["head"]["dropout"]
        metrics = data["metrics"]["metrics/eval/metrics.json"]["data"]
        # What the table shows is the file each run committed (the baseline's commit, the experiment's ref).
        assert metrics == json.loads(git(repo, "show", f"{run['rev']}:metrics/eval/metrics.json").stdout), dropout
        by_dropout[dropout] = metrics["accuracy"]
    assert set(by_dropout) == {0.5, 0.3}
    table = dvc(repo, "exp", "show", "--no-pager", "--md").stdout
    assert "dropout-03" in table
