"""`python -m bottleneck_clf ...`: the `bottleneck` command (bottleneck_clf/cli.py)."""

from bottleneck_clf.cli import main

if __name__ == "__main__":
    main()
