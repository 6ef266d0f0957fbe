"""Stage `weights`: the ImageNet VGG16 conv base as one Keras `.weights.h5`, from the source in params.yaml."""

from __future__ import annotations

import bottleneck_clf  # noqa: F401  (quiet TensorFlow before it loads)
from bottleneck_clf.config import load_config
from bottleneck_clf.paths import project_paths
from bottleneck_clf.vgg_weights import IMAGENET_DIGEST, weights_digest, write_weights_h5
from bottleneck_clf.weight_sources import load_source


def main() -> None:
    config = load_config()
    target = project_paths()["weights"]
    weights, origin = load_source(config.weights.source)
    digest = weights_digest(weights)
    write_weights_h5(weights, target)
    kind = "the ImageNet release" if digest == IMAGENET_DIGEST else "not the ImageNet release"
    print(f"weights: {origin} -> {target} (conv digest {digest[:16]}..., {kind})")


if __name__ == "__main__":
    from bottleneck_clf.errors import run

    run(main, "weights")
