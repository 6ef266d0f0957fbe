"""The content-addressed feature cache: hits, misses, warm equals cold, concurrent writers, pruning, and
features that cannot be stale (code digest in the key, re-hashed bytes, typed entries, failed writes)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folders, update_params, write_image

from bottleneck_clf import features as features_module
from bottleneck_clf.cli import run_command
from bottleneck_clf.config import ExtractConfig
from bottleneck_clf.feature_cache import LOCK_FILE, FeatureCache, fingerprint_key, prune
from bottleneck_clf.features import (
    ChangedImage,
    build_extractor,
    feature_code,
    fill_features,
    fingerprint,
    load_split,
    source_digest,
)
from bottleneck_clf.machine import signature
from stages import extract_features, prepare, weights

BASE = dict(weights_digest="abc", image_size=32, interpolation="bilinear", pooling="avg", precision="float32",
            batch_size=8)
SMALL = ExtractConfig(image_size=32, interpolation="bilinear", pooling="avg", batch_size=4, precision="float32")


def settings(weights_digest: str, **extract) -> dict:
    """The feature cache's fingerprint of these settings."""
    return fingerprint(weights_digest, ExtractConfig(**extract))


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
    cache = FeatureCache(tmp_path, settings(**BASE))
    assert cache.get("ab" * 32, (512,)) is None
    value = np.arange(512, dtype=np.float32)
    cache.put("ab" * 32, value)
    np.testing.assert_array_equal(cache.get("ab" * 32, (512,)), value)
    assert (cache.directory / "fingerprint.json").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [("weights_digest", "abd"), ("image_size", 64), ("interpolation", "nearest"), ("pooling", "max"),
     ("precision", "bfloat16")],
)
def test_every_fingerprint_field_changes_the_key(tmp_path, field, value):
    before = FeatureCache(tmp_path, settings(**BASE))
    before.put("cd" * 32, np.ones(4, np.float32))
    after = FeatureCache(tmp_path, settings(**{**BASE, field: value}))
    assert after.key != before.key
    assert before.get("cd" * 32, (4,)) is not None
    assert after.get("cd" * 32, (4,)) is None


def test_a_feature_does_not_depend_on_its_batch(tiny_weights):
    """Wherever an image sits in a batch, and whatever the batch size, its feature is the same bits: so the
    batch size is no part of the key. A batched VGG16 call failed this on an AVX2-only CPU (the last image of
    a batch 1e-7 off the others), which made a warm run's features differ from a cold run's."""
    from bottleneck_clf.features import encode_batch

    assert settings(**BASE) == settings(**{**BASE, "batch_size": 16})
    model = build_extractor(tiny_weights, 32, "avg")
    pixels = np.random.default_rng(0).uniform(0, 255, (9, 32, 32, 3)).astype(np.float32)
    image = pixels[8]
    alone = encode_batch(model, image[None].copy())[0]
    for size in (2, 8):
        for place in range(size):
            batch = pixels[:size].copy()
            batch[place] = image
            assert encode_batch(model, batch)[place].tobytes() == alone.tobytes(), (size, place)


def test_damaged_entry_is_a_miss(tmp_path):
    cache = FeatureCache(tmp_path, settings(**BASE))
    cache.put("ef" * 32, np.ones(4, np.float32))
    cache.path("ef" * 32).write_bytes(b"\x93NUMPY garbage")
    assert cache.get("ef" * 32, (4,)) is None


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


@pytest.mark.parametrize(("switch", "values"), [("ONEDNN_MAX_CPU_ISA", ("AVX2", "SSE41")),
                                                ("TF_ENABLE_ONEDNN_OPTS", ("0", "1")), ("cores", ())])
