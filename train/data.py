"""Shards to device batches: an in-memory path and a streaming path, both formats.

Everything is read through ``ppdata.open_shards``; images are NHWC uint8, labels int64.
Batches come out as ``(x, y)``: ``x`` (B, H, W, 3) uint8 on the device, ``y`` (B,) int64.
``x.permute(0, 3, 1, 2)`` is then an NCHW tensor already in channels_last memory layout.

- ``DeviceLoader`` (``--data memory``): the whole split is loaded once onto the device as
  uint8 (CIFAR-10 x8 expansion: 400K x 3 KB = 1.2 GB) and every epoch is a permutation plus
  gathers on the device: no per-epoch decoding, no host-device copies. Each process of a
  DDP run holds the full split and takes its own slice of a common permutation.
- ``StreamLoader`` (``--data stream``): for data that does not fit. The library's own
  streaming dataset, ``ppdata.dataset.ShardIterableDataset`` (tar shards whole, HDF5 files in
  blocks of whole chunks, dealt round-robin to processes, then to workers; a per-epoch unit
  order and a shuffle of a few units' samples together; every read checked), in ``DataLoader``
  worker processes. Workers are started once and persist across epochs; the dataset pickles,
  so any start method works (fork, forkserver, spawn). Batches are pinned and copied
  asynchronously.

Both drop the last partial batch and give every process the same number of steps per epoch
(computed from the manifest's per-shard counts), so DDP never waits on a missing batch.
Shuffles are seeded by (seed, epoch[, rank, worker]): a resumed run sees the same batches.
Augmentation (``train.augment``) is applied by the training loop, on the device.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ppdata.errors import PpdataError
from ppdata.shards import ShardSet

DATA_MODES = ("auto", "memory", "stream")


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (stable across processes and runs)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def generator(device: torch.device, *parts: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(_seed(*parts))
    return g


@dataclass
class Split:
    """One split held as tensors: images (N, H, W, 3) uint8, labels (N,) int64."""

    shards: ShardSet
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def load_split(shards: ShardSet, device: torch.device | str = "cpu") -> Split:
    """Read a whole split through ``ShardSet.load()`` and move it to ``device`` once."""
    s = shards.load()
    images = torch.from_numpy(s.images).to(device)
    labels = torch.from_numpy(s.labels).to(device)
    if len(labels) and (labels.min() < 0 or labels.max() >= max(1, len(shards.classes))):
        raise PpdataError(f"{shards.directory}: split {shards.split} has labels outside 0..{len(shards.classes) - 1}")
    return Split(shards, images, labels)


def split_bytes(shards: ShardSet) -> int:
    return len(shards) * int(np.prod(shards.shape)) + 8 * len(shards)


def free_memory(device: torch.device) -> int:
    """Free bytes of ``device`` (CUDA), or available host memory (CPU; 8 GiB if unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def choose_mode(mode: str, shards: ShardSet, device: torch.device, free: int | None = None) -> str:
    """``auto``: memory when the split takes under 40% of ``free`` bytes (default: this device's
    free memory). Under DDP pass the smallest free memory of all processes, so that every
    process makes the same choice (their step counts must agree)."""
    if mode not in DATA_MODES:
        raise ValueError(f"data mode must be one of {DATA_MODES}")
    if mode != "auto":
        return mode
    free = free_memory(device) if free is None else free
    return "memory" if split_bytes(shards) < 0.4 * free else "stream"


class DeviceLoader:
    """Training batches from a device-resident split (see the module docstring)."""

    def __init__(self, split: Split, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        self.split, self.batch_size, self.seed, self.rank, self.world = split, batch_size, seed, rank, world
        self.per_rank = len(split) // world
        self.steps = self.per_rank // batch_size
        if self.steps == 0:
            raise PpdataError(
                f"{split.shards.directory}: {len(split)} training images ({self.per_rank} per process) are fewer "
                f"than one batch of {batch_size}; lower --batch-size")

    def __len__(self) -> int:
        return self.steps

    def indices(self, epoch: int) -> torch.Tensor:
        """This process's sample indices for ``epoch`` (steps * batch_size of them)."""
        dev = self.split.images.device
        perm = torch.randperm(len(self.split), device=dev, generator=generator(dev, self.seed, epoch))
        mine = perm[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
        return mine[: self.steps * self.batch_size]

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.indices(epoch)
        for i in range(self.steps):
            j = idx[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.split.images[j], self.split.labels[j]


def eval_batches(split: Split, batch_size: int, rank: int = 0, world: int = 1):
    """This process's contiguous share of an evaluation split, in batches (partial last one kept)."""
    n = len(split)
    a, b = rank * n // world, (rank + 1) * n // world
    for i in range(a, b, batch_size):
        j = min(b, i + batch_size)
        yield split.images[i:j], split.labels[i:j]


# ---------------------------------------------------------------------------------------------
# streaming
#
# Every stage below is a module-level class or function, so the pipeline pickles: DataLoader
# workers start under any multiprocessing start method (fork, forkserver: Python 3.14's default
# on Linux, spawn: macOS and Windows).


class Epochs(torch.utils.data.IterableDataset):
    """Epoch ``first``, ``first + 1``, ... of ``dataset`` (``set_epoch``) on successive iterations.

    Persistent DataLoader workers keep their own copy of this object, so the epoch advances
    inside each worker: one worker start per run, not per epoch."""

    def __init__(self, dataset, first: int):
        super().__init__()
        self.dataset, self.epoch = dataset, first

    def __iter__(self):
        self.dataset.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.dataset)


class StreamLoader:
    """Training batches streamed from shards by ``workers`` DataLoader processes: the library's
    ``ppdata.dataset.ShardIterableDataset`` in batch mode (units dealt to processes and workers,
    every read checked, ``group`` units shuffled together), fed to the device.

    Workers persist across epochs (started once, on the first epoch, or again when epochs are
    not consecutive). ``start_method``: the workers' multiprocessing start method (fork,
    forkserver, spawn; None: the platform's default). ``close()`` stops them."""

    H5_BLOCK = 2048  # target rows per HDF5 unit; rounded to whole chunks

    def __init__(self, shards: ShardSet, batch_size: int, device: torch.device, seed: int = 0,
                 rank: int = 0, world: int = 1, workers: int = 4, group: int = 4,
                 start_method: str | None = None):
        from ppdata.dataset import ShardIterableDataset

        self.shards, self.batch_size, self.device = shards, batch_size, device
        self.seed, self.rank, self.world, self.workers = seed, rank, world, workers
        self.start_method = start_method
        self.data = ShardIterableDataset(shards, shuffle=True, seed=seed, verify=shards.verify_hash,
                                         batch_size=batch_size, rank=rank, world=world, group=group,
                                         unit_rows=self.H5_BLOCK)
        self.steps = self.data.steps(workers)
        if self.steps == 0:
            raise PpdataError(
                f"{shards.directory}: streaming {len(shards)} images in {len(self.data.units())} shards/blocks to "
                f"{world} process(es) x {max(1, workers)} worker(s) gives some worker less than one batch of "
                f"{batch_size}; lower --batch-size or --workers, or use --data memory")
        self._loader = self._next_epoch = self._pending = None

    def __len__(self) -> int:
        return self.steps

    def _start(self, epoch: int) -> None:
        self.close()
        self._loader = torch.utils.data.DataLoader(
            Epochs(self.data, epoch), batch_size=None, num_workers=self.workers,
            pin_memory=self.device.type == "cuda", prefetch_factor=4 if self.workers else None,
            persistent_workers=self.workers > 0, multiprocessing_context=self.start_method if self.workers else None)

    def _iter(self, epoch: int):
        if self._loader is None or epoch != self._next_epoch:
            self._start(epoch)
        it = iter(self._loader)  # every worker now iterates `epoch`
        self._next_epoch = epoch + 1
        return it

    def prefetch(self, epoch: int) -> None:
        """Start the workers on ``epoch`` now (while the model warms up, say); ``epoch(epoch)``
        then continues from the batches they have made."""
        self._pending = (epoch, self._iter(epoch))

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        pending, self._pending = self._pending, None
        it = pending[1] if pending is not None and pending[0] == epoch else self._iter(epoch)
        for _ in range(self.steps):
            x, y = next(it)
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop the workers (they also stop when the loader is garbage collected)."""
        self._loader = self._next_epoch = self._pending = None  # a freed DataLoader stops its workers


def head_images(shards: ShardSet, limit: int = 50000) -> torch.Tensor:
    """The first ``limit`` images in stored order, NHWC uint8 on the CPU (statistics when streaming)."""
    parts, have = [], 0
    for s in shards.batches(min(limit, 16384)):
        parts.append(s.images[: limit - have])
        have += len(parts[-1])
        if have >= limit:
            break
    return torch.from_numpy(np.concatenate(parts))
