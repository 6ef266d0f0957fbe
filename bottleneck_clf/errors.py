"""A user's mistake is reported as its message alone; a bug in this project keeps its traceback.

Every stage ends with `run(main, "<stage>")` and every `bottleneck` subcommand runs through it, so a
`UserError` (bad params, a missing or malformed input, a folder that cannot be split) prints
`<name>: error: <message>` on stderr and exits 1, the way `dvc` and `git` report mistakes. Anything else,
including a ValueError raised deep inside NumPy or Keras, propagates with its traceback: that is a bug to fix,
not a message to read.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


class UserError(ValueError):
    """A mistake the user can fix from the message alone: it names the file, key or folder and the fix.

    A ValueError, so code and tests that catch ValueError keep working.
    """


def run(main: Callable[[], int | None], name: str) -> NoReturn:
    """Call `main()` and exit with its status (None is 0); a UserError exits 1 with `name: error: message`."""
    try:
        status = main()
    except UserError as exc:
        sys.stdout.flush()
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(status or 0)