def test_another_machine_is_a_miss(prepared, capsys, monkeypatch, feature_cache, switch, values):
    """The machine that computes is in the key (machine.signature: CPU, flags, cores, GPU, oneDNN switches,
    numpy), so a cache shared between machines never serves one the other's round-off. Here this machine is
    made another: a kernel switch in the environment set otherwise, or this thread bound to one core fewer."""
    everything = os.sched_getaffinity(0)
    if switch == "cores" and len(everything) < 2:
        pytest.skip("one core: no fewer to bind to")
    before = os.environ.get(switch)
    assert run_extract(capsys) == (20, 0)
    if switch == "cores":
        os.sched_setaffinity(0, set(sorted(everything)[:-1]))
    else:
        monkeypatch.setenv(switch, next(value for value in values if value != before))
    try:
        assert run_extract(capsys) == (20, 0)
    finally:
        if switch == "cores":
            os.sched_setaffinity(0, everything)
        elif before is None:
            monkeypatch.delenv(switch)
        else:
            monkeypatch.setenv(switch, before)
    assert run_extract(capsys) == (0, 20)  # back on this machine: its own entries
    made_on = [json.loads(path.read_text())["made_on"] for path in feature_cache.glob("*/fingerprint.json")]
    assert len(made_on) == 2 and all(len(machines) == 1 for machines in made_on)
    if switch == "cores":
        assert sorted(machines[0]["cpu"]["cores"] for machines in made_on) == [len(everything) - 1, len(everything)]
    else:
        assert before in {machines[0]["env"][switch] for machines in made_on}
    # meta.json holds the settings, not the machine (metrics/machine/extract_features.json does).
    assert "made_on" not in json.loads((prepared / "data/features/meta.json").read_text())["fingerprint"]


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
from bottleneck_clf.config import ExtractConfig
from bottleneck_clf.features import build_extractor, fill_features, fingerprint
extract = ExtractConfig(image_size=32, interpolation="bilinear", pooling="avg", batch_size=4, precision="float32")
weights, cache_root, out_file, *paths = sys.argv[1:]
import hashlib
import json
digests = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]
cache = FeatureCache(cache_root, fingerprint("w", extract))
model = build_extractor(weights, 32, "avg")
out = np.zeros((len(paths), 512), np.float32)
fill_features(model, paths, digests, out, cache, extract)
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
    cache = FeatureCache(cache_root, fingerprint("w", SMALL))
    model = build_extractor(tiny_weights, 32, "avg")
    again = np.zeros_like(first)
    digests = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]
    assert fill_features(model, paths, digests, again, cache, SMALL) == (0, len(paths))
    np.testing.assert_array_equal(again, first)


def test_two_runs_needing_the_same_new_images_encode_each_once(tmp_path, tiny_weights, capsys):
    """Two queued experiments in two workspaces with one new setting: the second waits for the first's lock,
    then reads its features; without the lock both would miss and encode every image."""
    raw = make_class_folders(tmp_path / "raw", per_class=6)
    paths = [str(p) for p in sorted(raw.rglob("*.png"))]
    digests = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]
    model = build_extractor(tiny_weights, 32, "avg")
    encoded = []
    first_batch = threading.Event()

    def paced_encoder(todo_paths, todo_digests):  # the real VGG16 (fill_features' own), a pause after each batch
        done = 0
        for batch in features_module.iter_features(model, todo_paths, SMALL.image_size, SMALL.interpolation,
                                                   SMALL.batch_size, todo_digests):
            encoded.extend(todo_paths[done : done + len(batch)])
            done += len(batch)
            yield batch
            first_batch.set()
            time.sleep(0.3)  # the other run is started by now and must wait, not encode

    key = settings(**BASE)
    outs = [np.zeros((len(paths), 512), np.float32) for _ in range(2)]
    counts = [None, None]

    def run(i):
        counts[i] = fill_features(model, paths, digests, outs[i], FeatureCache(tmp_path / "cache", key), SMALL,
                                  encode=paced_encoder)

    first = threading.Thread(target=run, args=(0,))
    first.start()
    assert first_batch.wait(30)
    run(1)  # starts while the first holds the lock with 8 images still to go
    first.join(30)
    assert sorted(encoded) == sorted(paths)  # each image once, across both runs
    assert counts == [(len(paths), 0), (0, len(paths))]
    np.testing.assert_array_equal(outs[0], outs[1])
    assert "another process is encoding with these settings; waiting" in capsys.readouterr().err


def test_prune_spares_a_locked_folder(tmp_path):
    cache = FeatureCache(tmp_path, settings(**BASE))
    with cache.encoding():  # a run encoding its first batch: nothing stored yet
        assert prune(tmp_path) == (0, 0, 0)
        assert cache.directory.is_dir() and (cache.directory / LOCK_FILE).exists()
    prune(tmp_path)  # nobody holds it now: the empty folder goes, lock file and all
    assert not cache.directory.exists()
    with cache.encoding():  # and a later run recreates it
        cache.put("aa" * 32, np.ones(8, np.float32))
    np.testing.assert_array_equal(cache.get("aa" * 32, (8,)), np.ones(8, np.float32))


