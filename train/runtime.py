"""Where a run executes: the device and (under torchrun) the process group, what the precision
and kernel settings mean there, the clock, warm-up outside it, and the console.

Precision and kernels (``--amp``, ``--channels-last``, ``--sgd``, ``--compile``) run on any
device; ``auto`` turns bf16 autocast and the fused SGD step on for CUDA, and channels_last (NHWC)
on everywhere. (The CPU recipe measures what is fastest on its CPU instead: ``train.cpu``.) Under
``torchrun`` (any number of processes, one included) a process group exists (NCCL on CUDA, gloo
on CPU) and rank 0 writes all files.
"""
from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ppdata.errors import PpdataError
from ppdata.machine import cpu_features, cpu_name
from ppdata.shards import ShardSet

from . import data as D
from .config import Config


@dataclass(frozen=True)
class Kernels:
    """What the precision and kernel settings mean on this device."""

    amp: bool
    channels_last: bool
    sgd: str

    @classmethod
    def of(cls, cfg: Config, device: torch.device) -> "Kernels":
        cuda = device.type == "cuda"
        amp = cfg.amp == "bf16" or (cfg.amp == "auto" and cuda)
        channels_last = True if cfg.channels_last is None else bool(cfg.channels_last)
        sgd = cfg.sgd if cfg.sgd != "auto" else ("fused" if cuda else "foreach")
        return cls(amp, channels_last, sgd)

    def describe(self) -> dict:
        return {"amp": "bf16" if self.amp else "off", "channels_last": self.channels_last, "sgd": self.sgd}


def cpu_has_bf16() -> bool:
    """True when this CPU multiplies bf16 matrices natively (AMX-BF16 or AVX512-BF16): there,
    bf16 autocast is several times faster than float32; elsewhere it is emulated and slower."""
    return bool({"amx_bf16", "avx512_bf16"} & set(cpu_features()))


@dataclass
class Proc:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    ddp: bool = False  # a process group exists (torchrun), even with one process

    @property
    def main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def setup_process(device: str) -> Proc:
    """Device and (under torchrun) the process group. ``device`` is auto, cpu or cuda."""
    ddp = under_torchrun()
    world = int(os.environ.get("WORLD_SIZE", "1")) if ddp else 1
    rank = int(os.environ.get("RANK", "0")) if ddp else 0
    local = int(os.environ.get("LOCAL_RANK", "0")) if ddp else 0
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise PpdataError("--device cuda: no CUDA device is available (use --device cpu)")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif device == "cpu":
        dev = torch.device("cpu")
        if world > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    else:
        raise PpdataError(f"--device must be auto, cpu or cuda, not {device!r}")
    if ddp and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world,
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return Proc(rank, world, local, dev, ddp)


def all_sum(proc: Proc, t: torch.Tensor) -> torch.Tensor:
    if proc.ddp:
        dist.all_reduce(t)
    return t


def all_min(proc: Proc, value: int) -> int:
    """The smallest ``value`` over all processes."""
    if not proc.ddp:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=proc.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def choose_data_mode(cfg: Config, train: ShardSet, proc: Proc) -> str:
    """``--data``, with ``auto`` decided once for all processes from the smallest free memory
    among them: a process choosing differently would run a different number of steps and
    leave the others waiting in an all-reduce."""
    if cfg.data != "auto":
        return cfg.data
    return D.choose_mode("auto", train, proc.device, free=all_min(proc, D.free_memory(proc.device)))


def sync_batchnorm_stats(model: nn.Module, proc: Proc) -> None:
    """Give every process the same BatchNorm running statistics: the mean over processes of
    ``running_mean``/``running_var`` (DDP keeps parameters equal, not these buffers: each process
    updates them from its own last batches). Called before evaluating and checkpointing."""
    if not proc.ddp or proc.world == 1:
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for b in (m.running_mean, m.running_var):
                dist.all_reduce(b)
                b.div_(proc.world)
            dist.broadcast(m.num_batches_tracked, 0)


