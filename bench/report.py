"""Where the benchmarks put their figures: bench/results/<name>.md, headed by the machine that measured them.

Figures differ between machines (AVX-512 with native bfloat16 vs AVX2 only: about 2x in float32, more in
bfloat16), so each results file says what it ran on, and README links to the files instead of quoting them.
"""

from __future__ import annotations

import datetime
import platform
import sys
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
LIBRARIES = ("tensorflow", "keras", "numpy", "dvc", "pillow", "scikit-learn")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def machine_lines(libraries: tuple[str, ...] = ()) -> list[str]:
    """Markdown lines naming the CPU, its kernel flags, cores and library versions (LIBRARIES, then `libraries`)."""
    sys.path.insert(0, str(RESULTS.parents[1]))
    from bottleneck_clf.machine import signature

    cpu = signature()["cpu"]
    return [
        f"- CPU: {cpu['model_name']} ({cpu['vendor']} family {cpu['family']} model {cpu['model']}), "
        f"{cpu['cores']} cores usable",
        f"- kernel flags: {' '.join(cpu['flags']) or 'none of AVX2/AVX-512/AMX'} "
        f"(AVX512-BF16: {'yes' if 'avx512_bf16' in cpu['flags'] else 'no, bfloat16 is emulated'})",
        f"- Python {platform.python_version()}, "
        + ", ".join(f"{name} {_version(name)}" for name in LIBRARIES + libraries),
    ]


def write(name: str, title: str, body: list[str], command: str | None = None,
          libraries: tuple[str, ...] = ()) -> Path:
    """Write bench/results/<name>.md: title, when, on what, how to rerun, then `body` (markdown lines)."""
    RESULTS.mkdir(exist_ok=True)
    rerun = command or f"python {' '.join(sys.argv)}"
    lines = [f"# {title}", "", f"Measured {datetime.date.today().isoformat()} with `{rerun}` on:", "",
             *machine_lines(libraries), "", *body, ""]
    target = RESULTS / f"{name}.md"
    target.write_text("\n".join(lines), encoding="utf-8")
    print(f"results written to {target}")
    return target
