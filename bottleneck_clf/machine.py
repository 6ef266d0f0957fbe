"""Which machine made a result: the facts that decide TensorFlow's float round-off.

oneDNN picks its kernels by the CPU's instruction sets (AVX2, AVX-512, AVX512-BF16, VNNI, AMX) and splits
work by the number of cores, so the same code and inputs give features that agree to about 1e-6 relative
across machines but not bit for bit. Each stage that does float math writes this signature beside its
outputs (`metrics/machine/<stage>.json`); `bottleneck check-repro` compares output hashes only where every recorded
signature equals the current machine's, and metrics within tolerances otherwise (README, "Reproducibility").
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

from bottleneck_clf.atomic import write_json

# Instruction sets that change which oneDNN (and Eigen) kernels run.
KERNEL_FLAGS = ("avx2", "fma", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
# Environment switches that change the kernels on the same CPU.
KERNEL_ENV = ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "TF_NUM_INTRAOP_THREADS")
LIBRARIES = ("tensorflow", "keras", "numpy")
SECTIONS = ("cpu", "device", "env", "versions")


def _cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's fields from /proc/cpuinfo (empty where there is none, as on macOS)."""
    fields: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cores() -> int:
    """The cores this process may use, which is what TensorFlow sizes its thread pools by."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def gpus() -> list[tuple[str, str]]:
    """The GPUs TensorFlow sees in this process, as ('GPU:0', 'NVIDIA H100 80GB HBM3'); [] on a CPU."""
    import tensorflow as tf

    found = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        found.append((gpu.name.split(":", 1)[-1], details.get("device_name", "")))
    return found


def signature() -> dict:
    """This process's signature: CPU identity, kernel-relevant flags, cores, the GPU TensorFlow computes on,
    kernel switches, versions."""
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    return {
        "cpu": {
            "vendor": cpu.get("vendor_id", platform.machine()),
            "model_name": cpu.get("model name", platform.processor() or platform.machine()),
            "family": cpu.get("cpu family"),
            "model": cpu.get("model"),
            "flags": [flag for flag in KERNEL_FLAGS if flag in flags],
            "cores": cores(),
        },
        # GPU kernels round otherwise than CPU ones. The model of the first GPU, where Keras places the work: a
        # Ray actor given one GPU sees it as its first as well, so one machine gives the two the same signature.
        "device": {"gpu": next((model or label for label, model in gpus()), None)},
        "env": {name: os.environ.get(name) for name in KERNEL_ENV},
        "versions": {name: _version(name) for name in LIBRARIES},
    }


def _isa(flags: list[str]) -> str:
    if any(flag.startswith(("avx512", "amx")) for flag in flags):
        return " ".join(flags)
    return "avx2 only" if "avx2" in flags else "no avx2"


def cpus_of(cpu: dict) -> list[dict]:
    """The CPUs a signature's `cpu` section names: itself, or each of its `nodes` (a record of several machines:
    a Ray cluster's kinds, engine.RayEngine.made_on; maps from those and a model run here, record_with)."""
    if "nodes" not in cpu:
        return [cpu]
    return [one for node in cpu["nodes"] for one in cpus_of(node)]


def _describe_cpu(cpu: dict) -> str:
    return (f"{cpu.get('model_name')} ({cpu.get('vendor')} family {cpu.get('family')} model {cpu.get('model')}), "
            f"{_isa(cpu.get('flags') or [])}, {cpu.get('cores')} cores")


def describe(sig: dict) -> str:
    """One line for people: 'AMD EPYC (AuthenticAMD family 25 model 17), avx2 avx512f ..., 2 cores, tf 2.21.0';
    each CPU of a record of several machines, then 'and'."""
    switches = ", ".join(f"{k}={v}" for k, v in sorted(sig.get("env", {}).items()) if v is not None)
    versions = ", ".join(f"{k} {v}" for k, v in sig.get("versions", {}).items())
    gpu = (sig.get("device") or {}).get("gpu")
    cpus = " and ".join(_describe_cpu(cpu) for cpu in cpus_of(sig.get("cpu", {})))
    text = f"{cpus}{', ' + gpu if gpu else ''}, {versions}"
    return f"{text}, {switches}" if switches else text


def differences(recorded: dict, current: dict) -> list[str]:
    """What differs between two signatures, as 'cpu.flags: [...] -> [...]' lines; empty when they match."""
    found = []
    for section in SECTIONS:
        before, after = recorded.get(section) or {}, current.get(section) or {}
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                found.append(f"{section}.{key}: {before.get(key)} -> {after.get(key)}")
    return found


def record(folder: str | Path, stage: str, made_on: dict | None = None) -> Path:
    """Write this machine's signature as `<folder>/<stage>.json`, beside the stage's other outputs.

    `made_on`: the signature of the machines that really computed the floats, when not this one (the nodes of a
    Ray cluster: bottleneck_clf/engine.py).
    """
    target = Path(folder) / f"{stage}.json"
    write_json(target, {"stage": stage, **(made_on or signature())})
    return target


def record_with(folder: str | Path, stage: str, inputs_made_on: dict | None) -> Path:
    """record(), for a stage whose inputs were computed elsewhere and its own floats here: frozen-block maps from
    a Ray cluster's nodes, a model trained or run on them in this process. No single machine made these floats,
    so the signature names both CPUs and `check-repro` never compares them strictly; this machine's alone when
    the inputs came from it too (`inputs_made_on` None or equal)."""
    here = signature()
    if not inputs_made_on or inputs_made_on == here:
        return record(folder, stage)
    # One flat list, the inputs' machines first: a record of several kinds (RayEngine.made_on) is one already.
    return record(folder, stage, {**here, "cpu": {"nodes": [*cpus_of(inputs_made_on["cpu"]), here["cpu"]]}})
