"""Where the experiments' plain images come from (``--data``), and the one preparation step that
is not a ``ppdata`` command: joining per-split ImageFolder archives into one.

``--data`` accepts

- ``sample``: ppdata's embedded 500 + 100 CIFAR-10 images (offline; for ``--profile smoke``);
- ``cifar10``, ``cifar100``, ``stl10``: torchvision datasets under ``--root`` (``ppdata encrypt
  NAME --root ROOT``);
- a folder holding one archive per split, ``train.tar.gz`` and ``test.tar.gz`` (or ``.tar``,
  ``.tgz``), each an ImageFolder tree ``<split>/<class>/<file>`` (the layout of
  ``../shared/data/cifar10-jpeg``), encrypted together by ``ppdata encrypt folder TRAIN TEST``.
  With ``--subset TRAIN,TEST`` (small-scale runs) the first TRAIN / TEST images of every class are
  first streamed into one uncompressed tar under ``WORK/source/`` (``python -m
  train.experiments.source``), without extracting 60,000 files;
- an ImageFolder archive or directory that already holds ``train/`` and ``test/`` (used as is).

Command line (what the harness runs, and prints under ``--dry-run``)::

    python -m train.experiments.source DATA_DIR --out WORK/source/NAME.tar [--subset 1000,200]
"""
from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import click

from ppdata.errors import PpdataError

TORCHVISION = ("cifar10", "cifar100", "stl10")
SPLITS = ("train", "test")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def default_data(name: str = "cifar10-jpeg") -> str:
    """``$PPDATA_DATA/NAME`` if PPDATA_DATA is set, else ``../shared/data/NAME``."""
    root = os.environ.get("PPDATA_DATA")
    return str(Path(root) / name) if root else os.path.join("..", "shared", "data", name)


@dataclass
class DataSource:
    """A resolved ``--data``: the ``ppdata encrypt`` source arguments and what identifies it."""

    spec: str                       # what the user gave
    kind: str                       # sample | torchvision | folder | split-archives
    encrypt_args: list[str]         # SOURCE [PATH] [--root ROOT] for ppdata encrypt
    identity: dict                  # goes into every cache key
    archives: list[Path] = field(default_factory=list)  # split-archives: the per-split archives
    joined: Path | None = None      # split-archives: the joined tar (a preparation step)
    subset: tuple[int, int] | None = None

    def describe(self) -> str:
        if self.kind == "split-archives":
            sub = f", first {self.subset[0]}/{self.subset[1]} images per class" if self.subset else ""
            return f"{self.spec} ({', '.join(a.name for a in self.archives)}{sub})"
        return self.spec

    def prepare_command(self) -> list[str] | None:
        """The command that builds ``joined`` (None when nothing has to be prepared)."""
        if self.joined is None:
            return None
        cmd = ["python", "-m", "train.experiments.source", _rel(self.archives[0].parent), "--out", _rel(self.joined)]
        if self.subset:
            cmd += ["--subset", f"{self.subset[0]},{self.subset[1]}"]
        return cmd


def _rel(p: Path | str) -> str:
    """``p`` relative to the working directory when it lies below it, else as given."""
    p = Path(p)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def split_archives(folder: Path) -> dict[str, Path]:
    """``{split: archive}`` for the ``train.*`` / ``test.*`` archives directly in ``folder``."""
    found: dict[str, Path] = {}
    for split in SPLITS:
        for suf in ARCHIVE_SUFFIXES:
            p = folder / f"{split}{suf}"
            if p.is_file():
                found[split] = p
                break
    return found


