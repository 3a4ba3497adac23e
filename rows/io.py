"""Reading and appending JSON Lines rows: each row flushed and fsynced as written; a torn last
line (a crash mid-write) is tolerated when reading and cut off before the next append."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator

from .schema import KINDS, clean


class RowError(ValueError):
    """A JSON Lines file or row that does not follow the schema."""


def repair_tail(path: str | Path, *, quiet: bool = False) -> int:
    """Cut a partial last line (no newline at the end of the file) left by a crash; returns the
    bytes removed (0 when the file ends cleanly) and says so on stderr."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if _complete_row(data[keep:]):  # the row was written whole, only its newline was lost: keep it
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
            if not quiet:
                print(f"{path}: the last row had no newline (a write cut short by a crash); added it, the row is kept",
                      file=sys.stderr)
            return 0
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    removed = len(data) - keep
    if not quiet:
        print(f"{path}: removed a partial last line ({removed} bytes, a write cut short by a crash); "
              "its condition is measured again", file=sys.stderr)
    return removed


def _complete_row(line: bytes) -> bool:
    """Whether a last line without its newline is still a whole row (read_rows counts it as done)."""
    try:
        row = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(row, dict)


def append_rows(path: str | Path, rows: Iterable[dict]) -> int:
    """Append rows to a JSON Lines file, one flushed and fsynced line each (a crash loses none),
    after cutting a partial last line, so a row is never glued onto a fragment."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_tail(path)
    n = 0
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(clean(row), allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            n += 1
    return n


def read_rows(path: str | Path) -> Iterator[dict]:
    """Rows of a JSON Lines file. A torn last line (a crash mid-write) is skipped; any other
    malformed line is an error naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RowError(f"cannot read rows file {str(path)!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise RowError(f"{path}: not JSON Lines (not UTF-8 text)") from None
    lines = text.splitlines()
    torn = bool(text) and not text.endswith("\n")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) and torn and line.lstrip().startswith("{"):
                continue  # the last write was cut short; resume redoes that condition
            raise RowError(f"{path}:{i}: not JSON Lines ({e.msg}); each line must be one JSON object, "
                           "as vtc commands write them") from None
        if not isinstance(row, dict) or row.get("kind") not in KINDS:
            raise RowError(f"{path}:{i}: not a row of this suite (kind must be one of {', '.join(KINDS)})")
        yield row
