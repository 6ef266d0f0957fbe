"""Saving Keras models so that the same weights give the same bytes (and so the same DVC hash)."""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

from bottleneck_clf.atomic import atomic_path

FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def save_model(model, target: str | Path) -> None:
    """`model.save` to a `.keras` file, minus the save time Keras stamps into it, atomically."""
    with tempfile.TemporaryDirectory() as scratch, atomic_path(target) as out:
        raw = Path(scratch) / "model.keras"
        model.save(raw)
        with zipfile.ZipFile(raw) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as clean:
            for item in source.infolist():
                data = source.read(item.filename)
                if item.filename == "metadata.json":
                    metadata = json.loads(data)
                    metadata.pop("date_saved", None)
                    data = json.dumps(metadata, sort_keys=True).encode()
                elif item.filename == "config.json":
                    data = json.dumps(renumber_shared_objects(json.loads(data))).encode()
                clean.writestr(zipfile.ZipInfo(item.filename, FIXED_ZIP_TIME), data, zipfile.ZIP_DEFLATED)


def renumber_shared_objects(config):
    """Keras writes Python `id()`s as `shared_object_id`; number them by first appearance instead."""
    numbers: dict[int, int] = {}

    def walk(node):
        if isinstance(node, dict):
            return {
                key: numbers.setdefault(value, len(numbers) + 1) if key == "shared_object_id" else walk(value)
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(config)
