"""Prune the feature cache: drop entries unused for a number of days, or everything.

Safe while stages use the cache: it removes files one by one and only empty folders.
"""

from __future__ import annotations

import argparse

from bottleneck_clf.feature_cache import feature_cache_dir, prune


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--older-than", type=float, default=30.0, metavar="DAYS",
                       help="remove entries not used for DAYS days (default 30)")
    group.add_argument("--all", action="store_true", help="remove every entry")
    args = parser.parse_args(argv)
    if not args.all and args.older_than < 0:
        parser.error("--older-than must be >= 0")
    root = feature_cache_dir()
    pruned = prune(root, None if args.all else args.older_than)
    print(f"prune_cache: removed {pruned.entries} entries and {pruned.leftovers} unfinished writes "
          f"({pruned.freed / 1e6:.1f} MB) from {root}")


if __name__ == "__main__":
    main()
