"""The machine signature that decides whether output hashes can be compared bit for bit."""

from __future__ import annotations

import json

import pytest

from bottleneck_clf import machine, repro_check

ZEN4 = {"cpu": {"vendor": "AuthenticAMD", "model_name": "AMD EPYC", "family": "25", "model": "17",
                "flags": ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"],
                "cores": 2},
        "device": {"gpu": None},
        "env": {"TF_ENABLE_ONEDNN_OPTS": None, "ONEDNN_MAX_CPU_ISA": None, "TF_NUM_INTRAOP_THREADS": None},
        "versions": {"tensorflow": "2.21.0", "keras": "3.15.1", "numpy": "2.4.6"}}
ZEN3 = {**ZEN4, "cpu": {**ZEN4["cpu"], "model": "1", "flags": ["avx2", "fma"]}}


def test_signature_of_this_machine(monkeypatch):
    """Against what the system's own tools say (lscpu, nproc, pip's metadata), not against machine.py again."""
    import shutil
    import subprocess
    from importlib import metadata

    import tensorflow as tf

    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    sig = machine.signature()
    assert set(sig) == {"cpu", "device", "env", "versions"}
    listed = dict(line.split(":", 1) for line in subprocess.run(["lscpu"], capture_output=True, text=True,
                                                                 check=True).stdout.splitlines() if ":" in line)
    listed = {key.strip(): value.strip() for key, value in listed.items()}
    assert (sig["cpu"]["vendor"], sig["cpu"]["model_name"], sig["cpu"]["family"], sig["cpu"]["model"]) == (
        listed["Vendor ID"], listed["Model name"], listed["CPU family"], listed["Model"])
    assert sig["cpu"]["flags"] == [flag for flag in machine.KERNEL_FLAGS if flag in listed["Flags"].split()]
    assert sig["cpu"]["cores"] == int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)
    assert sig["env"]["TF_ENABLE_ONEDNN_OPTS"] == "0"
    # The GPU: none without an NVIDIA driver (CI's machines); with one, a TensorFlow built for CUDA and every
    # GPU visible, the first that the driver lists.
    smi = shutil.which("nvidia-smi")
    if smi is None:
        assert sig["device"] == {"gpu": None}
    elif tf.config.list_physical_devices("GPU"):  # a TensorFlow with CUDA's libraries: one of the driver's GPUs
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, check=True).stdout.splitlines()
        assert any(line.split(": ", 1)[-1].startswith(f"{sig['device']['gpu']} (") for line in listed), listed
    assert sig["versions"] == {name: metadata.version(name) for name in ("tensorflow", "keras", "numpy")}
    assert machine.differences(sig, machine.signature()) == []


def test_cpuinfo_fields_of_the_first_processor(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 avx512f amx_tile\n\n"
                    "processor\t: 1\nvendor_id\t: Other\n")
    fields = machine._cpuinfo(str(info))
    assert fields["vendor_id"] == "GenuineIntel" and "amx_tile" in fields["flags"]
    assert machine._cpuinfo(str(tmp_path / "absent")) == {}


def test_describe_and_differences():
    assert "avx2 only" in machine.describe(ZEN3)
    assert "avx512f" in machine.describe(ZEN4) and "2 cores" in machine.describe(ZEN4)
    assert machine.differences(ZEN3, ZEN4) == [
        "cpu.flags: ['avx2', 'fma'] -> ['avx2', 'fma', 'avx512f', 'avx512bw', 'avx512vl', 'avx512_vnni', "
        "'avx512_bf16']",
        "cpu.model: 1 -> 17",
    ]
    newer = {**ZEN4, "versions": {**ZEN4["versions"], "tensorflow": "2.22.0"}}
    assert machine.differences(ZEN4, newer) == ["versions.tensorflow: 2.21.0 -> 2.22.0"]
    on_gpu = {**ZEN4, "device": {"gpu": "NVIDIA H100 80GB HBM3"}}
    assert "2 cores, NVIDIA H100 80GB HBM3, tensorflow" in machine.describe(on_gpu)
    assert machine.differences(ZEN4, on_gpu) == ["device.gpu: None -> NVIDIA H100 80GB HBM3"]
    # A record from before the device section compares as another machine: it cannot say it had no GPU.
    older = {key: value for key, value in ZEN4.items() if key != "device"}
    assert machine.differences(older, ZEN4) == []  # None either way: a CPU record reads the same
    assert machine.differences(older, on_gpu) == ["device.gpu: None -> NVIDIA H100 80GB HBM3"]


