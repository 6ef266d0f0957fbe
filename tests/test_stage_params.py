"""dvc.yaml lists, for every stage, the params keys it reads: observed while each stage's main() runs for real.

Each settings object that load_config makes records which of its fields are read (by the stage or by any
library function it hands the section to; `dataclasses.replace` or `asdict` read them all). A read that
dvc.yaml does not list is a key whose change DVC would not rerun the stage for: a stale output. Settings
rebuilt from a recipe or meta.json (ExtractConfig.from_mapping) are not params.yaml's and are not recorded.
The stages run twice, on the defaults and with the options that read more keys turned on; a listed key that
neither run reads must be one read only in a case they do not make (CONDITIONAL).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from conftest import make_class_folders, update_params

from bottleneck_clf import config as config_module
from stages import audit, evaluate, export, extract_features, finetune, finetune_ensemble, prepare, train_head, weights

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"weights": weights, "prepare": prepare, "extract_features": extract_features, "train_head": train_head,
          "finetune": finetune, "finetune_ensemble": finetune_ensemble, "evaluate": evaluate, "export": export,
          "audit": audit}
# finetune.refit off: finetune_ensemble then scores the stop set (finetune.batch_size).
MORE = {"finetune": {"enabled": True, "ensemble": True, "refit": False}, "head": {"refit": True, "ensemble": 2},
        "evaluate": {"gallery_size": 4}}


# Listed keys these runs do not read, each read only in a case they do not make.
CONDITIONAL = {
    "extract_features": ["ray.actors", "ray.gpus_per_actor"],  # only on a Ray cluster
    "finetune": ["ray.actors", "ray.gpus_per_actor"],
    "finetune_ensemble": ["ray.actors", "ray.gpus_per_actor"],
    "evaluate": ["ray.actors", "ray.gpus_per_actor"],
    "export": ["export.calibration_images"],  # only for the LiteRT int8 format
}


def declared(stage: str) -> set[str]:
    """dvc.yaml's params of `stage`, a whole section (`ray`) standing for each of its keys."""
    keys = set()
    for entry in yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"][stage].get("params", []):
        section, _, key = entry.partition(".")
        fields = dataclasses.fields(config_module.SECTIONS[section])
        keys |= {f"{section}.{f.name}" for f in fields} if not key else {entry}
    return keys


@pytest.fixture
def reads(monkeypatch) -> set[str]:
    """`section.key` of every field read from settings that load_config made since the set was last cleared."""
    made, seen = [], set()
    real = config_module.Config.from_params.__func__

    def from_params(cls, params):
        loaded = real(cls, params)
        made.extend(getattr(loaded, f.name) for f in dataclasses.fields(loaded))  # kept alive: ids stay theirs
        return loaded

    monkeypatch.setattr(config_module.Config, "from_params", classmethod(from_params))
    for section, cls in config_module.SECTIONS.items():
        names = {f.name for f in dataclasses.fields(cls)}

        def getattribute(self, attr, section=section, names=names):
            if attr in names and any(self is settings for settings in made):
                seen.add(f"{section}.{attr}")
            return object.__getattribute__(self, attr)

        monkeypatch.setattr(cls, "__getattribute__", getattribute)
    return seen


def test_every_stage_is_checked():
    assert set(STAGES) == set(yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"])


def test_every_params_key_a_stage_reads_is_in_its_dvc_yaml_params_and_no_other(project, reads, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # ray.engine auto: this process, whatever the shell says
    make_class_folders(project / "data/raw", per_class=10)
    (project / "data/raw/cats/broken.jpg").write_bytes(b"not an image")  # prepare.on_bad_image is read
    read_by = {name: set() for name in STAGES}
    for options in ({}, MORE):
        update_params(project, options)
        for name, stage in STAGES.items():
            reads.clear()
            stage.main()
            read_by[name] |= reads
    undeclared = {name: sorted(keys - declared(name)) for name, keys in read_by.items() if keys - declared(name)}
    assert not undeclared, f"dvc.yaml: stages read params they do not list: {undeclared}"
    # The other way round: a listed key no run read makes DVC rerun the stage for nothing, unless it is read
    # only in a case these runs do not make.
    unread = {name: sorted(declared(name) - keys) for name, keys in read_by.items() if declared(name) - keys}
    assert unread == CONDITIONAL, f"dvc.yaml: stages list params they never read: {unread}"
    # The recorder sees reads at all.
    assert {"head.units", "head.epochs"} <= read_by["train_head"] and "prepare.layout" in read_by["prepare"]
    assert {"finetune.refit", "finetune.blocks"} <= read_by["finetune"], read_by["finetune"]
