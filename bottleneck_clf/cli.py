"""The project's tools as one command with subcommands, `bottleneck COMMAND`, the way `dvc` and `git` work.

    bottleneck predict MODEL IMAGE_OR_DIR... [--output preds.csv] [--classes classes.json] [--batch-size N]
    bottleneck check-repro [--rev REV] [--strict | --metrics-only] [--tolerance X]
    bottleneck cache prune [--older-than DAYS | --all]
    bottleneck demo [--out DIR] [--per-class N] [--size PX]

`python -m bottleneck_clf ...` is the same command. The pipeline's stages are not here: `dvc repro` runs them
(`python -m stages.<name>`, from the project root). A user's mistake prints `bottleneck <command>: error: ...`
and exits 1 (bottleneck_clf/errors.py); wrong arguments print the usage and exit 2, as argparse does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bottleneck_clf import errors

PROG = "bottleneck"


def _predict(args: argparse.Namespace) -> int:
    from bottleneck_clf.predict import predict

    return predict(args.model, args.images, args.output, args.classes, args.batch_size)


def _check_repro(args: argparse.Namespace) -> int:
    from bottleneck_clf.repro_check import check_repro

    return check_repro(args.rev, args.tolerance, args.mode)


def _cache_prune(args: argparse.Namespace) -> int:
    from bottleneck_clf.feature_cache import feature_cache_dir, prune

    root = feature_cache_dir()
    pruned = prune(root, None if args.all else args.older_than)
    print(f"cache prune: removed {pruned.entries} entries and {pruned.leftovers} unfinished writes "
          f"({pruned.freed / 1e6:.1f} MB) from {root}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from bottleneck_clf.demo import write_demo_set

    raw, n_files = write_demo_set(args.out, args.per_class, args.size)
    print(f"demo: wrote {n_files} digit images (10 classes, {args.size}x{args.size} PNG) into {raw}")
    return 0


def _nonnegative(value: str) -> float:
    number = float(value)
    if not number >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return number


def _per_class(value: str) -> int:
    from bottleneck_clf.demo import MAX_PER_CLASS

    number = int(value)
    if not 1 <= number <= MAX_PER_CLASS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_PER_CLASS}, got {value}")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The `bottleneck` parser; each subcommand sets `handler` and `name` (for error messages)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].strip(),
                                     epilog="`bottleneck COMMAND --help` describes each command's options.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    # The tools' modules are imported only by the command that runs (predict loads TensorFlow).
    predict = commands.add_parser(
        "predict", help="classify image files with an exported model",
        description="Classify image files with an exported model (data/models/classifier/model.keras). "
                    "Prints path,class,probability per image, or writes every class's probability to --output; "
                    "unreadable files are reported and skipped, and the exit status is 1 only when no image "
                    "could be classified.")
    predict.add_argument("model", type=Path, help="an exported model: model.keras, saved_model/, *.tflite or "
                                                  "model.onnx (in data/models/classifier/)")
    predict.add_argument("images", nargs="+", help="image files or folders")
    predict.add_argument("--output", type=Path, help="write a CSV with every class's probability here")
    predict.add_argument("--classes", type=Path, help="classes.json (default: the one beside MODEL)")
    predict.add_argument("--batch-size", type=_positive_int, default=32, help="images per model call (default 32)")
    predict.set_defaults(handler=_predict, name="predict")

    check = commands.add_parser(
        "check-repro", help="check that the committed dvc.lock and metrics reproduce",
        description="Check that the committed results reproduce: regenerate the inputs if absent, name every "
                    "stale stage, rerun every stage from scratch and compare output hashes (on the machine that "
                    "made dvc.lock) or metrics within tolerances (on another). Exit 0 when they reproduce, 1 with "
                    "one line per finding.")
    check.add_argument("--rev", default="HEAD", help="the commit whose dvc.lock and metrics to check (HEAD)")
    mode = check.add_mutually_exclusive_group()
    mode.add_argument("--strict", action="store_const", const="strict", dest="mode",
                      help="compare every output hash and exact metrics whatever machine made dvc.lock")
    mode.add_argument("--metrics-only", action="store_const", const="metrics", dest="mode",
                      help="compare metrics only (within the tolerances), whatever machine made dvc.lock")
    check.add_argument("--tolerance", type=_nonnegative, default=None,
                       help="one absolute tolerance for every metric instead of the built-in table")
    check.set_defaults(mode="auto", handler=_check_repro, name="check-repro")

    cache = commands.add_parser("cache", help="manage the feature cache",
                                description="Manage the feature cache (BOTTLENECK_FEATURE_CACHE, default "
                                            "~/.cache/bottleneck-classifier/features).")
    cache_commands = cache.add_subparsers(title="commands", metavar="COMMAND", required=True)
    prune = cache_commands.add_parser(
        "prune", help="drop entries unused for a number of days, or everything",
        description="Prune the feature cache: drop entries unused for a number of days, or everything. Safe while "
                    "stages use the cache: it removes files one by one and only empty folders.")
    group = prune.add_mutually_exclusive_group()
    group.add_argument("--older-than", type=_nonnegative, default=30.0, metavar="DAYS",
                       help="remove entries not used for DAYS days (default 30)")
    group.add_argument("--all", action="store_true", help="remove every entry")
    prune.set_defaults(handler=_cache_prune, name="cache prune")

    demo = commands.add_parser(
        "demo", help="write the demo image set (scikit-learn's digits as PNGs) into data/raw",
        description="Write a small real image set into data/raw: scikit-learn's bundled 8x8 digits, upscaled to "
                    "PNG. It never touches a data/raw that holds anything but an earlier demo.")
    demo.add_argument("--out", type=Path, default=None, help="target folder (default: paths.raw in dvc.yaml)")
    demo.add_argument("--per-class", type=_per_class, default=40, help="images per digit, at most 170 (default 40)")
    demo.add_argument("--size", type=_positive_int, default=64,
                      help="side of the saved PNGs in pixels (default 64)")
    demo.set_defaults(handler=_demo, name="demo")
    return parser


def run_command(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the subcommand; its exit status. A UserError propagates (for tests and callers)."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


def main(argv: list[str] | None = None) -> None:
    """The `bottleneck` console script: exits with the subcommand's status, a UserError as its message alone."""
    args = build_parser().parse_args(argv)
    errors.run(lambda: args.handler(args), f"{PROG} {args.name}")