def test_record_writes_the_signature(tmp_path):
    path = machine.record(tmp_path / "metrics/machine", "train_head")
    data = json.loads(path.read_text())
    assert path.name == "train_head.json" and data["stage"] == "train_head"
    assert data["cpu"] == machine.signature()["cpu"]  # checked against lscpu above
    assert {key: data[key] for key in ("device", "env", "versions")} == {key: machine.signature()[key]
                                                                        for key in ("device", "env", "versions")}


@pytest.mark.parametrize(
    ("requested", "records", "strict", "says"),
    [
        ("auto", {"train_head": ZEN4, "evaluate": ZEN4}, True, "mode: strict: every stage in dvc.lock"),
        ("auto", {"train_head": ZEN4, "evaluate": ZEN3}, False, "stage 'evaluate' was made on AMD EPYC"),
        ("auto", {"train_head": ZEN4, "evaluate": {}}, False, "was made on an unrecorded machine"),
        ("auto", {}, False, "mode: no machine record committed with dvc.lock: comparing metrics"),
        ("strict", {"train_head": ZEN3}, True, "mode: strict (--strict)"),
        ("metrics", {"train_head": ZEN4}, False, "mode: --metrics-only: comparing metrics"),
    ],
)
def test_choose_mode(requested, records, strict, says):
    chosen, line = repro_check.choose_mode(requested, records, ZEN4)
    assert chosen is strict
    assert says in line
    if not strict and requested == "auto" and records:
        assert "avx2 only" in line or "unrecorded" in line
        assert "tolerances: continuous 0.0001, share 0.02, difference 0.0001, size 0.001, count 0" in line


CLUSTER = {**ZEN3, "cpu": {"nodes": [ZEN3["cpu"], ZEN4["cpu"]]}}  # RayEngine.made_on of a cluster of two kinds


@pytest.mark.parametrize(
    ("inputs", "cpus"),
    [
        (None, None),  # the maps were made here: this machine's record
        (ZEN4, None),
        (ZEN3, [ZEN3["cpu"], ZEN4["cpu"]]),  # maps from a Zen 3 node, the model run on this Zen 4
        (CLUSTER, [ZEN3["cpu"], ZEN4["cpu"], ZEN4["cpu"]]),  # one flat list, whatever the inputs' record held
    ],
)
def test_record_with_names_the_inputs_machines_and_this_one(tmp_path, monkeypatch, inputs, cpus):
    """finetune, finetune_ensemble and evaluate, given maps from a Ray cluster: no single machine made their
    floats, so check-repro compares metrics, and says which machines."""
    monkeypatch.setattr(machine, "signature", lambda: ZEN4)
    data = json.loads(machine.record_with(tmp_path, "evaluate", inputs).read_text())
    assert data == {"stage": "evaluate", **(ZEN4 if cpus is None else {**ZEN4, "cpu": {"nodes": cpus}})}
    strict, line = repro_check.choose_mode("auto", {"evaluate": data}, ZEN4)
    assert strict is (cpus is None)
    if cpus is not None:
        assert machine.cpus_of(data["cpu"]) == cpus
        assert "stage 'evaluate' was made on AMD EPYC (AuthenticAMD family 25 model 1), avx2 only, 2 cores and " \
               "AMD EPYC (AuthenticAMD family 25 model 17), avx2 fma avx512f" in line, line
