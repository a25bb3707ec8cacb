"""Shards to device batches: an in-memory path and a streaming path, both formats.

Everything is read through ``ppdata.open_shards``; images are NHWC uint8, labels int64.
Batches come out as ``(x, y)``: ``x`` (B, H, W, 3) uint8 on the device, ``y`` (B,) int64.
``x.permute(0, 3, 1, 2)`` is then an NCHW tensor already in channels_last memory layout.

- ``DeviceLoader`` (``--data memory``): the whole split is loaded once onto the device as
  uint8 (CIFAR-10 x8 expansion: 400K x 3 KB = 1.2 GB) and every epoch is a permutation plus
  gathers on the device: no per-epoch decoding, no host-device copies. Each process of a
  DDP run holds the full split and takes its own slice of a common permutation.
- ``StreamLoader`` (``--data stream``): for data that does not fit. WebDataset shards go through
  a ``webdataset`` pipeline (shards dealt round-robin to processes, then to workers; a per-epoch
  shard-order and sample shuffle) in ``DataLoader`` worker processes; HDF5 files are read in
  contiguous blocks of whole chunks, dealt the same way. Workers are started once and persist
  across epochs; every pipeline stage pickles, so any start method works (fork, forkserver,
  spawn). Batches are pinned and copied asynchronously.

Both drop the last partial batch and give every process the same number of steps per epoch
(computed from the manifest's per-shard counts), so DDP never waits on a missing batch.
Shuffles are seeded by (seed, epoch[, rank, worker]): a resumed run sees the same batches.
Augmentation (``train.augment``) is applied by the training loop, on the device.
"""
from __future__ import annotations

import functools
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ppdata.errors import PpdataError
from ppdata.shards import ShardSet
from ppdata.shards.hdf5 import H5Split

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


