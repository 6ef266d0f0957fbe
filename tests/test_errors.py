"""A user's mistake prints its message alone and exits 1; a bug in the project keeps its traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, make_class_folders, update_params

from bottleneck_clf import cli, demo, errors
from bottleneck_clf.errors import UserError


def run_module(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, check=False)


def test_stage_prints_a_user_mistake_without_traceback(project):
    raw = make_class_folders(project / "data/raw", per_class=10)
    for extra in sorted((raw / "dogs").iterdir())[4:]:
        extra.unlink()  # 4 dogs: too few for validation and test shares of 0.2
    update_params(project, {"prepare": {"small_classes": "fail"}})
    result = run_module("stages.prepare", cwd=project)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("prepare: error: class 'dogs' has 4 file(s), too few"), result.stderr
    assert not (project / "data/prepared").exists()

    make_class_folders(raw, per_class=10)  # fixed: the same command succeeds
    result = run_module("stages.prepare", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (project / "data/prepared/manifest.csv").is_file()


def test_a_stage_run_before_prepare_says_to_run_prepare(project):
    """extract_features by hand in a fresh project: no manifest yet; one message naming it and the fix."""
    from stages import extract_features

    with pytest.raises(UserError, match=r"^data/prepared/manifest.csv: not found; run the prepare stage first "
                                        r"\(`dvc repro prepare`, or `python -m stages.prepare`\)$"):
        extract_features.main()
    assert not (project / "data/features").exists()


def test_command_prints_a_missing_model_without_traceback(tmp_path):
    missing = tmp_path / "no-model.keras"
    result = run_module("bottleneck_clf", "predict", str(missing), str(tmp_path), cwd=ROOT)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    # (TensorFlow may log its start-up lines on stderr before it.)
    assert result.stderr.splitlines()[-1] == (f"bottleneck predict: error: {missing}: model file not found; "
                                              "run `dvc repro export` to make one")


def test_command_user_error_in_process(tmp_path, capsys):
    raw = tmp_path / "raw"
    (raw / "cats").mkdir(parents=True)
    (raw / "cats" / "mine.jpg").write_bytes(b"precious")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--out", str(raw)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"bottleneck demo: error: {raw} already holds 1 files that are not the demo")
    assert (raw / "cats" / "mine.jpg").read_bytes() == b"precious"


@pytest.mark.parametrize("bug", [TypeError("unexpected None"), KeyError("classes"), ValueError("from deep in NumPy")])
def test_a_bug_keeps_its_traceback(bug, monkeypatch, tmp_path, capsys):
    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(demo, "write_demo_set", broken)
    with pytest.raises(type(bug)) as raised:
        cli.main(["demo", "--out", str(tmp_path / "raw")])
    assert raised.value is bug  # not turned into a message: Python prints its traceback
    assert "error:" not in capsys.readouterr().err


def test_run_exits_with_the_status_and_reports_only_user_errors(capsys):
    def fails():
        raise UserError("params.yaml: head.units must be >= 1")

    for main, code in ((lambda: None, 0), (lambda: 0, 0), (lambda: 1, 1), (fails, 1)):
        with pytest.raises(SystemExit) as exit_info:
            errors.run(main, "train_head")
        assert exit_info.value.code == code
    assert capsys.readouterr().err == "train_head: error: params.yaml: head.units must be >= 1\n"

    def bug():
        return {}["missing"]

    with pytest.raises(KeyError):
        errors.run(bug, "train_head")


def test_user_errors_are_value_errors():
    # Code and tests that catch ValueError around the project's checks keep working.
    assert issubclass(UserError, ValueError)


@pytest.mark.parametrize("command", [[], ["predict"], ["check-repro"], ["cache"], ["cache", "prune"], ["demo"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: bottleneck {' '.join(command)}".rstrip())


def test_wrong_options_print_usage_and_exit_2(capsys):
    for argv, message in ((["cache", "prune", "--older-than", "-1"], "argument --older-than: must be >= 0"),
                          (["demo", "--per-class", "171"], "argument --per-class: must be between 1 and 170"),
                          (["check-repro", "--strict", "--metrics-only"], "not allowed with argument"),
                          (["unknown"], "invalid choice: 'unknown'")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_only_the_library_is_installed_with_one_console_script():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["tool"]["setuptools"]["packages"] == ["bottleneck_clf"]
    assert project["project"]["scripts"] == {"bottleneck": "bottleneck_clf.cli:main"}
    module, function = project["project"]["scripts"]["bottleneck"].split(":")
    assert callable(getattr(__import__(module, fromlist=[function]), function))


def test_python_m_bottleneck_clf_is_the_command():
    result = run_module("bottleneck_clf", "--help", cwd=ROOT)
    assert result.returncode == 0 and result.stdout.startswith("usage: bottleneck ")
    for command in ("predict", "check-repro", "cache", "demo"):
        assert command in result.stdout
