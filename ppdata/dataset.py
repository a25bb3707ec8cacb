"""Shard folders as PyTorch datasets, in the spirit of ``torchvision.datasets``.

``ShardDataset(root, split="train", transform=None, target_transform=None)`` is map-style:
``ds[i]`` is ``(image, label)`` with ``image`` an (H, W, 3) uint8 numpy array (``transform`` is
applied to it, e.g. ``torchvision.transforms.ToTensor()``) and ``label`` an int (through
``target_transform``); ``len(ds)`` is the manifest's count. Random access reads one record: at a
fixed offset in a ppdata tar shard, from an index of member offsets for other writers' tars, or a
row of the HDF5 file. Each record is checked as it is read (structure, key, shape, label); a shard
whose size differs from the manifest is refused when the dataset is created; ``verify=True`` also
reads every shard once, with its sha256, before the first sample. It holds only paths and
metadata until it reads: open files are per process, so it works with ``DataLoader(num_workers>0)``
under fork, spawn and forkserver.

``ShardIterableDataset(root, split, ..., shuffle=False, seed=0, batch_size=None)`` streams
whole shards (HDF5: chunk-aligned blocks), each checked with its sha256: units are divided among
DDP ranks (``rank``/``world``, or ``torch.distributed`` when initialised) and DataLoader
workers; ``set_epoch(e)`` reshuffles the unit order and the samples of a few units together
(seeded by ``seed`` and the epoch). With ``batch_size`` it yields whole uint8 batches (what the
trainer's streaming loader feeds; ``steps()`` per epoch). Needs torch (``ppdata[train]``); the
map-style class does not.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from .archive import index_tar
from .errors import PpdataError
from .shards import ShardSet, open_shards
from .shards.tar import parse_records, record_size


class ShardDataset:
    """Map-style dataset over one split of a shard folder (see module docstring)."""

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Callable | None = None,
                 target_transform: Callable | None = None, verify: bool = False):
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.target_transform = target_transform
        self.shards: ShardSet = open_shards(root, split, verify=verify)
        self.classes = self.shards.classes
        self.shape = self.shards.shape
        self.format = self.shards.format
        counts = np.asarray(self.shards.counts, np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._rec = record_size(self.shape)
        self._layout: list[object] = []
        for s, path in zip(self.shards.shards, self.shards.paths):
            actual = path.stat().st_size
            if s.get("bytes") is not None and actual != s["bytes"]:
                raise PpdataError(f"shard {path}: is {actual} bytes, the manifest says {s['bytes']}")
            if self.format == "hdf5":
                self._layout.append("hdf5")
            elif actual == s["count"] * self._rec + 1024:
                self._layout.append("records")
            else:  # another writer's tar: where each sample's members are
                self._layout.append(self._index_generic(path, int(s["count"])))
        if verify:
            problems = self.shards.verify()
            if problems:
                raise PpdataError(problems[0])
        self._pid = None
        self._files: dict[int, object] = {}

    @staticmethod
    def _index_generic(path: Path, count: int) -> list[tuple]:
        members = {}
        order = []
        for m in index_tar(path):
            key, _, ext = m.name.rsplit("/", 1)[-1].partition(".")
            if key not in members:
                members[key] = {}
                order.append(key)
            members[key][ext] = m
        rows = [(k, members[k].get("npy"), members[k].get("cls")) for k in order]
        if len(rows) != count or any(n is None or c is None for _, n, c in rows):
            raise PpdataError(f"shard {path}: holds {len(rows)} samples (some without .npy and .cls), "
                              f"the manifest says {count}")
        return rows

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return f"ShardDataset({str(self.root)!r}, split={self.split!r}, n={len(self)}, format={self.format})"

    def _file(self, i: int):
        if self._pid != os.getpid():  # a new process (DataLoader worker): its own handles
            self._files, self._pid = {}, os.getpid()
        if i not in self._files:
            path = self.shards.paths[i]
            if self.format == "hdf5":
                from .shards.hdf5 import open_checked

                self._files[i] = open_checked(path)
            else:
                self._files[i] = os.open(path, os.O_RDONLY)
        return self._files[i]

    def sample(self, index: int) -> tuple[np.ndarray, int, str]:
        """(image (H, W, 3) uint8, label, sample key) of sample ``index``, checked."""
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        s = int(np.searchsorted(self._starts, index, side="right") - 1)
        j = index - int(self._starts[s])
        path = self.shards.paths[s]
        layout = self._layout[s]
        n_classes = len(self.classes) or None
        if layout == "hdf5":
            f = self._file(s)
            image, label = f["images"][j], int(f["labels"][j])
            key = f["keys"][j]
            key = key.decode() if isinstance(key, bytes) else str(key)
            if image.shape != self.shape or (n_classes and not 0 <= label < n_classes):
                raise PpdataError(f"HDF5 file {path}: sample {j} does not match the manifest")
            return image, label, key
        fd = self._file(s)
        if layout == "records":
            raw = os.pread(fd, self._rec, j * self._rec)
            if len(raw) != self._rec:
                raise PpdataError(f"shard {path}: ends inside sample {j}")
            got = parse_records(np.frombuffer(raw, np.uint8).reshape(1, -1), self.shape, path, j, n_classes)
            return got.images[0].copy(), int(got.labels[0]), str(got.keys[0])  # writable, own memory
        key, npy, cls = layout[j]
        import io

        try:
            arr = np.load(io.BytesIO(os.pread(fd, npy.size, npy.offset)), allow_pickle=False)
            label = int(os.pread(fd, cls.size, cls.offset).decode("ascii").strip())
        except (ValueError, UnicodeDecodeError, OSError):
            raise PpdataError(f"shard {path}: sample {key} is not a valid .npy/.cls pair") from None
        if arr.shape != self.shape or arr.dtype != np.uint8 or label < 0 or (n_classes and label >= n_classes):
            raise PpdataError(f"shard {path}: sample {key} does not match the manifest")
        return arr, label, key

    def __getitem__(self, index: int):
        image, label, _ = self.sample(int(index))
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = {}, None  # open files stay with their process
        return state

    def __del__(self):
        for f in getattr(self, "_files", {}).values():
            try:
                os.close(f) if isinstance(f, int) else f.close()
            except Exception:  # noqa: BLE001
                pass


def steps_per_epoch(counts: list[int], batch_size: int, world: int = 1, workers: int = 0) -> int:
    """Full batches of ``batch_size`` that every process gets when units of ``counts`` samples are
    dealt round-robin to ``world`` processes, then to each process's ``workers`` DataLoader workers
    (0: the process itself), each batching on its own: the smallest over processes, so that every
    process of a DDP run takes the same number of steps."""
    steps = []
    for r in range(world):
        mine = counts[r::world]
        w = max(1, workers)
        steps.append(sum(sum(mine[k::w]) // batch_size for k in range(w)))
    return min(steps) if steps else 0


def _iterable_class():
    import torch

    class ShardIterableDataset(torch.utils.data.IterableDataset):
        """Iterable dataset over one split, whole units at a time (see module docstring).

        Units are the tar shards, or chunk-aligned blocks of about ``unit_rows`` rows of an HDF5
        file. Each process (``rank`` of ``world``; default: ``torch.distributed`` if initialised)
        takes every ``world``-th unit, each of its DataLoader workers every ``num_workers``-th of
        those; with ``shuffle`` each worker visits its units in a random order and shuffles the
        samples of ``group`` units together (seeded by ``seed``, the epoch, the rank and the
        worker). ``batch_size``: yield ``(images (B, H, W, 3) uint8, labels (B,) int64)`` tensors
        of whole batches (a worker's last partial batch is dropped; ``steps`` says how many each
        process gets) instead of single ``(image, label)`` samples."""

        def __init__(self, root, split: str = "train", transform: Callable | None = None,
                     target_transform: Callable | None = None, shuffle: bool = False, seed: int = 0,
                     verify: bool = True, block: int = 1024, batch_size: int | None = None,
                     rank: int | None = None, world: int | None = None, group: int = 4, unit_rows: int = 2048):
            super().__init__()
            if batch_size is not None and (transform is not None or target_transform is not None):
                raise ValueError("batch_size: batches are uint8 tensors; transform them after the DataLoader")
            if isinstance(root, ShardSet):  # an opened split (its manifest already checked)
                self.shards, self.root, self.split = root, Path(root.directory), root.split
            else:
                self.root, self.split = Path(root), split
                self.shards = open_shards(root, split, verify=verify)
            self.transform, self.target_transform = transform, target_transform
            self.shuffle, self.seed, self.verify, self.block = shuffle, seed, verify, block
            self.batch_size, self.rank, self.world, self.group = batch_size, rank, world, max(1, group)
            self.classes = self.shards.classes
            self.epoch = 0
            self.unit_rows = unit_rows
            if self.shards.format == "hdf5":  # whole chunks per unit: no chunk is read twice
                from .shards.hdf5 import H5Split

                info = self.shards.shards[0]
                with H5Split(self.shards.paths[0], self.shards.shape, int(info["count"])) as h5:
                    chunk = h5.chunk
                self.unit_rows = max(chunk, round(unit_rows / chunk) * chunk)

        def set_epoch(self, epoch: int) -> None:
            self.epoch = int(epoch)

        def __len__(self) -> int:
            return len(self.shards)

        def units(self) -> list[tuple[int, int, int]]:
            """(shard, start, stop) units of work: tar shards whole; an HDF5 file in blocks."""
            if self.shards.format == "hdf5":
                n = len(self.shards)
                return [(0, a, min(n, a + self.unit_rows)) for a in range(0, n, self.unit_rows)]
            return [(i, 0, c) for i, c in enumerate(self.shards.counts)]

        def _rank_world(self) -> tuple[int, int]:
            if self.rank is not None:
                return self.rank, self.world or 1
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                return torch.distributed.get_rank(), torch.distributed.get_world_size()
            return 0, 1

        def steps(self, workers: int = 0) -> int:
            """Whole batches of ``batch_size`` per epoch in every process (``steps_per_epoch``)."""
            _, world = self._rank_world()
            return steps_per_epoch([b - a for _, a, b in self.units()], self.batch_size or 1, world, workers)

        def __iter__(self):
            rank, world = self._rank_world()
            info = torch.utils.data.get_worker_info()
            wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
            mine = self.units()[rank::world][wid::nw]
            rng = np.random.default_rng([self.seed, self.epoch, rank, wid])
            group = self.group if self.shuffle else 1
            if self.shuffle:
                mine = [mine[k] for k in rng.permutation(len(mine))]
            carry_x = carry_y = None
            for g in range(0, len(mine), group):
                parts = [s for u in mine[g:g + group] for s in self._read(*u)]
                images = np.concatenate([p.images for p in parts])
                labels = np.concatenate([p.labels for p in parts]).astype(np.int64)
                if carry_x is not None:
                    images, labels = np.concatenate([carry_x, images]), np.concatenate([carry_y, labels])
                order = rng.permutation(len(labels)) if self.shuffle else np.arange(len(labels))
                if self.batch_size is None:
                    for k in order:
                        image, label = images[k], int(labels[k])
                        if self.transform is not None:
                            image = self.transform(image)
                        if self.target_transform is not None:
                            label = self.target_transform(label)
                        yield image, label
                    continue
                images, labels = images[order], labels[order]
                full = len(labels) // self.batch_size * self.batch_size
                for i in range(0, full, self.batch_size):
                    yield (torch.from_numpy(images[i:i + self.batch_size]),
                           torch.from_numpy(labels[i:i + self.batch_size]))
                carry_x, carry_y = images[full:], labels[full:]

        def _read(self, s, a, b):
            if self.shards.format == "hdf5":
                from .shards.hdf5 import H5Split

                info = self.shards.shards[0]
                sha = info.get("sha256") if self.verify and a == 0 else None
                with H5Split(self.shards.paths[0], self.shards.shape, int(info["count"]), sha256=sha,
                             size=info.get("bytes")) as h5:
                    yield from h5.blocks(self.block, len(self.classes) or None, a, b)
            else:
                yield from self.shards.shard_batches(s, self.block, self.verify)

    ShardIterableDataset.__module__ = __name__  # picklable by name (DataLoader workers under spawn)
    ShardIterableDataset.__qualname__ = "ShardIterableDataset"
    return ShardIterableDataset


def __getattr__(name: str):
    if name == "ShardIterableDataset":  # built on first use: importing this module needs no torch
        cls = _iterable_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
