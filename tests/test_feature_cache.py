"""The content-addressed feature cache: hits, misses, warm equals cold, concurrent writers, pruning."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folders, update_params, write_image

from bottleneck_clf.feature_cache import FeatureCache, fingerprint_key, prune
from bottleneck_clf.features import build_extractor, fill_features, fingerprint, load_split
from stages import extract_features, prepare, prune_cache, weights

BASE = dict(weights_digest="abc", image_size=32, interpolation="bilinear", pooling="avg", precision="float32",
            batch_size=8)


def run_extract(capsys) -> tuple[int, int]:
    extract_features.main()
    out = capsys.readouterr().out
    encoded, cached = re.search(r"(\d+) encoded, (\d+) from the cache", out).groups()
    return int(encoded), int(cached)


@pytest.fixture
def prepared(project):
    make_class_folders(project / "data/raw", per_class=10)
    weights.main()
    prepare.main()
    return project


def test_put_get_round_trip(tmp_path):
    cache = FeatureCache(tmp_path, fingerprint(**BASE))
    assert cache.get("ab" * 32) is None
    value = np.arange(512, dtype=np.float32)
    cache.put("ab" * 32, value)
    np.testing.assert_array_equal(cache.get("ab" * 32), value)
    assert (cache.directory / "fingerprint.json").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [("weights_digest", "abd"), ("image_size", 64), ("interpolation", "nearest"), ("pooling", "max"),
     ("precision", "bfloat16"), ("batch_size", 16)],
)
def test_every_fingerprint_field_changes_the_key(tmp_path, field, value):
    before = FeatureCache(tmp_path, fingerprint(**BASE))
    before.put("cd" * 32, np.ones(4, np.float32))
    after = FeatureCache(tmp_path, fingerprint(**{**BASE, field: value}))
    assert after.key != before.key
    assert after.get("cd" * 32) is None


def test_damaged_entry_is_a_miss(tmp_path):
    cache = FeatureCache(tmp_path, fingerprint(**BASE))
    cache.put("ef" * 32, np.ones(4, np.float32))
    cache.path("ef" * 32).write_bytes(b"\x93NUMPY garbage")
    assert cache.get("ef" * 32) is None


def test_warm_run_equals_cold_run_bitwise(prepared, capsys):
    assert run_extract(capsys) == (20, 0)
    cold = {s: np.array(load_split(prepared / "data/features", s)[0]) for s in ("train", "validation", "test")}
    assert run_extract(capsys) == (0, 20)
    for split, values in cold.items():
        np.testing.assert_array_equal(load_split(prepared / "data/features", split)[0], values)


def test_changed_byte_misses_renamed_file_hits_new_split_hits(prepared, capsys):
    assert run_extract(capsys) == (20, 0)
    raw = prepared / "data/raw"
    (raw / "cats/000.png").rename(raw / "cats/renamed.png")
    write_image(raw / "dogs/001.png", (1, 1, 1), seed=4242)  # new bytes under an old name
    write_image(raw / "dogs/new.png", (40, 80, 200), seed=4243)
    update_params(prepared, {"base": {"seed": 3}})  # a different split
    prepare.main()
    assert run_extract(capsys) == (2, 19)


def test_duplicates_are_encoded_once(prepared, capsys):
    raw = prepared / "data/raw"
    (raw / "cats/copy.png").write_bytes((raw / "cats/004.png").read_bytes())
    prepare.main()
    extract_features.main()
    assert "21 images: 20 encoded, 0 from the cache, 1 copies of another image" in capsys.readouterr().out
    for split in ("train", "validation", "test"):
        features, _, ids = load_split(prepared / "data/features", split)
        rows = {name: i for i, name in enumerate(ids.tolist())}
        if "cats/copy.png" in rows:  # prepare keeps copies in one split
            np.testing.assert_array_equal(features[rows["cats/copy.png"]], features[rows["cats/004.png"]])
            break
    else:
        pytest.fail("cats/copy.png is in no split")


CONCURRENT_WRITER = """
import sys
import numpy as np
import bottleneck_clf
from bottleneck_clf.feature_cache import FeatureCache
from bottleneck_clf.features import build_extractor, fill_features, fingerprint
weights, cache_root, out_file, *paths = sys.argv[1:]
import hashlib
digests = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]
cache = FeatureCache(cache_root, fingerprint("w", 32, "bilinear", "avg", "float32", 4))
model = build_extractor(weights, 32, "avg")
out = np.zeros((len(paths), 512), np.float32)
fill_features(model, paths, digests, out, cache, 32, "bilinear", 4)
np.save(out_file, out)
"""


def test_concurrent_writers_do_not_corrupt(tmp_path, tiny_weights):
    raw = make_class_folders(tmp_path / "raw", per_class=12)
    paths = [str(p) for p in sorted(raw.rglob("*.png"))]
    cache_root = tmp_path / "shared-cache"
    writers = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER, str(tiny_weights), str(cache_root),
                          str(tmp_path / f"out{i}.npy"), *paths], stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    for writer in writers:
        _, stderr = writer.communicate(timeout=600)
        assert writer.returncode == 0, stderr
    first, second = np.load(tmp_path / "out0.npy"), np.load(tmp_path / "out1.npy")
    np.testing.assert_array_equal(first, second)
    entries = list(cache_root.rglob("*.npy"))
    assert len(entries) == len(paths)
    assert not list(cache_root.rglob("*.tmp")), "a writer left a temporary file"
    cache = FeatureCache(cache_root, fingerprint("w", 32, "bilinear", "avg", "float32", 4))
    model = build_extractor(tiny_weights, 32, "avg")
    again = np.zeros_like(first)
    digests = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]
    assert fill_features(model, paths, digests, again, cache, 32, "bilinear", 4) == (0, len(paths))
    np.testing.assert_array_equal(again, first)


def test_prune_by_age_and_all(tmp_path, capsys, monkeypatch):
    old = FeatureCache(tmp_path, fingerprint(**BASE))
    new = FeatureCache(tmp_path, fingerprint(**{**BASE, "image_size": 64}))
    old.put("aa" * 32, np.ones(8, np.float32))
    new.put("bb" * 32, np.ones(8, np.float32))
    long_ago = time.time() - 40 * 86400
    os.utime(old.path("aa" * 32), (long_ago, long_ago))
    removed, freed = prune(tmp_path, older_than_days=30)
    assert removed == 1 and freed > 32
    assert not old.directory.exists() and new.get("bb" * 32) is not None
    assert prune(tmp_path, older_than_days=30, keep={new.key}) == (0, 0)

    monkeypatch.setenv("BOTTLENECK_FEATURE_CACHE", str(tmp_path))
    prune_cache.main(["--all"])
    assert "removed 1 entries" in capsys.readouterr().out
    assert not any(tmp_path.rglob("*.npy"))


def test_fingerprint_key_is_stable():
    assert fingerprint_key({"b": 1, "a": 2}) == fingerprint_key({"a": 2, "b": 1})
