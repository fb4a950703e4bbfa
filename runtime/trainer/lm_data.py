"""Byte-level language modeling on text every machine has: the Python standard library.

By default the corpus is the top-level `*.py` files of the running interpreter's standard
library (`sysconfig.get_paths()["stdlib"]`), sorted by name; `lm_files` names other files or
folders (folders are read recursively, in sorted order). Files are split, not bytes: a file's
name decides by its sha256 whether it is held out, so the split does not move when a file is
added. Tokens are bytes (vocabulary 256), so the metric is bits per byte: the mean
cross-entropy in nats divided by ln 2. The numbers depend on the Python version (its
standard library is the text); `summary.json` records which.
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from nlc.errors import NlcError
from nlc.fileio import read_regular

MAX_CORPUS_FILE_BYTES = 8 << 30  # one --lm-files file, read whole


def stdlib_sources() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    if not files:
        raise NlcError(f"no Python sources found in {root}; pass --lm-files PATH")
    return files


def collect_files(paths: list[str]) -> list[Path]:
    """The given files, and every file under the given folders, each list sorted."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise NlcError(f"{name}: no such file or folder (lm_files)",
                           hint="check the path; for a run whose text moved after it started, "
                                "pass --lm-files NEW to nlc eval or nlc train --resume")
    if not files:
        raise NlcError(f"no files under {', '.join(paths)} (lm_files)")
    return files


def split_files(files: list[Path], val_fraction: float) -> tuple[list[Path], list[Path]]:
    """(train, val): the ceil(fraction * n) files with the smallest name hashes are held out."""
    if val_fraction <= 0:
        raise NlcError(f"--lm-val-fraction must be above 0 for an lm run, got {val_fraction:g}: "
                       "the held-out files are its evaluation set",
                       hint="drop it (the default holds out a tenth of the files, at least one)")
    if len(files) < 2:
        raise NlcError(f"lm needs at least 2 files and lm_val_fraction > 0 to hold some out; "
                       f"got {len(files)} file(s)",
                       hint="split the text into two files or more (a whole file is held out "
                            "for evaluation), or pass a folder that holds several")
    ranked = sorted(files, key=lambda p: (hashlib.sha256(p.name.encode()).hexdigest(), str(p)))
    n_val = min(len(files) - 1, max(1, math.ceil(val_fraction * len(files))))
    held = set(ranked[:n_val])
    return [f for f in files if f not in held], [f for f in files if f in held]


def read_bytes(files: list[Path]) -> torch.Tensor:
    """The files' bytes, concatenated in order with a newline between files, as uint8."""
    chunks = []
    for path in files:
        data = read_regular(path, MAX_CORPUS_FILE_BYTES, "the text file",
                            hint="--lm-files reads each file whole into memory: split it "
                                 "into smaller files, or train on a part")
        chunks.append(data + b"\n")
    return torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)


@dataclass
class ByteCorpus:
    train: torch.Tensor  # uint8
    val: torch.Tensor
    files: int
    held_out: tuple[str, ...] = ()  # the held-out files' names, for messages

    @staticmethod
    def load(paths: list[str], val_fraction: float) -> ByteCorpus:
        files = collect_files(paths) if paths else stdlib_sources()
        train_files, val_files = split_files(files, val_fraction)
        return ByteCorpus(read_bytes(train_files), read_bytes(val_files), len(files),
                          tuple(str(p) for p in val_files))

    def train_batch(self, generator: torch.Generator, batch_size: int, seq_len: int):
        """Windows of seq_len + 1 bytes at uniform random offsets: (inputs, targets)."""
        limit = self.train.numel() - seq_len - 1
        if limit < 1:
            raise NlcError(f"the lm training text has {self.train.numel()} bytes, fewer than "
                           f"seq_len + 2 = {seq_len + 2}",
                           hint="give more text (--lm-files) or a shorter --seq-len")
        starts = torch.randint(0, limit, (batch_size,), generator=generator)
        return self._windows(self.train, starts, seq_len)

    def eval_windows(self, seq_len: int, count: int) -> int:
        """How many disjoint windows of the held-out text the eval set uses."""
        available = (self.val.numel() - 1) // seq_len
        if available < 1:
            shown = ", ".join(self.held_out[:3]) + (", ..." if len(self.held_out) > 3 else "")
            raise NlcError(f"the held-out lm text has {self.val.numel()} bytes, fewer than "
                           f"seq_len + 1 = {seq_len + 1}",
                           hint=f"the held-out file(s) {shown} need more text (the files "
                                f"with the smallest name hashes are held out), or use a "
                                f"shorter --seq-len")
        return min(count, available)

    def eval_batch(self, first: int, size: int, seq_len: int):
        """Held-out windows first .. first+size-1, each starting seq_len bytes after the last."""
        starts = torch.arange(first, first + size) * seq_len
        return self._windows(self.val, starts, seq_len)

    @staticmethod
    def _windows(data: torch.Tensor, starts: torch.Tensor, seq_len: int):
        index = starts[:, None] + torch.arange(seq_len + 1)[None, :]
        window = data[index].long()
        return window[:, :-1].contiguous(), window[:, 1:].contiguous()
