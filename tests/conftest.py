"""Fixtures: tiny real images, a random-init VGG16 weights file, and temporary git+DVC project copies."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from project_copy import ROOT, copy_project  # noqa: F401  (ROOT: tests import it from here)

import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)

# Small enough for 2 CPU cores: 32 px is the smallest input VGG16's conv base accepts.
TINY_PARAMS = {
    "extract": {"image_size": 32, "batch_size": 8},
    # One head: tests/test_head_ensemble.py covers head.ensemble; five in every tiny run would only cost CI minutes.
    "head": {"units": 8, "epochs": 3, "batch_size": 8, "patience": 2, "ensemble": 1},
    "finetune": {"epochs": 2, "batch_size": 8, "patience": 1},
    "audit": {"units": 8, "epochs": 3, "batch_size": 8},
    # The model file alone: tests/test_runtimes.py ships every other format, and CI's check-repro runs the
    # project's own default formats; a SavedModel in every tiny pipeline run only costs CI minutes.
    "export": {"formats": ["keras"]},
}


def write_image(path: Path, color: tuple[int, int, int], seed: int, size: int = 40, fmt: str | None = None) -> Path:
    """A real image file: a flat colour with seeded noise, so every file has different bytes."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color, np.int16) + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path, format=fmt)
    return path


COLORS = {"cats": (200, 60, 40), "dogs": (40, 80, 200), "birds": (60, 190, 70)}


def write_shapes(path: Path, color: tuple[int, int, int], seed: int, size: int = 64, fmt: str | None = None) -> Path:
    """A real image with structure: a background near `color` (the class) under three seeded grey ellipses or
    boxes. Unlike flat noise, a resized or re-encoded copy keeps its perceptual hash and features while
    another drawing does not."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    background = np.clip(np.array(color) + rng.integers(-30, 30, 3), 0, 255)
    image = Image.new("RGB", (size, size), tuple(int(c) for c in background))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = (int(v) for v in rng.integers(0, size - 16, 2))
        w, h = (int(v) for v in rng.integers(8, size // 3, 2))
        fill = (int(rng.integers(0, 255)),) * 3  # grey: the class's colour stays the background's
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + w, y + h), fill=fill)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def make_drawn_presplit(root: Path, counts: dict[str, int], classes=("cats", "dogs")) -> Path:
    """data/raw/<split>/<class>/<n>.png drawings (write_shapes) plus validation/cats/copy-of-000.jpg, a resized
    JPEG copy of train/cats/000.png: a near-duplicate across splits."""
    for s, (split, n_images) in enumerate(counts.items()):
        for c, name in enumerate(classes):
            for n in range(n_images):
                write_shapes(root / split / name / f"{n:03d}.png", COLORS[name], seed=1000 * (2 * s + c) + n)
    resized_copy(root / "train/cats/000.png", root / "validation/cats/copy-of-000.jpg")
    return root


def resized_copy(source: Path, target: Path, scale: float = 1.7, quality: int = 80) -> Path:
    """`source` resized (bicubic) and re-encoded as JPEG: a near-duplicate with other bytes."""
    with Image.open(source) as image:
        size = (round(image.width * scale), round(image.height * scale))
        target.parent.mkdir(parents=True, exist_ok=True)
        image.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(target, format="JPEG", quality=quality)
    return target


def make_class_folders(root: Path, per_class: int = 10, classes=("cats", "dogs"), start_seed: int = 0) -> Path:
    """data/raw/<class>/<n>.png with distinguishable colours per class."""
    for c, name in enumerate(classes):
        for n in range(per_class):
            write_image(root / name / f"{n:03d}.png", COLORS[name], seed=start_seed + 1000 * c + n)
    return root


def make_presplit_folders(root: Path, counts=None, classes=("cats", "dogs")) -> Path:
    counts = counts or {"train": 6, "validation": 3}
    for s, (split, n_images) in enumerate(counts.items()):
        for c, name in enumerate(classes):
            for n in range(n_images):
                write_image(root / split / name / f"{n:03d}.jpg", COLORS[name], seed=10000 * s + 1000 * c + n)
    return root


SUITE_PEAK_GB = 3  # the most the temp folders held at once in a full run (2.7 and 2.9 GB in two, 2 workers)


def pytest_report_header(config) -> str:
    """The free space where the tests write, beside what they need: a full disk fails tests in ways that do not
    say so (a worker killed by SIGBUS on a mapped file), and the disk of a shared CI machine varies."""
    import tempfile

    # Where pytest puts them: --basetemp, else PYTEST_DEBUG_TEMPROOT, else the system's temp folder.
    folder = Path(config.option.basetemp or os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir())
    while not folder.exists():  # a --basetemp not made yet: the disk it will be on
        folder = folder.parent
    free = shutil.disk_usage(folder).free / 1e9
    note = "" if free > 2 * SUITE_PEAK_GB else " -- LOW: free some space, or point TMPDIR at a larger disk"
    return f"temp folder {folder}: {free:.1f} GB free; the suite needs about {SUITE_PEAK_GB} GB while it runs{note}"


def pytest_collection_modifyitems(items) -> None:
    """Under pytest-xdist (`--dist loadgroup`, pyproject.toml), the tests that share an expensive module- or
    session-scoped fixture (a committed `dvc repro`, a Ray cluster) run on one worker, so it is built once, not
    once per worker. tiny_weights takes a second and is left to every worker; pytest's own fixtures (an empty
    baseid) are not ours to share. Without xdist the mark is inert."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        shared = sorted(name for name, defs in (info.name2fixturedefs.items() if info else ())
                        if name != "tiny_weights" and defs[-1].baseid and defs[-1].scope in ("module", "session"))
        if shared:
            item.add_marker(pytest.mark.xdist_group("+".join(shared)))