def _file_identity(p: Path) -> dict:
    st = p.stat()
    return {"name": p.name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def resolve_data(spec: str, work: Path, subset: tuple[int, int] | None = None, root: str = "data") -> DataSource:
    """Resolve ``--data SPEC`` (see the module docstring); ``work`` is the cache folder."""
    if spec == "sample":
        if subset:
            raise PpdataError("--subset: the embedded sample is already small (500 + 100 images); drop --subset")
        return DataSource(spec, "sample", ["sample"], {"sample": "ppdata embedded sample"})
    if spec in TORCHVISION:
        if subset:
            raise PpdataError(f"--subset works on folder archives, not on the torchvision dataset {spec}")
        return DataSource(spec, "torchvision", [spec, "--root", root], {"torchvision": spec})
    p = Path(spec)
    if not p.exists():
        raise PpdataError(f"--data {spec}: no such file or folder (give sample, {', '.join(TORCHVISION)}, a folder "
                          f"with train.tar.gz and test.tar.gz, or an ImageFolder archive/folder with train/ and test/)")
    arch = split_archives(p) if p.is_dir() else {}
    if arch:
        missing = [s for s in SPLITS if s not in arch]
        if missing:
            raise PpdataError(f"--data {spec}: found {', '.join(a.name for a in arch.values())} but no "
                              f"{' or '.join(missing)} archive")
        archives = [arch[s] for s in SPLITS]
        ident = {"archives": [_file_identity(a) for a in archives], "subset": list(subset) if subset else None}
        if not subset:  # ppdata's folder source joins the archives itself
            return DataSource(spec, "split-archives", ["folder", *map(_rel, archives)], ident, archives)
        import hashlib
        import json

        h = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{p.resolve().name}{f'-sub{subset[0]}-{subset[1]}' if subset else ''}-{h}.tar"
        joined = work / "source" / name
        return DataSource(spec, "split-archives", ["folder", _rel(joined)], ident, archives, joined, subset)
    if subset:
        raise PpdataError(f"--subset works on a folder of per-split archives (train.tar.gz, test.tar.gz), not on {spec}")
    ident = _file_identity(p) if p.is_file() else {"folder": str(p.resolve())}
    return DataSource(spec, "folder", ["folder", _rel(p)], {"folder": ident})


def slice_archive(src: Path, dst: Path, per_class: int) -> Path:
    """The first ``per_class`` images of every class (a member's folder) of an ImageFolder archive
    ``src``, in archive order, written to ``dst`` (gzip when its name ends in ``.gz``). For small
    real-data runs: tests, ``make gpu-check --tiny``."""
    counts: dict[str, int] = {}
    with tarfile.open(src, "r|*") as tf, tarfile.open(dst, "w:gz" if str(dst).endswith(".gz") else "w") as out:
        for m in tf:
            if not m.isfile():
                continue
            cls = "/".join(m.name.split("/")[:-1])
            if counts.get(cls, 0) >= per_class:
                continue
            counts[cls] = counts.get(cls, 0) + 1
            data = tf.extractfile(m).read()
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return dst


def join_archives(archives: list[Path], out: Path, subset: tuple[int, int] | None = None) -> dict[str, int]:
    """Stream the members of per-split ImageFolder ``archives`` into one uncompressed tar ``out``.

    A member ``<split>/<class>/<file>`` keeps its name; a member ``<class>/<file>`` is put under
    the split named by its archive (``train.tar.gz`` -> ``train/``). ``subset = (a, b)`` keeps the
    first ``a`` train and ``b`` test images of every class (archive order). Written to
    ``out.part`` and renamed, so ``out`` exists only when complete. Returns images per split."""
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    counts: dict[tuple[str, str], int] = {}
    per_split: dict[str, int] = {}
    try:
        with tarfile.open(part, "w") as dst:
            for arc in archives:
                split_of_archive = arc.name.split(".")[0].lower()
                try:
                    with tarfile.open(arc, "r|*") as src:
                        for m in src:
                            if not m.isfile():
                                continue
                            parts = PurePosixPath(m.name).parts
                            if len(parts) == 2:
                                parts = (split_of_archive, *parts)
                            if len(parts) != 3:
                                raise PpdataError(f"{arc}: member {m.name} is not <split>/<class>/<file>")
                            split, cls = parts[0].lower(), parts[1]
                            if subset is not None:
                                limit = subset[0] if split == "train" else subset[1]
                                if counts.get((split, cls), 0) >= limit:
                                    continue
                            counts[(split, cls)] = counts.get((split, cls), 0) + 1
                            per_split[split] = per_split.get(split, 0) + 1
                            data = src.extractfile(m).read()
                            info = tarfile.TarInfo("/".join(parts))
                            info.size, info.mtime, info.mode = len(data), m.mtime, 0o644
                            dst.addfile(info, io.BytesIO(data))
                except (tarfile.TarError, EOFError) as e:
                    raise PpdataError(f"cannot read archive {arc}: {e}") from None
        os.replace(part, out)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return per_split


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="The joined .tar to write.")
@click.option("--subset", metavar="TRAIN,TEST", help="Keep the first TRAIN / TEST images of every class.")
def main(data, out, subset):
    """Join DATA's per-split ImageFolder archives (train.tar.gz, test.tar.gz) into one tar OUT
    holding train/<class>/... and test/<class>/... (input for `ppdata encrypt folder OUT`)."""
    try:
        sub = parse_subset(subset)
        arch = split_archives(Path(data))
        if sorted(arch) != sorted(SPLITS):
            raise PpdataError(f"{data}: expected train and test archives (train.tar.gz, test.tar.gz)")
        if Path(out).exists():
            raise PpdataError(f"{out} exists; remove it first")
        counts = join_archives([arch[s] for s in SPLITS], Path(out), sub)
    except PpdataError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{out}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + " images", err=True)


def parse_subset(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        a, b = (int(v) for v in text.split(","))
        if a < 1 or b < 1:
            raise ValueError
    except ValueError:
        raise PpdataError(f"--subset {text!r}: expected TRAIN,TEST images per class, e.g. 1000,200") from None
    return a, b


if __name__ == "__main__":
    main()