def steps_per_epoch(counts: list[int], batch_size: int, world: int, workers: int) -> int:
    """Full batches every process gets when units (shards or blocks) of ``counts`` samples are
    dealt round-robin to processes, then to their workers, each worker batching on its own."""
    steps = []
    for r in range(world):
        mine = counts[r::world]
        steps.append(sum(sum(mine[w::max(1, workers)]) // batch_size for w in range(max(1, workers))))
    return min(steps) if steps else 0


def _worker() -> tuple[int, int]:
    """(this DataLoader worker's id, number of workers); (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _rng(seed: int, epoch: int, rank: int) -> random.Random:
    return random.Random(_seed(seed, epoch, rank, _worker()[0]))


class DealShards:
    """Pipeline stage: this process's shards (round-robin by ``rank``), then this worker's
    (round-robin by worker id), in a seeded random order."""

    def __init__(self, rank: int, world: int, seed: int, epoch: int):
        self.rank, self.world, self.seed, self.epoch = rank, world, seed, epoch

    def __call__(self, src):
        worker, workers = _worker()
        mine = list(src)[self.rank :: self.world][worker::workers]
        _rng(self.seed, self.epoch, self.rank).shuffle(mine)
        yield from mine


class BufferShuffle:
    """Pipeline stage: a seeded shuffle buffer of ``size`` samples."""

    def __init__(self, size: int, rank: int, seed: int, epoch: int):
        self.size, self.rank, self.seed, self.epoch = size, rank, seed, epoch

    def __call__(self, src):
        rng = _rng(self.seed, self.epoch + 1_000_003, self.rank)
        buf = []
        for s in src:
            if len(buf) < self.size:
                buf.append(s)
                continue
            k = rng.randrange(self.size)
            buf[k], s = s, buf[k]
            yield s
        rng.shuffle(buf)
        yield from buf


class CheckedSamples:
    """Pipeline stage: the (image, label) samples of each shard URL, read by ppdata's checked tar
    reader (``ppdata.shards.tar.read_tar``: the manifest's count, shape, labels, structure and,
    with ``verify``, sha256), in vectorised chunks instead of one ``np.load`` per sample."""

    def __init__(self, infos: dict[str, dict], shape, n_classes: int | None, verify: bool = True, chunk: int = 1024):
        self.infos, self.shape, self.n_classes, self.verify, self.chunk = infos, tuple(shape), n_classes, verify, chunk

    def __call__(self, src):
        from ppdata.shards.tar import read_tar

        for item in src:
            url = item["url"]
            info = self.infos[url]
            for s in read_tar(Path(url), self.shape, int(info["count"]), sha256=info.get("sha256") if self.verify
                              else None, size=info.get("bytes"), n_classes=self.n_classes, chunk=self.chunk):
                images = s.images.copy()  # own memory: the shuffle buffer holds single samples
                yield from zip(images, s.labels.tolist())


def _collate(samples):
    images, labels = zip(*samples)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64)


def webdataset_pipeline(shards: dict[str, dict], shape, n_classes: int | None, batch_size: int, seed: int,
                        epoch: int, buffer: int, rank: int = 0, world: int = 1, verify: bool = True):
    """The webdataset pipeline of one epoch (shards of this process/worker, checked read, shuffle,
    batch). ``shards``: URL -> the manifest's entry for it (count, sha256, bytes)."""
    import webdataset as wds

    return wds.DataPipeline(
        wds.SimpleShardList(list(shards)),
        DealShards(rank, world, seed, epoch),
        CheckedSamples(shards, shape, n_classes, verify),
        BufferShuffle(buffer, rank, seed, epoch),
        wds.batched(batch_size, collation_fn=_collate, partial=False),
    )


def h5_blocks(n: int, block: int) -> list[tuple[int, int]]:
    """``[a, b)`` row ranges of ``block`` rows covering ``0..n``."""
    return [(a, min(n, a + block)) for a in range(0, n, block)]


def h5_block_rows(path: str | os.PathLike, target: int) -> int:
    """Rows per read block of an HDF5 split: the multiple of the ``images`` chunk rows nearest to
    ``target`` (at least one chunk), so that every read covers whole chunks."""
    import h5py

    with h5py.File(path, "r") as f:
        chunks = f["images"].chunks
    if not chunks:  # contiguous storage: any block is aligned
        return target
    return chunks[0] * max(1, round(target / chunks[0]))


class H5Blocks(torch.utils.data.IterableDataset):
    """HDF5 split read in contiguous, chunk-aligned blocks, dealt to processes and workers like shards."""

    def __init__(self, path: str, n: int, batch_size: int, seed: int, epoch: int, block: int, group: int = 4,
                 rank: int = 0, world: int = 1, shape=None):
        super().__init__()
        self.path, self.n, self.batch_size, self.seed, self.epoch = path, n, batch_size, seed, epoch
        self.shape = shape
        self.block, self.group, self.rank, self.world = block, group, rank, world

    def blocks(self) -> list[tuple[int, int]]:
        return h5_blocks(self.n, self.block)

    def __iter__(self):
        worker, workers = _worker()
        mine = self.blocks()[self.rank :: self.world][worker::workers]
        rng = _rng(self.seed, self.epoch, self.rank)
        rng.shuffle(mine)
        nprng = np.random.default_rng(rng.getrandbits(63))
        with H5Split(Path(self.path), self.shape, self.n) as h5:  # datasets, dtypes, shapes, count checked
            f = h5.f
            ims, labs = f["images"], f["labels"]
            carry_x = np.empty((0, *ims.shape[1:]), np.uint8)
            carry_y = np.empty((0,), np.int64)
            for g in range(0, len(mine), self.group):
                xs = [carry_x] + [ims[a:b] for a, b in mine[g : g + self.group]]
                ys = [carry_y] + [labs[a:b].astype(np.int64) for a, b in mine[g : g + self.group]]
                x, y = np.concatenate(xs), np.concatenate(ys)
                p = nprng.permutation(len(y))
                x, y = x[p], y[p]
                full = len(y) // self.batch_size * self.batch_size
                for i in range(0, full, self.batch_size):
                    yield (torch.from_numpy(x[i : i + self.batch_size]),
                           torch.from_numpy(y[i : i + self.batch_size]))
                carry_x, carry_y = x[full:], y[full:]


class Epochs(torch.utils.data.IterableDataset):
    """Epoch ``first``, ``first + 1``, ... of ``make(epoch)`` on successive iterations.

    Persistent DataLoader workers keep their own copy of this object, so the epoch advances
    inside each worker: one worker start per run, not per epoch."""

    def __init__(self, make, first: int):
        super().__init__()
        self.make, self.epoch = make, first

    def __iter__(self):
        data = self.make(epoch=self.epoch)
        self.epoch += 1
        return iter(data)


class StreamLoader:
    """Training batches streamed from shards by ``workers`` DataLoader processes.

    Workers persist across epochs (started once, on the first epoch, or again when epochs are
    not consecutive). ``start_method``: the workers' multiprocessing start method (fork,
    forkserver, spawn; None: the platform's default). ``close()`` stops them."""

    H5_BLOCK = 2048  # target rows per HDF5 read; rounded to whole chunks

    def __init__(self, shards: ShardSet, batch_size: int, device: torch.device, seed: int = 0,
                 rank: int = 0, world: int = 1, workers: int = 4, buffer: int = 10000,
                 start_method: str | None = None):
        self.shards, self.batch_size, self.device = shards, batch_size, device
        self.seed, self.rank, self.world, self.workers, self.buffer = seed, rank, world, workers, buffer
        self.start_method = start_method
        if shards.format == "hdf5":
            self.block = h5_block_rows(shards.paths[0], self.H5_BLOCK)
            counts = [b - a for a, b in h5_blocks(len(shards), self.block)]
        else:
            counts = [int(s["count"]) for s in shards.shards]
        self.steps = steps_per_epoch(counts, batch_size, world, workers)
        if self.steps == 0:
            raise PpdataError(
                f"{shards.directory}: streaming {len(shards)} images in {len(counts)} shards/blocks to {world} "
                f"process(es) x {max(1, workers)} worker(s) gives some worker less than one batch of {batch_size}; "
                f"lower --batch-size or --workers, or use --data memory")
        self._loader = self._next_epoch = self._pending = None

    def __len__(self) -> int:
        return self.steps

    def _make(self):
        """A picklable callable: epoch -> that epoch's dataset."""
        if self.shards.format == "hdf5":
            return functools.partial(H5Blocks, str(self.shards.paths[0]), len(self.shards), self.batch_size,
                                     self.seed, block=self.block, rank=self.rank, world=self.world,
                                     shape=self.shards.shape)
        infos = {url: dict(info) for url, info in zip(self.shards.urls, self.shards.shards)}
        return functools.partial(webdataset_pipeline, infos, self.shards.shape, len(self.shards.classes) or None,
                                 self.batch_size, self.seed, buffer=self.buffer, rank=self.rank, world=self.world,
                                 verify=self.shards.verify_hash)

    def dataset(self, epoch: int):
        """The dataset of one epoch (what each worker iterates)."""
        return self._make()(epoch=epoch)

    def _start(self, epoch: int) -> None:
        self.close()
        self._loader = torch.utils.data.DataLoader(
            Epochs(self._make(), epoch), batch_size=None, num_workers=self.workers,
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
