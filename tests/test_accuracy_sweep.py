"""bench/accuracy_sweep.py's table without listed images (the labels an audit found wrong), on real lists."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from bottleneck_clf.exclude import read_exclude_list

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("accuracy_sweep", ROOT / "bench/accuracy_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scored(wrong: set[int], n: int = 10) -> dict[str, bool]:
    return {f"validation/c/{i}.jpg": i not in wrong for i in range(n)}


def test_each_row_is_scored_on_the_images_the_list_leaves(sweep, tmp_path):
    listed_file = tmp_path / "errors.txt"
    listed_file.write_text("# wrong labels\nvalidation/c/0.jpg  # mislabelled\nvalidation/c/1.jpg\n"
                           "validation/c/99.jpg  # not scored\n")
    listed = read_exclude_list(listed_file, tmp_path)
    baseline = {"right": scored({0, 1, 5})}          # 7/10; both listed wrong; 7/8 on the rest
    row = {"right": scored({0, 5, 6})}               # 7/10; one listed wrong; 6/8 on the rest
    lines = sweep.without_table(baseline, [("lever a", ["x=1"], row, 12.0), ("lever b", ["y=1"], None, None)],
                                listed, listed_file.name)
    assert lines[0].startswith("Without the 2 scored image(s) listed in `errors.txt` (1 listed path(s) are not")
    body = [line for line in lines if line.startswith("| ") and not line.startswith("| lever |")]
    assert body == ["| default (params.yaml) | 87.50% | 52.91%-97.76% | 8 | 2 of 2 |",
                    "| lever a | 75.00% | 40.93%-92.85% | 8 | 1 of 2 |"]  # lever b failed: no row


def test_a_missing_list_is_one_clear_error(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench/accuracy_sweep.py"), "--report-only", "--keep",
                             str(tmp_path), "--without", str(tmp_path / "nope.txt")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert f"--without {tmp_path / 'nope.txt'}: no such file" in result.stderr
    assert "Traceback" not in result.stderr
