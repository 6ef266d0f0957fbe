"""dvc.yaml lists, for every stage, the project code it imports: derived from the code, so it cannot drift.

A stage's code is stages/<name>.py and every project module it imports, transitively, at module level or
inside functions. Only the infrastructure named at the top of dvc.yaml (where and how files are written,
not what they contain) is left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bottleneck_clf", "stages")
# Decide where and how outputs are written, record the machine or report a failure, never a value (dvc.yaml's header).
INFRASTRUCTURE = {
    "bottleneck_clf/__init__.py",
    "bottleneck_clf/params.py",
    "bottleneck_clf/config.py",
    "bottleneck_clf/paths.py",
    "bottleneck_clf/atomic.py",
    "bottleneck_clf/machine.py",
    "bottleneck_clf/errors.py",
}


def module_file(name: str) -> str | None:
    """`bottleneck_clf.images` -> `bottleneck_clf/images.py` (a package: its __init__.py); None if not a file of ours.

    None also for `bottleneck_clf.features.load_meta`: `from module import function` names no module.
    """
    if name.split(".")[0] not in PACKAGES:
        return None
    relative = Path(*name.split("."))
    for candidate in (relative.with_suffix(".py"), relative / "__init__.py"):
        if (ROOT / candidate).is_file():
            return candidate.as_posix()
    return None


def imported_files(path: str) -> set[str]:
    """Project files imported anywhere in `path`, inside functions too; `from pkg import mod` counts `mod`."""
    names = []
    for node in ast.walk(ast.parse((ROOT / path).read_text(encoding="utf-8"), path)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; this test resolves absolute ones only"
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    # Importing a.b.c runs a/__init__.py and a/b/__init__.py too.
    prefixes = {".".join(name.split(".")[: i + 1]) for name in names for i in range(name.count(".") + 1)}
    return {file for file in map(module_file, prefixes) if file is not None}


def closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(imported_files(path))
    return seen


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def stage_module(name: str, stage: dict) -> str:
    prefix = "python -m "
    assert stage["cmd"].startswith(prefix), f"stage {name}: cmd {stage['cmd']!r} is not `python -m <module>`"
    path = module_file(stage["cmd"][len(prefix):].split()[0])
    assert path, f"stage {name}: {stage['cmd']!r} runs no module of this project"
    return path


@pytest.mark.parametrize("name", list(stages()))
def test_stage_deps_list_the_code_it_imports(name):
    stage = stages()[name]
    deps = {dep if isinstance(dep, str) else next(iter(dep)) for dep in stage.get("deps", [])}
    needed = closure(stage_module(name, stage)) - INFRASTRUCTURE - {"stages/__init__.py"}
    missing = sorted(needed - deps)
    assert not missing, f"dvc.yaml: stage {name} imports {', '.join(missing)} but does not list it under deps"
    infrastructure = sorted(INFRASTRUCTURE & deps)
    assert not infrastructure, f"dvc.yaml: stage {name} lists infrastructure {infrastructure} (see dvc.yaml's header)"


def test_listed_code_exists():
    listed = {dep for stage in stages().values() for dep in stage.get("deps", []) if str(dep).endswith(".py")}
    assert not sorted(p for p in listed if not (ROOT / p).is_file())


def test_the_derivation_sees_function_level_and_transitive_imports():
    # stages/finetune.py imports bottleneck_clf.finetune inside main(); finetune imports head inside a function,
    # and features imports images at module level.
    found = closure("stages/finetune.py")
    assert {"bottleneck_clf/finetune.py", "bottleneck_clf/head.py", "bottleneck_clf/images.py",
            "bottleneck_clf/dataset.py"} <= found
