"""bench/accuracy_sweep.py's table without listed images (the labels an audit found wrong), on real lists."""

import copy
import importlib.util
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

from bottleneck_clf.exclude import read_exclude_list
from bottleneck_clf.params import check_params


@pytest.fixture(scope="module")
def sweep():
    """The bench script as a module; the paths it puts on sys.path are taken off again."""
    saved = list(sys.path)
    spec = importlib.util.spec_from_file_location("accuracy_sweep", ROOT / "bench/accuracy_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.path[:] = saved
    return module


def test_every_row_runs_on_todays_params(sweep):
    """Each row's `-S` overrides, applied to params.yaml as it is now, pass the stages' own check: a sweep rerun
    today fails no row for a key that was renamed or a pair that a later default ruled out."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    for group, rows in sweep.LEVERS.items():
        for name, overrides in rows:
            changed = copy.deepcopy(params)
            for override in overrides:
                key, value = override.split("=", 1)
                section, field = key.split(".")
                assert field in changed[section], f"{group}: {name}: {key} is not in params.yaml"
                changed[section][field] = yaml.safe_load(value)
            check_params(changed, f"{group}: {name}")


def scored(wrong: set[int], images: range = range(10)) -> dict[str, bool]:
    return {f"validation/c/{i}.jpg": i not in wrong for i in images}


def body(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("| ") and not line.startswith("| lever |")]


@pytest.fixture
def listed(tmp_path):
    path = tmp_path / "errors.txt"
    path.write_text("# wrong labels\nvalidation/c/0.jpg  # mislabelled\nvalidation/c/1.jpg\n"
                    "validation/c/99.jpg  # not scored\n")
    return read_exclude_list(path, tmp_path)


def test_each_row_is_scored_on_the_images_the_list_leaves(sweep, listed):
    baseline = {"right": scored({0, 1, 5})}          # 7/10; both listed wrong; 7/8 on the rest
    row = {"right": scored({0, 5, 6})}               # 7/10; one listed wrong; 6/8 on the rest
    lines = sweep.without_table(baseline, [("lever a", ["x=1"], row, 12.0), ("lever b", ["y=1"], None, None)],
                                listed, "errors.txt")
    assert lines[0].startswith("Without the 2 scored image(s) listed in `errors.txt` (1 listed path(s) are not "
                               "among the default's scored images): reported apart, not instead.")
    assert body(lines) == ["| default (params.yaml) | 87.50% | 52.91%-97.76% | 8 | 2 of 2 |",
                           "| lever a | 75.00% | 40.93%-92.85% | 8 | 1 of 2 |"]  # lever b failed: no row


def test_a_row_on_other_images_counts_only_the_listed_images_it_scored(sweep, listed):
    baseline = {"right": scored({0})}
    other = {"right": scored({3}, images=range(1, 9))}   # a moved split: image 0 not scored, 1 scored and right
    lines = sweep.without_table(baseline, [("seed 7", ["base.seed=7"], other, None)], listed, "errors.txt")
    assert body(lines)[1] == "| seed 7 | 85.71% | 48.69%-97.43% | 7 | 0 of 1 |"


def test_a_row_with_every_image_listed_has_nothing_left_to_score(sweep, listed):
    baseline = {"right": scored({0}, images=range(2))}
    assert body(sweep.without_table(baseline, [], listed, "errors.txt")) == [
        "| default (params.yaml) | no images left | - | 0 | 1 of 2 |"]


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"),
    ("/abs/cat.1.jpg\n", "line 1: '/abs/cat.1.jpg' must be a path inside"),
])
def test_a_bad_list_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "errors.txt"
    if content is not None:
        path.write_text(content)
    result = subprocess.run([sys.executable, str(ROOT / "bench/accuracy_sweep.py"), "--report-only", "--keep",
                             str(tmp_path), "--without", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "--without" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


def test_an_ensemble_row_lists_each_part_paired_with_the_average(sweep):
    """finetune.ensemble rows: each part from evaluate's `parts`, with the exact McNemar test against the average;
    rows without parts (or a failed row) add nothing, and parts from before the paired counts show a dash."""
    def part(accuracy, **paired):
        return {"accuracy": accuracy, "accuracy_ci95": {"low": 0.9, "high": 0.99}, "loss": 0.05, **paired}

    ensemble = {"parts": {"finetuned": part(0.95, only_average_right=4, only_part_right=0),
                          "head": part(0.96, only_average_right=3, only_part_right=2)}}
    older = {"parts": {"head": part(0.97)}}
    lines = sweep.parts_table([("averaged", [], ensemble, 1.0), ("plain", [], {"parts": None}, 1.0),
                               ("failed", [], None, None), ("older", [], older, None)])
    assert body(lines) == ["| averaged | finetuned | 95.00% | 90.00%-99.00% | 0.0500 | 4 / 0, p = 0.12 |",
                           "| averaged | head | 96.00% | 90.00%-99.00% | 0.0500 | 3 / 2, p = 1 |",
                           "| older | head | 97.00% | 90.00%-99.00% | 0.0500 | - |"]
    assert sweep.paired(0, 0) == "0 / 0, p = 1" and sweep.paired(10, 0) == "10 / 0, p = 0.002"


def test_a_row_is_paired_with_its_twin_when_the_sweep_scored_it(sweep):
    """A lever under another seed is paired with the default under that seed, named in the cell; without its twin
    (failed, or cut by --rows) with the default; a failed row gets nothing."""
    baseline = {"right": scored({0, 1, 2})}
    rows = {"seed 7: default": {"right": scored({3})}, "seed 7: lever": {"right": scored({3, 4, 5})},
            "seed 3: lever": {"right": scored({0, 1})}, "failed": None}
    twins = {"seed 7: lever": "seed 7: default", "seed 3: lever": "seed 3: default"}
    sweep.pair_rows(baseline, rows, twins)
    assert rows["seed 7: default"]["paired"] == "3 / 1, p = 0.62"
    assert rows["seed 7: lever"]["paired"] == "0 / 2, p = 0.5 (against seed 7: default)"
    assert rows["seed 3: lever"]["paired"] == "1 / 0, p = 1"  # its twin was not scored: the default
    assert rows["failed"] is None
    assert set(sweep.TWINS) <= {name for group in sweep.LEVERS.values() for name, _settings in group}
    assert set(sweep.TWINS.values()) <= {name for group in sweep.LEVERS.values() for name, _settings in group}


def test_a_twin_rows_difference_is_against_its_twin_not_the_default(sweep):
    """The "vs default (or twin)" cell compares a twin row with the row it is paired with, whose interval decides
    "no difference"; other rows are compared with the default."""
    def row(accuracy, low, high):
        return {"accuracy": accuracy, "low": low, "high": high, "loss": 0.1, "right": scored(set())}

    baseline = row(0.50, 0.45, 0.55)
    rows = {"seed 3: default": row(0.40, 0.35, 0.45), "seed 3: lever": row(0.48, 0.43, 0.53),
            "other lever": row(0.48, 0.43, 0.53)}
    sweep.pair_rows(baseline, rows, {"seed 3: lever": "seed 3: default"})
    cells = {line.split(" | ")[0][2:]: line.split(" | ")[6] for line in
             body(sweep.table(baseline, [(name, [], r, None) for name, r in rows.items()]))}
    assert cells["seed 3: lever"] == "+8.00%"  # against 40 %, outside its +-5 points
    assert cells["other lever"] == "-2.00% (within the interval: no difference)"  # against the default's 50 %
    assert cells["seed 3: default"] == "-10.00%"
