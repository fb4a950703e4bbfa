"""What a run tells while it trains: a progress bar on stderr, metrics as JSON lines.

    step 120/1000  12% |###.........................| loss 3.2145  lr 9.8e-04  41.2k tok/s  eta 1m05s

On a terminal the bar redraws in place (at most ten times a second); otherwise it prints a
line after the first step (so a slow run shows its speed and ETA at once), every
`log_interval` steps, and whenever `heartbeat` seconds passed without a line; that reads well
in CI logs and `tee`d files. No tqdm.

`metrics.jsonl` holds one JSON object per line: `{"kind": "train", "step": ...}` and
`{"kind": "eval", "step": ...}`. A resumed run first drops the lines after its checkpoint,
so the file reads as if the run had never stopped.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from nlc.fileio import read_regular

MAX_METRICS_BYTES = 1 << 30  # a metrics.jsonl of a long run is a few MiB


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_rate(tokens_per_s: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if tokens_per_s >= scale:
            return f"{tokens_per_s / scale:.1f}{unit}"
    return f"{tokens_per_s:.0f}"


class ProgressBar:
    """Step, loss, tokens/s and ETA for steps `start+1 .. total`."""

    def __init__(self, total: int, start: int = 0, every: int = 10, stream=None,
                 enabled: bool = True, width: int = 24, heartbeat: float = 15.0):
        self.total, self.start, self.every, self.width = total, start, every, width
        self.heartbeat = heartbeat
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.live = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.began = self.last_draw = time.perf_counter()

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        done = step - self.start
        eta = (now - self.began) / max(1, done) * (self.total - step)
        filled = int(self.width * step / max(1, self.total))
        bar = "#" * filled + "." * (self.width - filled)
        line = (f"step {step}/{self.total} {100 * step // max(1, self.total):3d}% |{bar}| "
                f"loss {loss:.4f}  lr {lr:.1e}  {format_rate(tokens_per_s)} tok/s  "
                f"eta {format_duration(eta)}")
        if self.live:
            if now - self.last_draw >= 0.1 or step in (self.start + 1, self.total):
                self.stream.write("\r" + line + "\033[K")
                self.stream.flush()
                self.last_draw = now
        elif self._line_due(step, now):
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last_draw = now

    def _line_due(self, step: int, now: float) -> bool:
        return (step == self.start + 1 or step % self.every == 0 or step == self.total
                or now - self.last_draw >= self.heartbeat)

    def message(self, text: str) -> None:
        """A line above the bar (evaluations, checkpoints)."""
        if self.enabled:
            self.stream.write(("\r\033[K" if self.live else "") + text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.live:
            self.stream.write("\n")
            self.stream.flush()


class MetricsLog:
    """Append-only JSON lines, one open-append-close per line: a killed run loses at most a
    torn last line, which `read_metrics` skips."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(strict_json(record, sort_keys=True) + "\n")


def strict_json(value, **options) -> str:
    """`json.dumps` writing a float that is not finite (a diverged loss) as null: JSON has no
    NaN or Infinity, and strict readers (`jq`, browsers) refuse Python's spelling of them."""
    return json.dumps(_finite(value), allow_nan=False, **options)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl. A line that is no record is skipped: a torn last line
    (a killed writer), and as it, bytes that are not UTF-8 JSON, a JSON value that is not an
    object, or a "step" that is not a whole number."""
    data = read_regular(path, MAX_METRICS_BYTES, "the run's metrics")
    records = []
    for line in data.splitlines():
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        step = record.get("step", 0) if isinstance(record, dict) else None
        if isinstance(step, int) and not isinstance(step, bool):
            records.append(record)
    return records


def truncate_metrics(path: str | Path, last_step: int) -> None:
    """Keep only the records up to `last_step` (resuming from the checkpoint at that step)."""
    from nlc.fileio import write_atomic
    path = Path(path)
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    write_atomic(path, "".join(strict_json(r, sort_keys=True) + "\n" for r in kept))
