"""Atomic file writes: a temporary file in the same folder, fsynced, then renamed.

The temporary file is created 0600 (mkstemp); before the rename it gets the mode of the file
it replaces, or for a new file the mode an ordinary `open(path, "w")` would give, 0666 less
the umask, so generated files, configs and summaries are as readable as any other file the
user writes. A symlink is written through: the target
is replaced and the link kept."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def write_atomic(path: str | Path, data: str | bytes) -> None:
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fchmod(f.fileno(), _mode_for(path))
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