@pytest.fixture(autouse=True)
def feature_cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty feature cache (also seen by the subprocesses it starts)."""
    root = tmp_path / "feature-cache"
    monkeypatch.setenv("BOTTLENECK_FEATURE_CACHE", str(root))
    return root


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Random-init VGG16 conv weights saved the way the weights stage saves them."""
    import keras

    from bottleneck_clf.vgg_weights import LAYER_NAMES, write_weights_h5

    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    weights = {name: tuple(model.get_layer(name).get_weights()) for name in LAYER_NAMES}
    path = tmp_path_factory.mktemp("weights") / "random.weights.h5"
    write_weights_h5(weights, path)
    return path


def update_params(project: Path, changes: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in changes.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def tiny_project(root: Path, tiny_weights: Path) -> Path:
    """A copy of the project at `root` with tiny params and random weights."""
    copy_project(root)
    link_or_copy(tiny_weights, root / "data/weights/user/random.weights.h5")
    update_params(root, {**TINY_PARAMS, "weights": {"source": "data/weights/user/random.weights.h5"}})
    return root


@pytest.fixture
def project(tmp_path, tiny_weights, monkeypatch) -> Path:
    """A copy of the project with tiny params and random weights, as the working directory."""
    root = tiny_project(tmp_path / "project", tiny_weights)
    monkeypatch.chdir(root)
    return root


def git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True)


def dvc(root: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, **(env or {})}
    result = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True, check=False, env=environment)
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def make_repo(root: Path) -> Path:
    """`root` as a real git + DVC repository with one commit."""
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "tests@example.com")
    git(root, "config", "user.name", "tests")
    dvc(root, "init", "-q")
    dvc(root, "config", "core.autostage", "true")
    commit(root, "project")
    return root


def commit(root: Path, message: str) -> None:
    """Commit everything in the working tree (untracked files too)."""
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)


def repo_template(tmp_path_factory, tiny_weights: Path, name: str, build) -> Path:
    """A tiny project repository that `build(root, env)` brings to a state several tests start from, built once
    per session with its own feature cache (`env`); each test then works on a `copy_repo` of it."""
    root = make_repo(tiny_project(tmp_path_factory.mktemp(name) / "project", tiny_weights))
    build(root, {"BOTTLENECK_FEATURE_CACHE": str(template_cache(root))})
    return root


def template_cache(template: Path) -> Path:
    """The feature cache a repo_template was built with, beside the repository."""
    return template.parent / "feature-cache"


def copy_repo(template: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of a repository built once per session (git history, DVC cache, outputs and all), as the
    working directory: tests that start from the same expensive `dvc repro` share it instead of rerunning it."""
    root = tmp_path / "project"
    shutil.copytree(template, root, symlinks=True)
    monkeypatch.chdir(root)
    return root


FIRST_RUN_PER_CLASS = 10


@pytest.fixture(scope="session")
def first_run_template(tmp_path_factory, tiny_weights) -> Path:
    """The tiny project with ten images a class (make_class_folders), reproduced from nothing and committed with
    data/raw, once a session. Beside it (outside the repository): that repro's output (first_run_log) and its
    feature cache (template_cache)."""

    def first_run(root, env):
        make_class_folders(root / "data/raw", per_class=FIRST_RUN_PER_CLASS)
        first_run_log(root).write_text(dvc(root, "repro", env=env).stdout, encoding="utf-8")
        commit(root, "first run")

    return repo_template(tmp_path_factory, tiny_weights, "first-run", first_run)


def first_run_log(template: Path) -> Path:
    """What the first_run_template's `dvc repro` printed."""
    return template.parent / "first-run.log"


@pytest.fixture
def first_run(first_run_template, tmp_path, monkeypatch) -> Path:
    """A private copy of first_run_template, as the working directory (with the test's own empty feature cache)."""
    return copy_repo(first_run_template, tmp_path, monkeypatch)


@pytest.fixture
def dvc_repo(project) -> Path:
    """The project copy as a real git + DVC repository with one commit."""
    return make_repo(project)
