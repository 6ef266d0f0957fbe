"""The Ray engine on a real two-node Ray cluster on this machine: bitwise the local engine's features, only
cache misses sent, a killed actor retried, an unreachable address and a missing Ray reported as messages."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest
import ray  # the [ray] extra, which CI installs: a missing one fails here, it never skips
from conftest import make_class_folders, update_params

from bottleneck_clf.config import ExtractConfig, RayConfig
from bottleneck_clf.engine import RayEngine, choose
from bottleneck_clf.errors import UserError
from bottleneck_clf.features import ChangedImage, load_split
from bottleneck_clf.finetune import FrozenMaps
from bottleneck_clf.machine import signature
from bottleneck_clf.vgg_weights import read_weights
from stages import evaluate, extract_features, finetune, finetune_ensemble, prepare, train_head, weights

pytestmark = pytest.mark.slow
SPLITS = ("train", "validation", "test")
ACTOR = "VggActor"  # Ray names the actor processes after the callable class: ray::MapWorker(MapBatches(VggActor))


@pytest.fixture(scope="module")
def cluster():
    """A head and a second node, each a real raylet with its own workers, on loopback."""
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 2, "object_store_memory": 80 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()  # a driver still connected to a node would stop the cluster from removing it
    cluster.shutdown()


@pytest.fixture
def on_cluster(cluster, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    return cluster


def run_extract(capsys) -> str:
    extract_features.main()
    return capsys.readouterr().out


def encoded(out: str) -> int:
    return int(out.split(" encoded,")[0].rsplit(" ", 1)[1])


def features(project: Path) -> dict[str, np.ndarray]:
    return {split: np.array(load_split(project / "data/features", split)[0]) for split in SPLITS}


def assert_bitwise_equal(a: dict, b: dict) -> None:
    for split in SPLITS:
        assert a[split].dtype == b[split].dtype and a[split].shape == b[split].shape, split
        assert a[split].tobytes() == b[split].tobytes(), f"{split}: max diff {np.abs(a[split] - b[split]).max()}"


def test_ray_features_equal_local_and_only_misses_go_to_the_cluster(project, on_cluster, feature_cache, capsys):
    make_class_folders(project / "data/raw", per_class=12)  # 24 images, batch 8: 2 train batches, a padded one
    weights.main()
    prepare.main()
    update_params(project, {"ray": {"engine": "local"}})
    out = run_extract(capsys)
    assert encoded(out) == 24 and "device: CPU" in out
    local = features(project)

    shutil.rmtree(feature_cache)  # cold again: every image goes to the cluster
    update_params(project, {"ray": {"engine": "auto"}})  # RAY_ADDRESS is set
    out = run_extract(capsys)
    assert encoded(out) == 24, out
    assert f"device: Ray at {on_cluster.address}: 2 node(s)" in out and "2 VGG16 actor(s)" in out, out
    assert_bitwise_equal(features(project), local)
    # The record names the machine the actors ran on (here this one, so check-repro may compare strictly).
    made_on = json.loads((project / "metrics/machine/extract_features.json").read_text())
    assert made_on == {"stage": "extract_features", **signature()}

    update_params(project, {"ray": {"engine": "local"}})  # switching back re-encodes nothing
    out = run_extract(capsys)
    assert encoded(out) == 0 and "24 from the cache" in out
    assert_bitwise_equal(features(project), local)

    make_class_folders(project / "data/raw", per_class=14)  # 2 new images per class: 4 new files
    prepare.main()
    update_params(project, {"ray": {"engine": "ray"}})
    out = run_extract(capsys)
    assert encoded(out) == 4 and "24 from the cache" in out, out
    with_new = features(project)
    shutil.rmtree(feature_cache)
    update_params(project, {"ray": {"engine": "local"}})
    run_extract(capsys)
    assert_bitwise_equal(with_new, features(project))

    # Mirrored images (extract.flip_tta): the actors' features equal this process's too.
    update_params(project, {"extract": {"flip_tta": "stack"}, "ray": {"engine": "ray"}})
    out = run_extract(capsys)
    assert encoded(out) == 28 and "28 from the cache" in out, out  # the mirrors only
    on_ray = features(project)
    shutil.rmtree(feature_cache)
    update_params(project, {"ray": {"engine": "local"}})
    run_extract(capsys)
    assert_bitwise_equal(on_ray, features(project))


def test_a_killed_actor_is_retried_and_the_features_are_the_same(project, on_cluster, feature_cache, capsys):
    make_class_folders(project / "data/raw", per_class=30)
    update_params(project, {"extract": {"batch_size": 2}})  # many small batches: the kill lands mid-run
    weights.main()
    prepare.main()
    update_params(project, {"ray": {"engine": "local"}})
    run_extract(capsys)
    local = features(project)
    shutil.rmtree(feature_cache)

    killed, restarted, done = [], set(), threading.Event()

    def actor_pids() -> set[int]:
        return {p.pid for p in psutil.process_iter(["cmdline"]) if ACTOR in " ".join(p.info["cmdline"] or [])}

    def killer():  # as soon as the VGG16 actors are up, kill them all; then watch Ray replace them
        while not done.wait(0.02):
            pids = actor_pids()
            if not killed and pids:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                killed.extend(pids)
            restarted.update(pids - set(killed))

    watcher = threading.Thread(target=killer, daemon=True)
    watcher.start()
    update_params(project, {"ray": {"engine": "ray"}})
    try:
        out = run_extract(capsys)
    finally:
        done.set()
        watcher.join()
    assert killed and encoded(out) == 60, out
    assert restarted, "no actor replaced the killed ones"
    assert_bitwise_equal(features(project), local)


def test_frozen_maps_on_ray_equal_local(tmp_path, tiny_weights, on_cluster):
    """finetune's frozen-block maps are the same job stopped at block4_pool: the same engine serves them."""
    raw = make_class_folders(tmp_path / "raw", per_class=5)
    paths = [str(p) for p in sorted(raw.rglob("*.png"))]
    digests = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]
    extract = ExtractConfig(image_size=32, interpolation="bilinear", pooling="avg", batch_size=4,
                            precision="float32")
    values = read_weights(tiny_weights)
    local = FrozenMaps(values, extract, 1, tmp_path / "local-cache")
    maps_local, n_local, _ = local.compute(paths, digests, tmp_path / "local.npy", "local")
    engine = RayEngine(RayConfig(engine="ray", actors=2, gpus_per_actor=1), on_cluster.address)
    try:
        remote = FrozenMaps(values, extract, 1, tmp_path / "ray-cache", engine)
        maps_ray, n_ray, _ = remote.compute(paths, digests, tmp_path / "ray.npy", "ray")
        assert n_local == n_ray == len(paths) and maps_ray.shape == (len(paths), 2, 2, 512)
        assert np.asarray(maps_ray).tobytes() == np.asarray(maps_local).tobytes()

        # A file that changed after its digest was taken is caught where the cluster reads it, and named.
        Path(paths[3]).write_bytes(Path(paths[0]).read_bytes())
        fresh = FrozenMaps(values, extract, 1, tmp_path / "another-cache", engine)
        with pytest.raises(ChangedImage, match=rf"{paths[3]}: changed since `prepare` hashed it"):
            fresh.compute(paths, digests, tmp_path / "changed.npy", "ray")
    finally:
        engine.close()


