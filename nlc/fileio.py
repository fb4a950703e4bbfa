"""Reading and writing files safely; shared by the compiler and the trainer.

Reads are bounded: `read_spec` reads only regular files, and at most MAX_SPEC_BYTES + 1 bytes
of them, so that `/dev/zero` or a FIFO gets an error instead of exhausting memory or blocking
forever.

Writes are atomic: a temporary file in the same folder, fsynced, then renamed. The temporary
file is created 0600 (mkstemp); before the rename it gets the mode of the file it replaces, or
for a new file the mode an ordinary `open(path, "w")` would give, 0666 less the umask, so
generated files, configs and summaries are as readable as any other file the user writes. A
symlink is written through: the target is replaced and the link kept."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from nlc.errors import NlcError

MAX_SPEC_BYTES = 1 << 20  # the parser refuses longer text given to it directly, too


def read_spec(path: str) -> str:
    """A spec file's text, or an error located at `path` saying why it cannot be read."""
    try:
        data = read_bounded(path, MAX_SPEC_BYTES)
    except FileNotFoundError:
        raise NlcError("no such file", path=path) from None
    except IsADirectoryError:
        raise NlcError("is a directory, not a spec file", path=path) from None
    except OSError as err:
        raise NlcError(f"cannot read: {err.strerror}", path=path) from None
    if data is None:
        raise NlcError("not a regular file (a device, FIFO or socket cannot be a spec)", path=path)
    if len(data) > MAX_SPEC_BYTES:
        raise NlcError(f"spec is larger than {MAX_SPEC_BYTES // 1024} KiB", path=path)
    try:
        return data.decode("utf-8-sig")  # a leading byte order mark (some editors') dropped
    except UnicodeDecodeError as err:
        raise NlcError(f"not UTF-8 text (byte {err.start})", path=path) from None


MAX_TEXT_BYTES = 16 << 20  # a config or a summary is a few KiB


def read_regular(path: str | Path, limit: int, what: str = "file",
                 hint: str | None = None) -> bytes:
    """A regular file's bytes, at most `limit` of them, or an error naming it and saying why
    it cannot be read: missing, unreadable, not a regular file (`/dev/zero`, a FIFO, which
    would exhaust memory or block), or larger than `limit` (with `hint`)."""
    try:
        data = read_bounded(str(path), limit)
    except OSError as err:
        raise NlcError(f"{path}: cannot read {what} ({err.strerror})") from None
    if data is None:
        raise NlcError(f"{path}: {what} is not a regular file (a device, FIFO or socket)")
    if len(data) > limit:
        size = f"{limit >> 30} GiB" if limit >= 1 << 30 else f"{limit >> 20} MiB"
        raise NlcError(f"{path}: {what} is larger than {size}", hint=hint)
    return data


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file (a config, a summary), or an error naming it and saying why it cannot
    be read: as `read_regular` (at most MAX_TEXT_BYTES), or bytes that are not UTF-8."""
    data = read_regular(path, MAX_TEXT_BYTES, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise NlcError(f"{path}: {what} is not UTF-8 text (byte {err.start})") from None


def read_bounded(path: str, limit: int) -> bytes | None:
    """At most `limit + 1` bytes of a regular file; None when `path` is not a regular file.

    O_NONBLOCK keeps opening a FIFO with no writer from blocking; fstat on the open
    descriptor (not the path) means a file swapped in after the check is still refused.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(info.st_mode):
            return None
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def writable_folder(path: Path, what: str = "the output folder") -> None:
    """Create `path` and its parents and check a file can be made in it, so that a read-only
    place or a path under a file is refused before long work, not after it."""
    if path.exists() and not path.is_dir():
        raise NlcError(f"cannot write {what}: a file, not a folder", path=str(path))
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as err:
        raise NlcError(f"cannot write {what}: {(err.strerror or str(err)).lower()}",
                       path=str(path)) from None


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