def test_prune_by_age_and_all(tmp_path, capsys, monkeypatch):
    old = FeatureCache(tmp_path, settings(**BASE))
    new = FeatureCache(tmp_path, settings(**{**BASE, "image_size": 64}))
    old.put("aa" * 32, np.ones(8, np.float32))
    new.put("bb" * 32, np.ones(8, np.float32))
    long_ago = time.time() - 40 * 86400
    os.utime(old.path("aa" * 32), (long_ago, long_ago))
    removed, leftovers, freed = prune(tmp_path, older_than_days=30)
    assert removed == 1 and leftovers == 0 and freed > 32
    assert not old.directory.exists() and new.get("bb" * 32, (8,)) is not None
    assert prune(tmp_path, older_than_days=30) == (0, 0, 0)

    monkeypatch.setenv("BOTTLENECK_FEATURE_CACHE", str(tmp_path))
    run_command(["cache", "prune", "--all"])
    assert "removed 1 entries and 0 unfinished writes" in capsys.readouterr().out
    assert not any(tmp_path.rglob("*.npy"))


def test_fingerprint_key_is_stable():
    assert fingerprint_key({"b": 1, "a": 2}) == fingerprint_key({"a": 2, "b": 1})


# --- Features that cannot be stale -------------------------------------------------------------------------