def test_a_cluster_with_another_kind_of_node_has_cache_entries_of_its_own(project, on_cluster, feature_cache,
                                                                         tiny_weights, capsys):
    """Where VGG16 runs is in the feature cache's key: a cluster with a node of another kind (here one whose
    raylet, and so its workers, run oneDNN held to AVX2) does not read what this machine cached, and an actor
    on a machine the key does not name (a node that joined after the stage asked) is refused."""
    make_class_folders(project / "data/raw", per_class=4)
    weights.main()
    prepare.main()
    update_params(project, {"ray": {"engine": "local"}})
    assert encoded(run_extract(capsys)) == 8
    here = os.environ.get("ONEDNN_MAX_CPU_ISA")
    with node_of_another_kind(on_cluster) as isa:
        update_params(project, {"ray": {"engine": "ray"}})
        out = run_extract(capsys)
        assert encoded(out) == 8 and "3 node(s)" in out, out
        made_on = max((json.loads(path.read_text())["made_on"] for path in feature_cache.glob("*/fingerprint.json")),
                      key=len)
        assert sorted(str(kind["env"]["ONEDNN_MAX_CPU_ISA"]) for kind in made_on) == sorted([isa, str(here)])
        # Every image cached, the record names the kinds the key names (which made them), not this machine.
        assert encoded(run_extract(capsys)) == 0
        recorded = json.loads((project / "metrics/machine/extract_features.json").read_text())
        assert len(recorded["cpu"]["nodes"]) == 2

        engine = RayEngine(RayConfig(engine="ray", actors=1, gpus_per_actor=0), on_cluster.address)
        try:
            assert sorted(json.dumps(kind, sort_keys=True) for kind in engine.node_signatures()) == sorted(
                json.dumps(kind, sort_keys=True) for kind in made_on)
            engine.kinds = []  # as if every actor's node had joined after the stage asked
            extract = ExtractConfig(image_size=32, interpolation="bilinear", pooling="avg", batch_size=4,
                                    precision="float32")
            paths = [str(p) for p in sorted((project / "data/raw").rglob("*.png"))]
            with pytest.raises(UserError, match="a VGG16 actor ran on a kind of machine the cluster did not have"):
                list(engine.run(read_weights(tiny_weights), extract, "avg", None, paths,
                                [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]))
            # Actors that ask for a GPU where no node has one: one message, not a wait for nodes that never come.
            engine.kinds, engine.gpus_per_actor = None, 1.0
            with pytest.raises(UserError, match=r"no node of the cluster can hold a VGG16 actor \(1 CPU, 1 GPU\)"):
                engine.node_signatures()
        finally:
            engine.close()


