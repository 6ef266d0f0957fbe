import copy
from pathlib import Path

import pytest
import yaml

from bottleneck_clf.params import check_params, check_threshold, load_params

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_change(section: str, key: str, value):
    params = copy.deepcopy(DEFAULTS)
    params[section][key] = value
    return params


def test_project_params_are_valid():
    assert load_params(ROOT / "params.yaml") == DEFAULTS


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("head", "dropout", 1.5, "head.dropout: must be a number in [0.0, 1.0)"),
        ("head", "dropout", "high", "head.dropout: must be a number"),
        ("head", "dropout", 10**400, "head.dropout: must be a number in [0.0, 1.0)"),  # past a float's range
        ("head", "dropout", float("nan"), "head.dropout: must be a number in [0.0, 1.0), got nan"),
        ("extract", "image_size", 16, "extract.image_size: must be an integer in [32, 1024], got 16"),
        ("extract", "image_size", 224.0, "extract.image_size: must be an integer"),
        ("extract", "pooling", "mean", "extract.pooling: must be one of flatten, avg, max; got 'mean'"),
        ("prepare", "test_fraction", -0.1, "prepare.test_fraction: must be a number in [0.0, 1.0)"),
        ("prepare", "validation_fraction", 0, "prepare.validation_fraction: must be a number in (0.0, 1.0)"),
        ("head", "epochs", True, "head.epochs: must be an integer"),
        ("head", "ensemble", 0, "head.ensemble: must be an integer in [1, 32]"),
        ("head", "ensemble", 2.5, "head.ensemble: must be an integer"),
        ("head", "ensemble", 33, "head.ensemble: must be an integer in [1, 32]"),
        ("head", "optimizer", "adamw", "head.optimizer: must be one of adam, rmsprop, sgd"),
        ("evaluate", "split", "train", "evaluate.split: must be one of auto, test, validation"),
        ("weights", "source", "", "weights.source: must be 'pypi', 'keras' or a path"),
        ("head", "learning_rate", 0, "head.learning_rate: must be a number in (0.0, 1.0]"),
        ("finetune", "enabled", "yes", "finetune.enabled: must be true or false, got 'yes'"),
        ("finetune", "blocks", 5, "finetune.blocks: must be an integer in [1, 4], got 5"),
        ("finetune", "rotation", 0.7, "finetune.rotation: must be a number in [0.0, 0.5]"),
        ("evaluate", "gallery_size", -1, "evaluate.gallery_size: must be an integer in [0, 1000], got -1"),
        ("export", "check_images", -1, "export.check_images: must be an integer in [0, 1000000000], got -1"),
    ],
)
def test_bad_values_name_key_and_valid_range(section, key, value, expected):
    with pytest.raises(ValueError) as error:
        check_params(with_change(section, key, value))
    assert expected in str(error.value)


def test_unknown_key_lists_valid_keys():
    params = with_change("head", "dropuot", 0.3)
    with pytest.raises(ValueError, match=r"head.dropuot: unknown key; valid keys of head: units, dropout"):
        check_params(params)


def test_unknown_and_missing_sections():
    params = copy.deepcopy(DEFAULTS)
    params["trian"] = params.pop("head")
    with pytest.raises(ValueError) as error:
        check_params(params)
    sections = "base, weights, prepare, extract, head, finetune, evaluate"
    assert f"trian: unknown section; valid sections: {sections}" in str(error.value)
    assert "head: missing section" in str(error.value)


def test_every_problem_in_one_error():
    params = with_change("head", "dropout", 1.5)
    params["extract"]["pooling"] = "mean"
    del params["base"]["seed"]
    with pytest.raises(ValueError) as error:
        check_params(params)
    message = str(error.value)
    assert "3 problem(s)" in message
    for key in ("head.dropout", "extract.pooling", "base.seed: missing"):
        assert key in message


def test_fractions_must_leave_training_images():
    params = with_change("prepare", "validation_fraction", 0.5)
    params["prepare"]["test_fraction"] = 0.5
    with pytest.raises(ValueError, match="must be below 1 to leave training images, got 1"):
        check_params(params)


@pytest.mark.parametrize("section", ["head", "finetune"])
@pytest.mark.parametrize(("schedule", "ok"), [("constant", True), ("cosine", True), ("plateau", False)])
def test_a_refit_has_no_stop_set_for_a_plateau_schedule(section, schedule, ok):
    params = with_change(section, "refit", True)
    params[section]["schedule"] = schedule
    if ok:
        assert check_params(params) == params
    else:
        message = f"{section}.refit: a refit has no stop set for {section}.schedule: plateau"
        with pytest.raises(ValueError, match=message):
            check_params(params)


