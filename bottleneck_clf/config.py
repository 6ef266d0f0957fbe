"""params.yaml as typed, frozen settings: one dataclass per section, built from the checked params.

params.py checks the values (its SCHEMA); this module only gives them names. A new setting goes into SCHEMA,
params.yaml and the section's dataclass here (tests/test_params.py fails when the two disagree).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from bottleneck_clf.params import PARAMS_FILE, load_params


class Section:
    """Shared constructor of the section dataclasses."""

    @classmethod
    def from_mapping(cls, values: dict[str, Any]):
        """The section's fields from `values`; other keys are ignored (a recipe or a fingerprint holds more), and
        a field with a default may be missing (a record written before the field existed)."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values or f.default is MISSING})


@dataclass(frozen=True)
class BaseConfig(Section):
    seed: int


@dataclass(frozen=True)
class WeightsConfig(Section):
    source: str


@dataclass(frozen=True)
class PrepareConfig(Section):
    layout: str
    validation_fraction: float
    test_fraction: float
    on_bad_image: str
    small_classes: str
    near_duplicates: str
    phash_distance: int


@dataclass(frozen=True)
class ExtractConfig(Section):
    image_size: int
    interpolation: str
    pooling: str
    precision: str
    # Not in the feature cache's fingerprint: images per decode step and Ray batch; VGG16 runs one image a call
    # (features.encode_batch), so it changes no value. The default serves settings rebuilt from a fingerprint.
    batch_size: int = 32
    # Not in the feature cache's fingerprint: each image's own features and its mirror's are cached apart.
    flip_tta: str = "none"


@dataclass(frozen=True)
class HeadConfig(Section):
    units: int
    dropout: float
    optimizer: str
    learning_rate: float
    epochs: int
    batch_size: int
    patience: int
    early_stopping_fraction: float
    batch_norm: bool
    l2: float
    label_smoothing: float
    schedule: str
    refit: bool
    ensemble: int


@dataclass(frozen=True)
class FinetuneConfig(Section):
    enabled: bool
    blocks: int
    learning_rate: float
    momentum: float
    epochs: int
    batch_size: int
    patience: int
    flip: bool
    rotation: float
    zoom: float
    augment: str
    label_smoothing: float
    schedule: str
    ensemble: bool
    refit: bool


@dataclass(frozen=True)
class EvaluateConfig(Section):
    split: str
    threshold: float
    gallery_size: int


@dataclass(frozen=True)
class ExportConfig(Section):
    formats: list
    calibration_images: int
    check_images: int


@dataclass(frozen=True)
class RayConfig(Section):
    engine: str
    actors: int
    gpus_per_actor: float


@dataclass(frozen=True)
class AuditConfig(Section):
    folds: int
    epochs: int
    units: int
    dropout: float
    learning_rate: float
    batch_size: int
    similarity: float
    gallery_size: int


@dataclass(frozen=True)
class Config:
    """The whole params file, one attribute per section (the attribute name is the section's)."""

    base: BaseConfig
    weights: WeightsConfig
    prepare: PrepareConfig
    extract: ExtractConfig
    head: HeadConfig
    finetune: FinetuneConfig
    evaluate: EvaluateConfig
    export: ExportConfig
    ray: RayConfig
    audit: AuditConfig

    @classmethod
    def from_params(cls, params: dict[str, dict[str, Any]]) -> Config:
        """From `load_params()`'s (already checked) dict."""
        return cls(**{f.name: SECTIONS[f.name].from_mapping(params[f.name]) for f in fields(cls)})


SECTIONS: dict[str, type[Section]] = {
    "base": BaseConfig,
    "weights": WeightsConfig,
    "prepare": PrepareConfig,
    "extract": ExtractConfig,
    "head": HeadConfig,
    "finetune": FinetuneConfig,
    "evaluate": EvaluateConfig,
    "export": ExportConfig,
    "ray": RayConfig,
    "audit": AuditConfig,
}


def load_config(path: str | Path = PARAMS_FILE) -> Config:
    """Load and check the whole params file (a typo anywhere stops every stage), as typed settings."""
    return Config.from_params(load_params(path))
