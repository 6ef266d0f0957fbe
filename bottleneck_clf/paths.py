"""Where each stage reads and writes: taken from dvc.yaml, so the pipeline and the code cannot disagree; and
where the user cache lives."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from bottleneck_clf.errors import UserError

DVC_FILE = "dvc.yaml"
NAMES = ("raw", "weights", "user_weights", "prepared", "features", "model", "early_stopped_head", "train_metrics",
         "finetune_top", "finetune_metrics", "finetuned", "ensemble_metrics", "eval_metrics", "classifier", "machine",
         "export_metrics", "exclude", "audit_metrics")


def project_paths(dvc_file: str | Path = DVC_FILE) -> dict[str, Path]:
    """The `paths` mapping declared under `vars:` in dvc.yaml, relative to the project root."""
    dvc_file = Path(dvc_file)
    if not dvc_file.exists():
        raise UserError(f"{dvc_file}: not found; run the stages from the project root, where dvc.yaml lives")
    data = yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}
    for item in data.get("vars", []):
        if isinstance(item, dict) and "paths" in item:
            paths = item["paths"]
            missing = [name for name in NAMES if name not in paths]
            if missing:
                raise UserError(f"{dvc_file}: vars.paths lacks {', '.join(missing)}")
            return {name: dvc_file.parent / paths[name] for name in NAMES}
    raise UserError(f"{dvc_file}: no `paths` mapping under `vars:`; restore it from the project's dvc.yaml")


def cache_dir() -> Path:
    """The user cache (downloads, features) lives outside the repo: inputs to fetch or reuse, not results to version."""
    root = os.environ.get("BOTTLENECK_CACHE") or Path.home() / ".cache" / "bottleneck-classifier"
    return Path(root)