def frozen_map_entries(feature_cache: Path) -> dict[str, tuple[list, int]]:
    """{cache key: (the machines it names, images stored)} of the frozen-block maps' entries (their fingerprint
    names the layer they stop at; the features' do not)."""
    found = {}
    for path in feature_cache.glob("*/fingerprint.json"):
        fingerprint = json.loads(path.read_text())
        if fingerprint.get("output"):
            found[path.parent.name] = (fingerprint["made_on"], len(list(path.parent.glob("*/*.npy"))))
    return found


def test_a_finetuned_model_s_frozen_blocks_run_on_the_cluster_in_every_stage(project, on_cluster, feature_cache,
                                                                              capsys):
    """finetune_ensemble (the stop set's maps) and evaluate (the test split's, which finetune never made) run
    the frozen blocks where `ray` says, as finetune does. On a cluster with a node of another kind every map has
    the cluster's key, none this machine's (the two stages once made them here), and each record names the
    cluster's machines and this one."""
    make_class_folders(project / "data/raw", per_class=8)
    update_params(project, {"finetune": {"enabled": True, "ensemble": True, "refit": False, "batch_size": 2},
                            "ray": {"engine": "local"}})
    for stage in (weights, prepare, extract_features, train_head):
        stage.main()
    test_images = json.loads((project / "data/features/meta.json").read_text())["counts"]["test"]
    with node_of_another_kind(on_cluster):
        update_params(project, {"ray": {"engine": "ray"}})
        finetune.main()
        ((key, (made_on, made)),) = frozen_map_entries(feature_cache).items()
        assert len(made_on) == 2 and made == 16 - test_images, made_on  # train and validation, on both kinds
        capsys.readouterr()
        finetune_ensemble.main()
        evaluate.main()
        out = capsys.readouterr().out
    assert frozen_map_entries(feature_cache) == {key: (made_on, 16)}, "maps made outside the cluster"
    for stage in ("finetune_ensemble", "evaluate"):
        assert f"{stage}: frozen blocks: device: Ray at {on_cluster.address}: 3 node(s)" in out, out
        recorded = json.loads((project / f"metrics/machine/{stage}.json").read_text())
        assert len(recorded["cpu"]["nodes"]) == 3 and recorded["cpu"]["nodes"][-1] == signature()["cpu"], recorded
    scored = json.loads((project / "metrics/eval/metrics.json").read_text())
    assert scored["split"] == "test" and scored["model"] == "ensemble" and scored["images"] == test_images, scored


@contextlib.contextmanager
def node_of_another_kind(cluster):
    """A third node whose raylet, and so its workers, run oneDNN held to another instruction set than this
    machine's (the ISA it yields): another kind of machine in the feature cache's key."""
    here = os.environ.get("ONEDNN_MAX_CPU_ISA")
    isa = "AVX2" if here != "AVX2" else "SSE41"
    other = cluster.add_node(num_cpus=2, object_store_memory=80 * 2**20, env_vars={"ONEDNN_MAX_CPU_ISA": isa})
    try:
        cluster.wait_for_nodes()
        yield isa
    finally:
        ray.shutdown()  # a driver still connected to a node would stop the cluster from removing it
        cluster.remove_node(other)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_cluster_fails_fast_naming_the_address(project, monkeypatch, capsys):
    make_class_folders(project / "data/raw", per_class=5)
    weights.main()
    prepare.main()
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    ray.shutdown()  # whatever an earlier test on this worker left connected: this test starts with no Ray
    real_init, inits = ray.init, []

    def init(*args, **kwargs):  # the real ray.init, its calls counted
        inits.append(kwargs.get("address"))
        return real_init(*args, **kwargs)

    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(UserError, match=f"RAY_ADDRESS={address}: no Ray cluster answers there"):
        extract_features.main()
    # The socket probe (engine.check_reachable, CONNECT_TIMEOUT) said so before ray.init, which would retry for
    # minutes: it was never called.
    assert inits == [] and not ray.is_initialized()
    assert not (project / "data/features").exists()  # nothing half-written
    # Stages with no VGG16 to run never connect: the head's evaluate, finetune_ensemble with fine-tuning off.
    update_params(project, {"ray": {"engine": "local"}})
    extract_features.main()
    update_params(project, {"ray": {"engine": "auto"}})
    for stage in (train_head, finetune, finetune_ensemble, evaluate):
        stage.main()
    assert inits == [] and json.loads((project / "metrics/eval/metrics.json").read_text())["model"] == "head"


def test_without_ray_nothing_changes_unless_it_is_chosen(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the [ray] extra were not installed
    monkeypatch.setitem(sys.modules, "ray.data", None)
    auto = RayConfig(engine="auto", actors=0, gpus_per_actor=1)
    assert choose(auto, {}) == "local"
    assert choose(auto, {"RAY_ADDRESS": "10.0.0.1:6379"}) == "local"
    assert "Ray is not installed" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"pip install -e '\.\[ray\]'"):
        choose(RayConfig(engine="ray", actors=0, gpus_per_actor=1), {})
