"""CIFAR-10, CIFAR-100 and STL-10 from their official archives, without torch.

The files live under ``root`` in torchvision's layout (``cifar-10-batches-py/``,
``cifar-100-python/``, ``stl10_binary/``), so a copy torchvision downloaded is used as it is, and
the other way round. Missing files are downloaded (``download=True``, a progress bar on stderr)
into ``root``: the archive is written under ``<name>.part``, checked against its published MD5
(the values torchvision uses) and only then kept; only the dataset's expected members are
extracted, each checked against its MD5 before it is read. CIFAR batches are Python pickles:
they are read with an unpickler that accepts nothing but the containers, strings and numpy
arrays these files hold, never arbitrary objects. STL-10's unlabelled split is not offered.

Layouts: CIFAR ``data`` rows are 3072 bytes, channel-planar (R, G, B planes of 32x32);
STL-10's ``*_X.bin`` holds (N, 3, 96, 96) in column-major order per plane, labels 1..10 in
``*_y.bin``. Both come out as (N, H, W, 3) uint8, labels (N,) int64 from 0.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..archive import checked_members, open_archive
from ..errors import PpdataError
from ..names import inside
from .base import ArraySource

log = logging.getLogger("ppdata")


@dataclass(frozen=True)
class Dataset:
    name: str
    url: str
    archive_md5: str
    folder: str
    splits: dict  # split -> [(file, md5), ...]
    meta: tuple  # (file, md5)
    kind: str  # "cifar10", "cifar100", "stl10"
    labels_key: str = "labels"
    extra: dict = field(default_factory=dict)


DATASETS = {
    "cifar10": Dataset(
        "cifar10", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
        {"train": [("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                   ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                   ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                   ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                   ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")],
         "test": [("test_batch", "40351d587109b95175f43aff81a1287e")]},
        ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"), "cifar10", "labels", {"classes_key": "label_names"}),
    "cifar100": Dataset(
        "cifar100", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
        {"train": [("train", "16019d7e3df5f24257cddd939b257f8d")],
         "test": [("test", "f0ef6b0ae62326f3e7ffdfab6717acfc")]},
        ("meta", "7973b15100ade9c7d40fb424638fde48"), "cifar100", "fine_labels", {"classes_key": "fine_label_names"}),
    "stl10": Dataset(
        "stl10", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", "91f7769df0f17e558f3565bffb0c7dfb",
        "stl10_binary",
        {"train": [("train_X.bin", "918c2871b30a85fa023e0c44e0bee87f"), ("train_y.bin", "5a34089d4802c674881badbb80307741")],
         "test": [("test_X.bin", "7f263ba9f9e0b06b93213547f721ac82"), ("test_y.bin", "36f9794fa4beb8a2c72628de14fa638e")]},
        ("class_names.txt", None), "stl10"),
}


class _ArraysOnly(pickle.Unpickler):
    """An unpickler for the CIFAR batches: numpy arrays and plain containers, nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode"), ("builtins", "bytearray")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a dataset file")
        return super().find_class(module, name)


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _needed(ds: Dataset, splits) -> list[tuple[str, str | None]]:
    return [f for sp in splits for f in ds.splits[sp]] + [ds.meta]


def _problems(root: Path, ds: Dataset, splits) -> tuple[list[Path], list[Path]]:
    """(missing, damaged) files of the dataset under ``root``."""
    base = root / ds.folder
    missing = [base / f for f, _ in _needed(ds, splits) if not (base / f).is_file()]
    damaged = [base / f for f, md5 in _needed(ds, splits)
               if (base / f).is_file() and md5 is not None and _md5(base / f) != md5]
    return missing, damaged


def _fetch(url: str, dst: Path, md5: str, progress: bool = True) -> None:
    """Download ``url`` to ``dst`` (via ``dst.part``) with a progress bar; keep it only if its MD5 matches."""
    from tqdm import tqdm

    part = dst.with_name(dst.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dst.name}", disable=not progress,
                      file=sys.stderr, leave=False) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if _md5(part) != md5:
        part.unlink()
        raise PpdataError(f"the download of {url} is damaged (MD5 differs from the published one); run again")
    os.replace(part, dst)


def _extract(archive: Path, root: Path, ds: Dataset) -> None:
    """Extract the dataset's expected members (and only those) from its archive into ``root``."""
    wanted = {f"{ds.folder}/{f}" for sp in ds.splits for f, _ in ds.splits[sp]} | {f"{ds.folder}/{ds.meta[0]}"}
    base = root / ds.folder
    base.mkdir(parents=True, exist_ok=True)
    with open_archive(archive) as stream:
        for m, f in checked_members(stream, str(archive)):
            name = m.name[2:] if m.name.startswith("./") else m.name
            if f is None or name not in wanted:
                continue
            dst = inside(base, name.split("/", 1)[1])
            tmp = dst.with_name(dst.name + ".part")
            with open(tmp, "wb") as out:
                shutil.copyfileobj(f, out, 1 << 20)
            os.replace(tmp, dst)