def ranks_in_sync(model: nn.Module, proc: Proc) -> bool:
    """True when every process holds bit-identical parameters (DDP's invariant) and buffers
    (BatchNorm statistics, after ``sync_batchnorm_stats``)."""
    flat = torch.cat([t.detach().reshape(-1).double() for t in (*model.parameters(), *model.buffers())])
    probe = torch.stack([flat.sum(), (flat * torch.arange(1, len(flat) + 1, device=flat.device)).sum()])
    everyone = [torch.zeros_like(probe) for _ in range(proc.world)]
    dist.all_gather(everyone, probe)
    return all(torch.equal(everyone[0], e) for e in everyone)


class Clock:
    """Seconds between ``start()`` and ``stop()``: CUDA events on a GPU (recorded on the stream,
    no host synchronisation until ``stop``), ``perf_counter`` elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self) -> None:
        if self.cuda:
            self._a = torch.cuda.Event(enable_timing=True)
            self._a.record()
        else:
            self._t = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            b = torch.cuda.Event(enable_timing=True)
            b.record()
            b.synchronize()
            return self._a.elapsed_time(b) / 1000
        return time.perf_counter() - self._t

    def elapsed(self) -> float:
        """Seconds since ``start()`` so far (on a GPU this waits for the device)."""
        if self.cuda:
            torch.cuda.synchronize()
            b = torch.cuda.Event(enable_timing=True)
            b.record()
            b.synchronize()
            return self._a.elapsed_time(b) / 1000
        return time.perf_counter() - self._t


def prewarm(steps: int, model: nn.Module, opt: torch.optim.Optimizer, step: Callable[[], None],
            evaluate: Callable[[], None] | None = None) -> float:
    """Run ``step()`` ``steps`` times and ``evaluate()`` once (cuDNN autotuning, torch.compile,
    allocator growth), then restore the model, the optimiser and the random generators: the run
    continues exactly as if nothing had happened. Returns the seconds spent."""
    if steps <= 0:
        return 0.0
    t = time.perf_counter()
    dev = next(model.parameters()).device
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        for _ in range(steps):
            step()
        if evaluate is not None:
            evaluate()
    model.load_state_dict(saved_model)
    opt.load_state_dict(saved_opt)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t


def synthetic_batch(shape, batch_size: int, classes: int, device: torch.device, seed: int = 0):
    """A random NHWC uint8 batch and labels on ``device`` (for warm-up steps)."""
    g = D.generator(device, seed, 0xC0FFEE)
    x = torch.randint(0, 256, (batch_size, *shape), dtype=torch.uint8, device=device, generator=g)
    y = torch.randint(0, max(1, classes), (batch_size,), device=device, generator=g)
    return x, y


def cpu_estimate(cfg: Config, step_seconds: float, steps: int, epochs: int) -> str:
    """What a run on the CPU will cost, from its first steps, and where faster training is:
    the CPU recipe, or a GPU that torch does not see."""
    total = step_seconds * steps * epochs
    text = (f"on this CPU: about {_duration(step_seconds * steps)} per epoch, {_duration(total)} for the "
            f"{epochs} epoch{'s' if epochs != 1 else ''} of profile {cfg.profile}")
    if total > 3600:
        text += ("; for a CPU, --profile cpu trains airbench's network in minutes (docs/train.md: the CPU "
                 "recipe)")
    if torch.version.cuda and not torch.cuda.is_available():
        text += (f"; torch (CUDA {torch.version.cuda}) sees no GPU here: if you expected one, check the driver "
                 "and CUDA_VISIBLE_DEVICES, then pass --device cuda")
    return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe_device(proc: Proc) -> str:
    if proc.device.type == "cuda":
        return f"{proc.device} ({torch.cuda.get_device_name(proc.device)})"
    return f"cpu ({cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def say_fn(quiet: bool, proc: Proc):
    return (lambda *a: None) if (quiet or not proc.main) else (lambda m: tqdm.write(m, file=sys.stderr))
