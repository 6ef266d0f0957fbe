"""Where VGG16 runs: in this process (`local`) or on a Ray cluster (`ray`), for the features and the frozen maps.

The Ray engine is Ray Data's batch-inference shape: the image files are read by Ray tasks pinned to the
driver's node (the one machine that must have `data/raw`) and their bytes travel through Ray's object store,
so the other nodes need no shared storage; decoding and resizing are Ray tasks on any node; VGG16 runs in a
pool of actors (a callable class that builds the model once per actor), and the features stream back to the
driver in order, a few batches at a time, into the feature cache and the memory-mapped `.npy`. Only the
images the cache lacks are sent (features.fill_features decides), and the features equal the local engine's
bit for bit on one machine: the same decode, resize, one image a VGG16 call and preprocessing
(features.resized_pixels and features.encode_batch).

Which engine: `ray.engine` in params.yaml; `auto` (the default) is Ray exactly when `RAY_ADDRESS` names a
cluster and Ray is installed. The features do not depend on the engine, so the choice belongs to the machine
that runs the stage, not to the experiment: with `auto`, pointing a run at a cluster changes no param and
makes DVC rerun nothing (README, "Extraction on a Ray cluster").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bottleneck_clf.config import ExtractConfig, RayConfig
from bottleneck_clf.errors import UserError
from bottleneck_clf.machine import describe

ADDRESS_ENV = "RAY_ADDRESS"
INSTALL = "pip install -e '.[ray]'"
CONNECT_TIMEOUT = 5.0  # seconds to wait for a cluster's address to answer before giving up
# Seconds before node_signatures says it is waiting: a fresh worker imports TensorFlow, and a probe that needs
# a GPU waits for one as an actor would (another experiment's actors may hold them all).
PROBE_PATIENCE = 30.0


def ray_installed() -> bool:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def choose(settings: RayConfig, environ=os.environ) -> str:
    """"local" or "ray", from `ray.engine` and the environment; a UserError when Ray is chosen but absent."""
    address = environ.get(ADDRESS_ENV)
    if settings.engine == "local":
        return "local"
    if settings.engine == "auto":
        if not address:
            return "local"
        if not ray_installed():
            print(f"note: {ADDRESS_ENV}={address} is set but Ray is not installed; VGG16 runs in this process "
                  f"({INSTALL} to use the cluster)", file=sys.stderr)
            return "local"
        return "ray"
    if not ray_installed():
        raise UserError(f"params.yaml: ray.engine is ray but Ray is not installed; run {INSTALL} "
                        "(or set ray.engine to local)")
    return "ray"


@contextlib.contextmanager
def open_engine(settings: RayConfig, environ=os.environ) -> Iterator[RayEngine | None]:
    """The engine for one stage: None for local, else a RayEngine that connects when first used (asking the
    nodes for the feature cache's key, features.made_on) and disconnects when the block ends."""
    if choose(settings, environ) == "local":
        yield None
        return
    engine = RayEngine(settings, environ.get(ADDRESS_ENV) or None)
    try:
        yield engine
    finally:
        engine.close()


def local_device() -> str:
    """Where TensorFlow runs in this process: its GPUs, or the CPU."""
    from bottleneck_clf.machine import cores, gpus

    found = gpus()
    if found:
        return f"device: {len(found)} GPU(s): {', '.join(f'{label} {model}'.strip() for label, model in found)}"
    return f"device: CPU, {cores()} cores (no GPU visible to TensorFlow)"


def device(engine: RayEngine | None) -> str:
    return local_device() if engine is None else engine.describe()


def check_reachable(address: str) -> None:
    """Fail in seconds, naming the address, when nothing listens there (ray.init would retry for minutes)."""
    if address.startswith("ray://"):
        raise UserError(f"{ADDRESS_ENV}={address}: Ray Client addresses are not supported: the images are read "
                        "on the driver's node, so run the stage on a node of the cluster with "
                        f"{ADDRESS_ENV}=<head>:6379 (or auto)")
    if address in ("auto", "local"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"{ADDRESS_ENV}={address}: expected host:port (the head's GCS address, port 6379 by "
                        "default) or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        raise UserError(f"{ADDRESS_ENV}={address}: no Ray cluster answers there ({exc}); start one with "
                        f"`ray start --head`, fix the address, or unset {ADDRESS_ENV} to run locally") from None


class RayEngine:
    """A connection to a Ray cluster (or a Ray started on this machine when no address is given)."""

    def __init__(self, settings: RayConfig, address: str | None):
        self.settings = settings
        self.address = address
        self.connected = False
        self._started_ray = False
        self._weights: dict[int, object] = {}
        self.actors = 0
        self.gpus_per_actor = 0.0
        self.machines: set[str] = set()  # signatures (machine.py) of the processes that ran VGG16
        self.kinds: list[str] | None = None  # node_signatures: those the nodes had when asked

    def connect(self) -> None:
        if self.connected:
            return
        import ray
        import ray.data

        import bottleneck_clf

        if self.address:
            check_reachable(self.address)
        if not ray.is_initialized():
            # The nodes import this very code (its digest is in the cache key), not whatever they have installed.
            runtime_env = {"py_modules": [str(Path(bottleneck_clf.__file__).parent)]}
            try:
                ray.init(address=self.address, runtime_env=runtime_env, log_to_driver=False,
                         logging_level=logging.WARNING, configure_logging=True,
                         **({} if self.address else {"include_dashboard": False}))
            except (ConnectionError, RuntimeError, TimeoutError) as exc:
                raise UserError(f"{ADDRESS_ENV}={self.address}: cannot connect to the Ray cluster ({exc})") from None
            self._started_ray = True
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # features come back in the order the images went out
        context.enable_progress_bars = False  # fill_features shows one
        self.node_id = ray.get_runtime_context().get_node_id()
        resources = ray.cluster_resources()
        self.nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        self.cpus, self.gpus = resources.get("CPU", 0), resources.get("GPU", 0)
        self.gpus_per_actor = self.settings.gpus_per_actor if self.gpus else 0.0
        if self.settings.actors:
            self.actors = self.settings.actors
        elif self.gpus_per_actor:
            self.actors = max(1, int(self.gpus // self.gpus_per_actor))
        else:
            self.actors = self.nodes
        self.connected = True

    def describe(self) -> str:
        where = self.address or "a Ray started on this machine"
        if not self.connected:
            return f"device: Ray at {where} (not connected)"
        per_actor = f"{self.gpus_per_actor:g} GPU" if self.gpus_per_actor else "1 CPU"
        return (f"device: Ray at {where}: {self.nodes} node(s), {self.cpus:g} CPUs, {self.gpus:g} GPUs; "
                f"{self.actors} VGG16 actor(s) with {per_actor} each")

    def made_on(self) -> dict | None:
        """The machine signatures behind the features (for `machine.record`): the kinds of node the cache's key
        names, or without one those of the actors that computed; None when neither is known;
        when they differ, one whose `cpu` lists them all, so that `check-repro` never compares strictly."""
        # The kinds the key names, once asked: cached entries of any of them may sit beside what was encoded.
        texts = set(self.kinds) if self.kinds is not None else self.machines
        if not texts:
            return None
        signatures = [json.loads(text) for text in sorted(texts)]
        if len(signatures) == 1:
            return signatures[0]
        return {**signatures[0], "cpu": {"nodes": [sig["cpu"] for sig in signatures]}}

    def node_signatures(self) -> list[dict]:
        """The machine signatures of the nodes a VGG16 actor may run on, one per kind, each asked of the node by a
        task pinned to it that sees what an actor would (an actor's GPUs; no CPU, so that busy nodes answer
        too). The feature cache's key holds them (features.made_on): where VGG16 runs decides the features'
        round-off. This contacts the cluster even when every image is cached, since the key must be known
        before the cache is read."""
        if self.kinds is None:
            import ray
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            self.connect()
            need = {"CPU": 1, "GPU": self.gpus_per_actor}
            fits = [node["NodeID"] for node in ray.nodes() if node.get("Alive")
                    and all(node["Resources"].get(name, 0) >= amount for name, amount in need.items())]
            if not fits:
                where = f"{ADDRESS_ENV}={self.address}" if self.address else "the Ray started here"
                raise UserError(f"{where}: no node of the cluster can hold a VGG16 actor "
                                f"({', '.join(f'{v:g} {k}' for k, v in need.items() if v)}); start worker nodes "
                                "(the stage asks them what they are before it reads the feature cache, whose key "
                                "names the machines that compute), or set ray.engine to local")
            # max_calls=1: the worker, TensorFlow loaded (a GPU's memory too), exits once it has answered.
            probe = ray.remote(max_calls=1)(signature_text)
            refs = [probe.options(num_cpus=0, num_gpus=self.gpus_per_actor,
                                  scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
                    for node in fits]
            _, waiting = ray.wait(refs, num_returns=len(refs), timeout=PROBE_PATIENCE)
            if waiting:
                print(f"ray: waiting for {len(waiting)} of {len(refs)} node(s) to say what machine they are (the "
                      "feature cache's key names them); a probe that needs a GPU waits for a free one",
                      file=sys.stderr, flush=True)
            self.kinds = sorted(set(ray.get(refs)))
        return [json.loads(text) for text in self.kinds]

    def close(self) -> None:
        if self._started_ray:
            import ray

            ray.shutdown()
        self._started_ray = self.connected = False
        self._weights.clear()
        self.kinds = None  # the next connection may find other nodes

    def encoder(self, weights, extract: ExtractConfig, pooling: str, output: str | None, mirror: bool = False):
        """`encode(paths, digests)` for features.fill_features: the model of build_extractor(weights, ...,
        pooling, output) over the files (flipped left to right with `mirror`) on the cluster, a batch of
        features at a time, in order."""

        def encode(paths: list[str], digests: list[str]):
            return self.run(weights, extract, pooling, output, paths, digests, mirror)

        return encode

    def run(self, weights, extract: ExtractConfig, pooling: str, output: str | None, paths: list[str],
            digests: list[str], mirror: bool = False):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from bottleneck_clf.features import ChangedImage, read_checked

        self.connect()
        if id(weights) not in self._weights:  # once per stage, fetched by each actor (kept: ids are reused)
            self._weights[id(weights)] = (weights, ray.put(weights))
        size = extract.batch_size
        # Absolute: the reading tasks do not run in the driver's working directory.
        rows = ray.data.from_items([{"row": row, "path": os.path.abspath(path), "sha256": digest}
                                    for row, (path, digest) in enumerate(zip(paths, digests, strict=True))],
                                   override_num_blocks=max(1, -(-len(paths) // size)))  # a block per batch
        here = NodeAffinitySchedulingStrategy(self.node_id, soft=False)
        # Reading is I/O on the driver's node (a quarter CPU); decoding is light next to VGG16 (half a CPU, so
        # two share a core) and, having other resources than the actors, is not fused into them by Ray Data:
        # it runs as tasks on any node, beside the model. An explicit strategy, or they would inherit `here`.
        dataset = (
            rows.map_batches(read_files, batch_size=size, num_cpus=0.25, scheduling_strategy=here)
            .map_batches(decode_files, batch_size=size, num_cpus=0.5, scheduling_strategy="SPREAD",
                         fn_kwargs={"image_size": extract.image_size, "interpolation": extract.interpolation})
            .map_batches(VggActor, batch_size=size, compute=ray.data.ActorPoolStrategy(size=self.actors),
                         num_cpus=1, num_gpus=self.gpus_per_actor, scheduling_strategy="SPREAD",
                         fn_constructor_kwargs={"weights": [self._weights[id(weights)][1]],
                                                "image_size": extract.image_size, "pooling": pooling,
                                                "precision": extract.precision, "output": output,
                                                "mirror": mirror})
        )
        expected, known = 0, None if self.kinds is None else set(self.kinds)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            got = np.asarray(batch["row"])
            changed = np.flatnonzero(~np.asarray(batch["ok"], bool))
            if changed.size:
                row = int(got[changed[0]])
                read_checked(paths[row], digests[row])  # raises the user's message
                raise ChangedImage(f"{paths[row]}: changed while it was being read; run `dvc repro`")
            if not np.array_equal(got, np.arange(expected, expected + len(got))):
                raise RuntimeError(f"Ray returned rows {got[:3]}... where row {expected} was due")
            expected += len(got)
            made = {str(text) for text in np.asarray(batch["machine"]).tolist()}
            if known is not None and not made <= known:
                # A node of a new kind that joined after node_signatures: its features do not belong under the
                # cache's key.
                stranger = json.loads(sorted(made - known)[0])
                raise UserError(f"a VGG16 actor ran on a kind of machine the cluster did not have when the stage "
                                f"asked its nodes ({describe(stranger)}), and the feature cache's key names the "
                                "machines that compute; run the stage again: it asks the nodes anew, and with "
                                "this kind in the key it encodes every image again")
            self.machines.update(made)
            yield np.asarray(batch["features"], np.float32)


def read_files(batch: dict) -> dict:
    """A Ray task on the driver's node: each file's bytes, checked against the manifest's sha256."""
    import hashlib

    data, ok = [], []
    for path, digest in zip(batch["path"], batch["sha256"], strict=True):
        content = Path(str(path)).read_bytes()
        ok.append(hashlib.sha256(content).hexdigest() == str(digest))
        data.append(content)
    return {"row": batch["row"], "ok": np.array(ok, bool), "data": np.array(data, dtype=object)}


def decode_files(batch: dict, image_size: int, interpolation: str) -> dict:
    """A Ray task on any node: bytes to resized float32 pixels, as the local engine decodes them."""
    import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
    from bottleneck_clf.features import resized_pixels

    pixels = np.zeros((len(batch["row"]), image_size, image_size, 3), np.float32)
    for i, (data, ok) in enumerate(zip(batch["data"], batch["ok"], strict=True)):
        if ok:  # a changed file is reported by the driver, not decoded
            pixels[i] = resized_pixels(bytes(data), image_size, interpolation)
    return {"row": batch["row"], "ok": batch["ok"], "pixels": pixels}


def signature_text() -> str:
    """This process's machine signature as text (a set member, a Ray return): VggActor's, and node_signatures'
    probe, which runs where an actor would."""
    import bottleneck_clf  # noqa: F401  (quiet TensorFlow before machine.gpus loads it)
    from bottleneck_clf.machine import signature

    return json.dumps(signature(), sort_keys=True)


class VggActor:
    """A Ray actor: builds the frozen conv base once, then encodes batches of pixels as the local engine does."""

    def __init__(self, weights: list, image_size: int, pooling: str, precision: str, output: str | None,
                 mirror: bool = False):
        import ray

        import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
        from bottleneck_clf.features import build_extractor

        (values,) = ray.get(weights) if isinstance(weights[0], ray.ObjectRef) else (weights[0],)
        self.model = build_extractor(values, image_size, pooling, precision, output=output)
        self.mirror = mirror
        self.machine = signature_text()  # where these floats are made (the cache key, check-repro)

    def __call__(self, batch: dict) -> dict:
        from bottleneck_clf.features import encode_batch

        pixels = np.array(batch["pixels"], np.float32)  # a copy: Ray's arrays are read-only, preprocessing is not
        # Ray may hand over more or fewer rows than a batch: encode_batch runs them one image at a time anyway.
        return {"row": batch["row"], "ok": batch["ok"], "features": encode_batch(self.model, pixels, self.mirror),
                "machine": np.array([self.machine] * len(pixels))}