def run_extract_in(project: Path) -> tuple[int, int]:
    """The stage in a fresh interpreter in `project`, so that the copy's own code is what runs."""
    result = subprocess.run([sys.executable, "-m", "stages.extract_features"], cwd=project, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    encoded, cached = re.search(r"(\d+) encoded, (\d+) from the cache", result.stdout).groups()
    return int(encoded), int(cached)


DECODE_ON_RAY = '    """A Ray task on any node: bytes to resized float32 pixels, as the local engine decodes them."""\n'
CONNECT_TO_RAY = "        if self.address:\n            check_reachable(self.address)\n"


@pytest.mark.parametrize(("module", "edit", "miss"), [
    # Changes no feature, but nobody bumped anything: only a digest of the code can notice the edit.
    ("images.py", lambda text: text + "\n\ndef unused_helper():\n    return None\n", True),
    # What a Ray cluster's nodes run to decode: it reaches the model as much as the local path does.
    ("engine.py", lambda text: text.replace(DECODE_ON_RAY, DECODE_ON_RAY + "    # an edit\n"), True),
    # How the engine reaches a cluster: no value goes through it, so the cache stays.
    ("engine.py", lambda text: text.replace(CONNECT_TO_RAY, "        # an edit\n" + CONNECT_TO_RAY), False),
], ids=["images", "engine-decode", "engine-connect"])
def test_edited_feature_code_is_a_miss(prepared, capsys, module, edit, miss):
    assert run_extract(capsys) == (20, 0)
    assert run_extract_in(prepared) == (0, 20)  # the same code in another interpreter: the same key
    source = prepared / "bottleneck_clf" / module
    edited = edit(source.read_text())
    assert edited != source.read_text()
    source.write_text(edited)
    assert run_extract_in(prepared) == ((20, 0) if miss else (0, 20))


def test_frozen_maps_key_follows_their_code(tmp_path, tiny_weights):
    from bottleneck_clf.finetune import FrozenMaps, map_shape, split_layer
    from bottleneck_clf.vgg_weights import read_weights

    frozen = FrozenMaps(read_weights(tiny_weights), SMALL, 1, tmp_path)
    assert frozen.cache.fingerprint["frozen_maps_code"] == source_digest(FrozenMaps, split_layer, map_shape)
    assert frozen.cache.fingerprint["code"] == source_digest(*feature_code())
    assert frozen.cache.fingerprint["made_on"] == [signature()]  # the machine that computes the maps


def digests_of(paths: list[str]) -> list[str]:
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


@pytest.mark.parametrize("warm", [False, True], ids=["encoded", "from-cache"])
def test_image_changed_after_prepare_stops_extract(prepared, capsys, feature_cache, warm):
    if warm:
        assert run_extract(capsys) == (20, 0)
    raw = prepared / "data/raw"
    manifest_digest = hashlib.sha256((raw / "cats/003.png").read_bytes()).hexdigest()
    write_image(raw / "cats/003.png", (1, 2, 3), seed=777)  # `dvc repro -s extract_features` after this
    with pytest.raises(ChangedImage, match=r"^\S*data/raw/cats/003\.png: changed since `prepare`.*run `dvc repro`"):
        extract_features.main()
    if not warm:
        stored = {p.stem for p in feature_cache.rglob("*.npy")}
        assert manifest_digest not in stored, "the new bytes' features were stored under the old digest"


def test_image_changed_after_prepare_stops_frozen_maps(tmp_path, tiny_weights):
    from bottleneck_clf.finetune import FrozenMaps
    from bottleneck_clf.vgg_weights import read_weights

    raw = make_class_folders(tmp_path / "raw", per_class=3)
    paths = [str(p) for p in sorted(raw.rglob("*.png"))]
    digests = digests_of(paths)
    write_image(Path(paths[4]), (9, 9, 9), seed=99)
    frozen = FrozenMaps(read_weights(tiny_weights), SMALL, 1, tmp_path / "cache")
    with pytest.raises(ChangedImage, match=re.escape(paths[4]) + ": changed since `prepare`"):
        frozen.compute(paths, digests, tmp_path / "maps.npy", desc="frozen")
    assert not (frozen.cache.directory / digests[4][:2] / f"{digests[4]}.npy").exists()


def test_wrong_shape_or_dtype_is_a_miss(tmp_path):
    cache = FeatureCache(tmp_path, settings(**BASE))
    cache.put("aa" * 32, np.ones(1, np.float32))  # e.g. written by an older, buggy version
    cache.put("bb" * 32, np.ones(512, np.float64))
    assert cache.get("aa" * 32, (512,)) is None
    assert cache.get("bb" * 32, (512,)) is None
    assert cache.get("bb" * 32, (512,), np.float64) is not None


def test_wrong_shape_entry_is_recomputed_not_broadcast(tmp_path, tiny_weights):
    raw = make_class_folders(tmp_path / "raw", per_class=2)
    paths = [str(p) for p in sorted(raw.rglob("*.png"))]
    digests = digests_of(paths)
    model = build_extractor(tiny_weights, 32, "avg")
    fresh = np.zeros((len(paths), 512), np.float32)
    fill_features(model, paths, digests, fresh, None, SMALL)
    cache = FeatureCache(tmp_path / "cache", settings(**BASE))
    for digest in digests:
        cache.put(digest, np.full(1, 7.0, np.float32))  # would broadcast into a whole row
    out = np.zeros_like(fresh)
    assert fill_features(model, paths, digests, out, cache, SMALL) == (len(paths), 0)
    np.testing.assert_array_equal(out, fresh)
    assert cache.get(digests[0], (512,)) is not None  # replaced by the right value


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: feature cache")]


def test_cache_that_is_not_a_folder_warns_once_and_the_stage_finishes(prepared, capsys, monkeypatch, tmp_path):
    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("a file where the cache folder should be")
    monkeypatch.setenv("BOTTLENECK_FEATURE_CACHE", str(not_a_folder))
    extract_features.main()
    captured = capsys.readouterr()
    assert "20 encoded, 0 from the cache" in captured.out
    assert len(warnings_in(captured.err)) == 1, captured.err
    assert "BOTTLENECK_FEATURE_CACHE" in warnings_in(captured.err)[0]
    assert load_split(prepared / "data/features", "train")[0].shape == (12, 512)


def test_full_disk_warns_once_and_the_stage_finishes(prepared, capsys, monkeypatch, feature_cache):
    real_replace = os.replace

    def replace(source, target):
        if Path(target).is_relative_to(feature_cache):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    extract_features.main()
    captured = capsys.readouterr()
    assert "20 encoded, 0 from the cache" in captured.out
    assert len(warnings_in(captured.err)) == 1, captured.err
    assert "No space left on device" in captured.err
    assert not list(feature_cache.rglob("*.npy")) and not list(feature_cache.rglob("*.tmp"))
    assert load_split(prepared / "data/features", "train")[0].shape == (12, 512)


def test_entry_pruned_while_being_read_is_still_returned(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path, settings(**BASE))
    cache.put("aa" * 32, np.arange(8, dtype=np.float32))
    real_utime = os.utime

    def prune_first(path, *args, **kwargs):  # prune runs between the reader's np.load and its utime
        prune(tmp_path)
        real_utime(path, *args, **kwargs)

    monkeypatch.setattr(os, "utime", prune_first)
    np.testing.assert_array_equal(cache.get("aa" * 32, (8,)), np.arange(8, dtype=np.float32))


def test_prune_spares_a_folder_being_written_into(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path, settings(**BASE))  # a writer that has stored nothing yet
    real_replace = os.replace
    pruned = []

    def prune_first(source, target):  # prune runs while the writer's temporary file is complete
        if not pruned:
            pruned.append(prune(tmp_path))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", prune_first)
    cache.put("aa" * 32, np.ones(8, np.float32))
    assert pruned == [(0, 0, 0)]
    assert cache.writable
    np.testing.assert_array_equal(cache.get("aa" * 32, (8,)), np.ones(8, np.float32))


def test_writer_recreates_folders_pruned_under_it(tmp_path, monkeypatch):
    from bottleneck_clf import atomic

    cache = FeatureCache(tmp_path, settings(**BASE))
    real_create = atomic._create
    pruned = []

    def prune_first(*args, **kwargs):  # prune runs between the writer's mkdir and its temporary file
        if not pruned:
            pruned.append(prune(tmp_path))
        return real_create(*args, **kwargs)

    monkeypatch.setattr(atomic, "_create", prune_first)
    cache.put("aa" * 32, np.ones(8, np.float32))
    assert pruned and cache.writable
    np.testing.assert_array_equal(cache.get("aa" * 32, (8,)), np.ones(8, np.float32))
    assert (cache.directory / "fingerprint.json").exists()


def test_prune_removes_stale_temporary_files_only(tmp_path, capsys, monkeypatch):
    cache = FeatureCache(tmp_path, settings(**BASE))
    cache.put("aa" * 32, np.ones(8, np.float32))
    shard = cache.path("aa" * 32).parent
    killed = shard / f".{'bb' * 32}.npy.k1ll3d.tmp"  # a writer killed before its rename
    killed.write_bytes(b"half an entry")
    long_ago = time.time() - 2 * 3600
    os.utime(killed, (long_ago, long_ago))
    live = shard / f".{'cc' * 32}.npy.l1v3.tmp"  # a writer busy right now
    live.write_bytes(b"being written")
    assert prune(tmp_path, older_than_days=30) == (0, 1, len(b"half an entry"))
    assert not killed.exists() and live.exists() and cache.path("aa" * 32).exists()
    monkeypatch.setenv("BOTTLENECK_FEATURE_CACHE", str(tmp_path))
    run_command(["cache", "prune", "--all"])
    assert "removed 1 entries and 0 unfinished writes" in capsys.readouterr().out
    assert live.exists(), "prune --all removed a live writer's file"


def test_prune_never_touches_files_the_cache_did_not_write(tmp_path, capsys, monkeypatch):
    """BOTTLENECK_FEATURE_CACHE pointed at a folder that holds a user's own arrays: `cache prune --all` removes
    the cache's entries and leaves every other file and folder as it was."""
    cache = FeatureCache(tmp_path, settings(**BASE))
    cache.put("aa" * 32, np.ones(8, np.float32))
    own = [tmp_path / "experiments/embeddings.npy", tmp_path / "experiments/ab/old.npy",
           tmp_path / "ab/" / f"{'ab' * 32}.npy",  # named like an entry, but not in a cache folder
           cache.directory / "notes/kept.npy", cache.directory / "aa" / "mine.npy",
           tmp_path / "experiments/.draft.tmp"]
    for path in own:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"a user's file")
    long_ago = time.time() - 400 * 86400
    for path in own:
        os.utime(path, (long_ago, long_ago))
    monkeypatch.setenv("BOTTLENECK_FEATURE_CACHE", str(tmp_path))
    run_command(["cache", "prune", "--all"])
    assert "removed 1 entries and 0 unfinished writes" in capsys.readouterr().out
    assert not cache.path("aa" * 32).exists()
    for path in own:
        assert path.is_file(), f"prune removed {path}"


def test_prune_clears_a_cache_folder_whose_description_a_killed_writer_never_finished(tmp_path):
    cache = FeatureCache(tmp_path, settings(**BASE))
    cache.put("aa" * 32, np.ones(8, np.float32))
    (cache.directory / "fingerprint.json").rename(cache.directory / f".fingerprint.json.{'k' * 8}.tmp")
    long_ago = time.time() - 2 * 3600
    os.utime(cache.directory / f".fingerprint.json.{'k' * 8}.tmp", (long_ago, long_ago))
    entries, leftovers, _ = prune(tmp_path)
    assert (entries, leftovers) == (1, 1)
    assert not cache.directory.exists()
