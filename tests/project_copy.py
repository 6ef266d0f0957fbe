"""The files a working copy of the project needs, for the tests' and the benchmarks' temporary projects."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("dvc.yaml", "params.yaml", "stages", "bottleneck_clf", "data/weights/user/README.md",
                 "data/exclude.txt")


def copy_project(target: Path) -> Path:
    """The project's code, pipeline and params under `target` (no data, no git or DVC state)."""
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target