@pytest.mark.parametrize(
    ("override", "section", "key", "value"),
    [
        ("finetune.learning_rate=0.00005", "finetune", "learning_rate", 5e-05),  # DVC writes `5e-05`
        ("head.learning_rate=1e-4", "head", "learning_rate", 1e-4),
        ("head.l2=0.000001", "head", "l2", 1e-06),
        ("head.epochs=7", "head", "epochs", 7),
    ],
)
def test_values_written_by_dvc_exp_run_set_param_read_back(tmp_path, override, section, key, value):
    """`dvc exp run -S` rewrites params.yaml with DVC's own YAML writer: small floats come out as `5e-05`,
    which YAML 1.1 (PyYAML's default) reads as a string."""
    from dvc.utils.hydra import apply_overrides  # the code behind `dvc exp run -S` / `--set-param`

    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(str(params), [override])
    loaded = load_params(params)
    assert loaded[section][key] == value and type(loaded[section][key]) is type(value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ValueError, match="not found; run the stages from the project root"):
        load_params(tmp_path / "params.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("head: [unclosed\n")
    with pytest.raises(ValueError, match="broken.yaml: not valid YAML"):
        load_params(broken)


@pytest.mark.parametrize(("write", "said"), [
    # A key given twice: DVC's reader refuses it too; the last one silently winning would run another experiment.
    (lambda path: path.write_text(ROOT.joinpath("params.yaml").read_text().replace("base:\n", "base:\n  seed: 7\n", 1)),
     r"(?s)params.yaml: not valid YAML: while reading a mapping.*found the key 'seed' twice"),
    # An editor's Windows code page, or PowerShell's `>` (UTF-16).
    (lambda path: path.write_bytes(ROOT.joinpath("params.yaml").read_bytes() + "# caf\u00e9\n".encode("cp1252")),
     r"params.yaml: not UTF-8 text \(byte \d+ is b'\\xe9'\); save it as UTF-8"),
    (lambda path: path.write_bytes(ROOT.joinpath("params.yaml").read_text().encode("utf-16")),
     r"params.yaml: not UTF-8 text .*; save it as UTF-8"),
    (lambda path: path.mkdir(), r"params.yaml: cannot read it \(Is a directory\)"),
], ids=["duplicate-key", "cp1252", "utf-16", "a-folder"])
def test_a_params_file_of_the_wrong_form_is_one_message(tmp_path, write, said):
    path = tmp_path / "params.yaml"
    write(path)
    with pytest.raises(ValueError, match=said):
        load_params(path)


def test_yaml_merge_keys_may_be_overridden_but_not_given_twice():
    """`<<: *anchor` brings defaults that a key written beside it overrides (YAML's rule, not a duplicate)."""
    from bottleneck_clf.params import ParamsLoader

    shared = "first: &shared\n  units: 64\n  dropout: 0.2\nsecond:\n  <<: *shared\n  dropout: 0.3\n"
    assert yaml.load(shared, Loader=ParamsLoader) == {"first": {"units": 64, "dropout": 0.2},
                                                      "second": {"units": 64, "dropout": 0.3}}
    with pytest.raises(yaml.YAMLError, match="found the key 'dropout' twice"):
        yaml.load(shared + "  dropout: 0.4\n", Loader=ParamsLoader)


def test_threshold_decides_between_two_classes_only():
    assert check_threshold(0.7, 2) == 0.7
    assert check_threshold(0.5, 3) == 0.5
    with pytest.raises(ValueError, match=r"^evaluate.threshold is 0.7 but the data has 3 classes; .* "
                                         r"set evaluate.threshold to 0.5 in params.yaml$"):
        check_threshold(0.7, 3)


def test_config_dataclasses_match_the_schema():
    from dataclasses import fields

    from bottleneck_clf.config import SECTIONS, Config
    from bottleneck_clf.params import SCHEMA

    assert [f.name for f in fields(Config)] == list(SCHEMA) == list(SECTIONS)
    for section, keys in SCHEMA.items():
        assert [f.name for f in fields(SECTIONS[section])] == list(keys), f"{section}: config.py and SCHEMA differ"


def test_load_config_gives_the_checked_values():
    from bottleneck_clf.config import load_config

    config = load_config(ROOT / "params.yaml")
    params = load_params(ROOT / "params.yaml")
    assert config.head.units == params["head"]["units"]
    assert config.evaluate.threshold == params["evaluate"]["threshold"]
    with pytest.raises(AttributeError):
        config.head.units = 1  # frozen: a stage cannot change a setting behind the params' back