def ensure(ds: Dataset, root: str | os.PathLike, splits, download: bool, progress: bool = True) -> Path:
    """The dataset's folder under ``root``, downloading and extracting it if needed."""
    root = Path(root)
    missing, damaged = _problems(root, ds, splits)
    if not missing and not damaged:
        return root / ds.folder
    if damaged and not download:
        raise PpdataError(f"{damaged[0]} is damaged or not the published file (MD5 differs); delete it, or drop "
                          f"--no-download to fetch the dataset again")
    if not download:
        raise PpdataError(f"{ds.name} not found under --root {root} (expected {ds.folder}/ as torchvision lays it "
                          f"out). Drop --no-download to fetch it, pass --root DIR where it already is, or use "
                          f"`ppdata encrypt folder PATH` for an ImageFolder tree or archive.")
    archive = root / ds.url.rsplit("/", 1)[1]
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not (archive.is_file() and _md5(archive) == ds.archive_md5):
            log.info("downloading %s from %s into %s", ds.name, ds.url, root)
            _fetch(ds.url, archive, ds.archive_md5, progress)
        _extract(archive, root, ds)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e.strerror or e
        raise PpdataError(
            f"cannot download {ds.name} into {root} ({reason}). Without network: put the dataset's files under "
            f"--root DIR (torchvision's layout: {ds.folder}/) and pass --no-download, or use "
            f"`ppdata encrypt folder PATH` for an ImageFolder tree or archive.") from None
    if any(_problems(root, ds, splits)):
        raise PpdataError(f"{archive} does not hold the expected {ds.name} files")
    return root / ds.folder


def _checked(path: Path, md5: str | None) -> bytes:
    data = path.read_bytes()
    if md5 is not None and hashlib.md5(data, usedforsecurity=False).hexdigest() != md5:
        raise PpdataError(f"{path} is damaged or not the published file (MD5 differs); delete it and run again")
    return data


def _unpickle(data: bytes, path: Path) -> dict:
    try:
        obj = _ArraysOnly(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise PpdataError(f"cannot read {path}: {e}") from None
    if not isinstance(obj, dict):
        raise PpdataError(f"{path} is not a CIFAR batch")
    return obj


def read_split(ds: Dataset, base: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N,H,W,3) uint8, labels (N,) int64) of one split from the dataset's folder."""
    if ds.kind == "stl10":
        (xf, xmd5), (yf, ymd5) = ds.splits[split]
        raw = np.frombuffer(_checked(base / xf, xmd5), np.uint8)
        if raw.size % (3 * 96 * 96):
            raise PpdataError(f"{base / xf} does not hold whole 96x96 images")
        images = np.ascontiguousarray(raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1))
        labels = np.frombuffer(_checked(base / yf, ymd5), np.uint8).astype(np.int64) - 1
    else:
        parts, labs = [], []
        for f, md5 in ds.splits[split]:
            entry = _unpickle(_checked(base / f, md5), base / f)
            data = np.asarray(entry.get("data"), np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072:
                raise PpdataError(f"{base / f}: data is {data.shape}, expected (N, 3072)")
            parts.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labs.append(np.asarray(entry.get(ds.labels_key), np.int64))
        images, labels = np.ascontiguousarray(np.concatenate(parts)), np.concatenate(labs)
    if len(labels) != len(images):
        raise PpdataError(f"{ds.name} {split}: {len(images)} images but {len(labels)} labels")
    return images, labels


def read_classes(ds: Dataset, base: Path) -> list[str]:
    f, md5 = ds.meta
    data = _checked(base / f, md5)
    if ds.kind == "stl10":
        return [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]
    meta = _unpickle(data, base / f)
    return [str(c) for c in meta[ds.extra["classes_key"]]]


class StandardSource(ArraySource):
    """CIFAR-10, CIFAR-100 or STL-10 (see module docstring), read into memory as uint8 arrays."""

    def __init__(self, name: str, root: str | os.PathLike = "data", download: bool = False,
                 split: str | None = None, progress: bool = True):
        if name not in DATASETS:
            raise PpdataError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
        ds = DATASETS[name]
        wanted = list(ds.splits) if split in (None, "all") else [split]
        if wanted[0] not in ds.splits:
            raise PpdataError(f"split {split!r} not in {name} (available: {', '.join(ds.splits)})")
        base = ensure(ds, root, wanted, download, progress)
        data = {sp: read_split(ds, base, sp) for sp in wanted}
        super().__init__(data, read_classes(ds, base), name=name)
        self.root = str(root)

    def describe(self) -> dict:
        return {"name": self.name, "root": Path(self.root).name}


TorchvisionSource = StandardSource  # the name of ppdata 0.1 (which read these through torchvision)
