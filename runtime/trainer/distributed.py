"""Data parallel training over torch.distributed, launched by torchrun or `launch_local`.

    torchrun --standalone --nproc_per_node 2 -m nlc.train_cli train SPEC --task mqar
    nlc train SPEC --task mqar --nproc 2            (the same, relaunched for you)

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them the
run is a single process. The backend is nccl on CUDA (one GPU per local rank) and gloo on
the CPU. Every rank draws the same global batch from (seed, step) and trains on its own
contiguous slice; the loss is normalized by the global number of targets, so the averaged
gradient is the single-process gradient of the whole batch. Only rank 0 writes.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from nlc.errors import NlcError


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda") and not re.fullmatch(r"cuda:\d+", name):
        raise NlcError(f"unknown device '{name}' (expected auto, cpu, cuda or cuda:N)")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise NlcError(f"device '{name}' asked for, but this torch sees no CUDA device")
        if name == "cuda":
            name = f"cuda:{local_rank}"
        count = torch.cuda.device_count()
        if int(name.split(":")[1]) >= count:
            raise NlcError(f"device '{name}': this machine has {count} CUDA device"
                           f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
        device = torch.device(name)
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def setup(device_name: str) -> World:
    """Join the process group torchrun described in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    return World(rank, world_size, local_rank, device)


def teardown(world: World) -> None:
    if world.parallel and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, world: World, some_unused: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around `model` when there are several ranks. `some_unused`:
    a backward pass may leave parameters without a gradient (a segment of a carried
    document whose slow level writes its state but reads it only in a later segment)."""
    if not world.parallel:
        return model
    from torch.nn.parallel import DistributedDataParallel
    ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=some_unused)


def local_slice(batch: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's contiguous share of a global batch (its size must divide evenly)."""
    size = batch.shape[0]
    if size % world.world_size:
        raise NlcError(f"batch_size {size} does not split over {world.world_size} ranks")
    share = size // world.world_size
    return batch[world.rank * share:(world.rank + 1) * share]


def all_reduce_sums(values: dict, world: World) -> dict:
    """Sum a dict of numbers over the ranks (float64 on the CPU under gloo)."""
    if not world.parallel:
        return dict(values)
    keys = sorted(values)
    device = world.device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: (round(v) if isinstance(values[k], int) else v)
            for k, v in zip(keys, t.tolist())}


def barrier(world: World) -> None:
    if world.parallel:
        dist.barrier()


def rank_command(args: list[str]) -> list[str]:
    """One rank of `nlc train --nproc N`: `python -m nlc.train_cli ARGS`."""
    return [sys.executable, "-m", "nlc.train_cli", *args]


def launch_local(nproc: int, args: list[str], grace: float = 10.0) -> int:
    """Run `rank_command(args)` as `nproc` ranks on this machine with the variables torchrun
    would set (a free local MASTER_PORT, RANK, LOCAL_RANK, WORLD_SIZE). The exit status is the
    first failing rank's (2 for a refused input; torchrun's launcher answered any failure
    with a traceback of its own and status 1). When a rank fails, the others get `grace`
    seconds to end on their own (they usually refuse the same input), then are stopped: a
    rank left waiting in a collective would never return."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc)}
    ranks: list = []
    status = 0
    previous = _forward_sigterm(ranks)  # before the first rank starts: none is left behind
    try:
        for r in range(nproc):
            ranks.append(subprocess.Popen(rank_command(args),
                                          env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                                          preexec_fn=_hear_ctrl_c))
        while True:
            codes = [p.poll() for p in ranks]  # every rank polled: any() would stop early
            status = next((c for c in codes if c), 0)
            if status or None not in codes:
                break
            time.sleep(0.05)
    except KeyboardInterrupt:  # the ranks got the same Ctrl-C and save what they can
        status = 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        _stop(ranks, grace)
    return status


def _hear_ctrl_c() -> None:
    """In a rank, before it runs: Ctrl-C (SIGINT) at its default. A launcher started in the
    background by a shell (`nlc train --nproc 2 &`) has SIGINT ignored, its ranks inherit
    that, and Python then installs no KeyboardInterrupt: the forwarded Ctrl-C did nothing and
    the ranks were terminated after the grace period, unsaved."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _forward_sigterm(ranks: list):
    """SIGTERM to the launcher (`kill`, a scheduler) reaches the ranks as the Ctrl-C a
    terminal sends them all: they stop as on Ctrl-C, and the launcher waits for them (it
    died alone, and the ranks trained on to the end). Returns the handler it replaced (None
    off the main thread, where none can be set)."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None

    def forward(signum, frame):
        for p in ranks:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, forward)


def _stop(ranks: list, grace: float) -> None:
    """Wait up to `grace` seconds for the ranks to end, then terminate (and kill) the rest."""
    deadline = time.monotonic() + grace
    for p in ranks:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.terminate()
    for p in ranks:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
