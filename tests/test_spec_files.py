"""Spec files that are not ordinary text files: devices, FIFOs, huge or sparse files. Each
gets a located error after reading at most the size limit plus one byte; none hangs."""

from __future__ import annotations

import os
import signal

import pytest

from nlc.cli import main
from nlc.errors import NlcError
from nlc.fileio import MAX_SPEC_BYTES, read_bounded
from nlc.pipeline import read_spec


@pytest.fixture
def no_hang():
    """Turn a blocking read into a failure instead of a stuck test run."""
    def _hang(signum, frame):
        raise AssertionError("reading the spec blocked")
    old = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_dev_zero_is_refused_without_reading(no_hang):
    with pytest.raises(NlcError) as info:
        read_spec("/dev/zero")
    assert "not a regular file" in info.value.message


def test_fifo_without_a_writer_is_refused(tmp_path, no_hang):
    fifo = tmp_path / "spec.nl"
    os.mkfifo(fifo)
    with pytest.raises(NlcError) as info:
        read_spec(str(fifo))
    assert "not a regular file" in info.value.message


def test_huge_sparse_file_reads_only_past_the_limit(tmp_path):
    big = tmp_path / "big.nl"
    with open(big, "wb") as f:
        f.truncate(1 << 36)  # 64 GiB of holes: reading it whole would exhaust memory
    assert len(read_bounded(str(big), MAX_SPEC_BYTES)) == MAX_SPEC_BYTES + 1
    with pytest.raises(NlcError) as info:
        read_spec(str(big))
    assert "larger than" in info.value.message


def test_symlink_to_a_regular_file_is_read(tmp_path):
    target = tmp_path / "a.nl"
    target.write_text("layer A { }\n")
    link = tmp_path / "b.nl"
    link.symlink_to(target)
    assert read_spec(str(link)) == "layer A { }\n"


def test_directory_and_missing_file():
    with pytest.raises(NlcError, match="is a directory"):
        read_spec("/")
    with pytest.raises(NlcError, match="no such file"):
        read_spec("/nonexistent/spec.nl")


@pytest.mark.parametrize("command", [["check"], ["fmt"], ["fmt", "--check"], ["derive"]])
def test_cli_refuses_dev_zero(command, capsys, no_hang):
    assert main([*command, "/dev/zero"]) == 2
    err = capsys.readouterr().err
    assert "/dev/zero" in err and "not a regular file" in err


def test_training_spec_text_refuses_dev_zero(no_hang):
    from nlc.runtime.trainer.mixers import spec_text
    with pytest.raises(NlcError, match="not a regular file"):
        spec_text("/dev/zero")
