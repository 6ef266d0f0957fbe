"""The exclude list: files the user drops from every split without deleting them.

A plain text file (data/exclude.txt, in git), one path per line relative to the raw data folder, as the
audit's CSVs write them. Blank lines and lines starting with `#` are ignored; text after ` #` on a line is the
reason, shown in prepare's report.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from bottleneck_clf.errors import UserError

REASON = "listed in {file}"


def read_exclude_list(path: str | Path, raw: str | Path) -> dict[str, str]:
    """{path relative to `raw`: why it is excluded}; empty when the file does not exist."""
    path, raw = Path(path), Path(raw)
    if not path.exists():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8, one path "
                        "per line") from None
    listed: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        entry, _, note = line.partition(" #")
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        relative = PurePosixPath(entry.replace("\\", "/"))
        where = f"{path} line {number}"
        if relative.is_absolute() or ".." in relative.parts:
            raise UserError(f"{where}: '{entry}' must be a path inside {raw}, relative to it (like cats/cat.1.jpg)")
        if relative.parts[: len(raw.parts)] == raw.parts:
            raise UserError(f"{where}: '{entry}' starts with the raw data folder; write it relative to {raw} "
                            f"(as '{PurePosixPath(*relative.parts[len(raw.parts):])}')")
        reason = REASON.format(file=f"{path.name} line {number}")
        listed.setdefault(relative.as_posix(), f"{reason}: {note.strip()}" if note.strip() else reason)
    return listed


def apply_exclude_list(candidates: list, listed: dict[str, str]) -> tuple[list, list[tuple[str, str]], list[str]]:
    """(candidates kept, [(path, reason)] left out, listed paths that match no file)."""
    kept = [c for c in candidates if c.path not in listed]
    excluded = sorted((c.path, listed[c.path]) for c in candidates if c.path in listed)
    found = {p for p, _ in excluded}
    return kept, excluded, sorted(p for p in listed if p not in found)
