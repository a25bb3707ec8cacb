"""Encrypted-domain expansion throughput: 50,000 encrypted 32x32 images -> 400,000 (x8).

    python bench/augment.py [--n 50000] [--baseline-n 2000] [--repeat 2] [--out bench/results]

Input: CIFAR-10-sized, ``--n`` real 32x32 CIFAR-10 images (the embedded sample's 600, tiled),
encrypted NP+CS under independent keys into WebDataset and HDF5 shard folders (not timed).
Compared in one run, best of ``--repeat``:
  ours       ``ppdata augment IN --out OUT`` as a user runs it (a fresh process: start-up, reading,
             expansion, global shuffle, tar/HDF5 writing, sha256, fsync of every shard), with the
             peak resident memory of that process;
  baseline   the obvious script: webdataset.WebDataset reader, per image np.flip / np.roll with
             zeroing, webdataset.ShardWriter, no global shuffle (run on ``--baseline-n`` images,
             rate extrapolated);
  limit      copying our WebDataset output with ``dd`` (with fsync per shard: durable, as ppdata;
             and without: page cache) and with ``cp -r`` (``bench/common.copy_limits``), and sha256
             of the same bytes (the manifest's checksums).
Writes a markdown table to ``--out`` and prints it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import cifar_like, copy_limits, load, machine, write_report  # noqa: E402
from ppdata import __version__  # noqa: E402
from ppdata.cipher import get_scheme  # noqa: E402
from ppdata.keys import KeyStream, new_secret  # noqa: E402
from ppdata.pipeline import encrypt  # noqa: E402
from ppdata.sources import ArraySource  # noqa: E402








def folder_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file() and p.name != "manifest.json")


def timed(cmd: list[str], env=None) -> tuple[float, int]:
    """Wall seconds and peak resident memory (bytes) of a child process (after ``sync``)."""
    os.sync()
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed")
    return dt, usage.ru_maxrss * 1024


def ours(src: Path, out: Path, fsync: bool = True) -> tuple[float, int, int]:
    """``ppdata augment`` in a fresh process; ``fsync=False`` stubs out os.fsync to show the
    CPU-bound part (not a mode ppdata offers)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    shutil.rmtree(out, ignore_errors=True)
    head = [sys.executable, "-m", "ppdata"] if fsync else [
        sys.executable, "-c", "import os, sys; os.fsync = lambda fd: None; sys.argv[0] = 'ppdata'; "
                              "from ppdata.cli import main; main()"]
    dt, rss = timed(head + ["-q", "augment", str(src), "--out", str(out)], env)
    return dt, rss, folder_bytes(out)


def baseline(src: Path, out: Path, n: int) -> float:
    """The obvious script: per image and variant, numpy flip/roll, webdataset ShardWriter."""
    import webdataset as wds

    out.mkdir(parents=True)
    urls = sorted(str(p) for p in src.glob("train-*.tar"))
    t = time.perf_counter()
    done = 0
    with wds.ShardWriter(str(out / "train-%06d.tar"), maxcount=10000, verbose=0) as sink:
        for sample in wds.WebDataset(urls, shardshuffle=False).decode():
            x, y = sample["npy"], int(sample["cls"])
            for flip in (False, True):
                f = x[:, ::-1] if flip else x
                for dx, dy in ((4, 4), (4, -4), (-4, 4), (-4, -4)):
                    z = np.roll(f, (dy, dx), axis=(0, 1))
                    if dy > 0:
                        z[:dy] = 0
                    else:
                        z[dy:] = 0
                    if dx > 0:
                        z[:, :dx] = 0
                    else:
                        z[:, dx:] = 0
                    sink.write({"__key__": f"{sample['__key__']}_f{int(flip)}_sx{dx:+d}_sy{dy:+d}",
                                "npy": z, "cls": y})
            done += 1
            if done >= n:
                break
    return 8 * done / (time.perf_counter() - t)


def sha256_limit(nbytes: int) -> float:
    """sha256 of the same number of bytes in memory (ppdata's manifest checksums), one core."""
    import hashlib

    buf = np.random.default_rng(0).integers(0, 256, 64 << 20, dtype=np.uint8)
    h = hashlib.sha256()
    t = time.perf_counter()
    for _ in range(nbytes // buf.nbytes):
        h.update(buf)
    h.update(buf[: nbytes % buf.nbytes])
    return time.perf_counter() - t


DURABLE = "limit: dd + fsync of our WebDataset output (durable copy)"
CACHE = "limit: dd of our WebDataset output (page cache)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--baseline-n", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--tmp", default=None, help="scratch folder (default: system temp)")
    args = ap.parse_args()
    images, labels = cifar_like(args.n)
    scratch = Path(tempfile.mkdtemp(prefix="ppdata-bench-", dir=args.tmp))
    n_out = 8 * args.n
    best: dict[str, list] = {}
    load_before = load()

    def keep(name, dt, *extra):
        if name not in best or dt < best[name][0]:
            best[name] = [dt, *extra]

    try:
        for fmt in ("webdataset", "hdf5"):
            encrypt(ArraySource({"train": (images, labels)}), scratch / f"in-{fmt}",
                    scheme=get_scheme("pixel", cs=True), keys=KeyStream(new_secret()), fmt=fmt,
                    progress=False, batch_size=1024)
        in_bytes = folder_bytes(scratch / "in-webdataset")
        for _ in range(args.repeat):
            for fmt in ("webdataset", "hdf5"):
                dt, rss, size = ours(scratch / f"in-{fmt}", scratch / f"out-{fmt}")
                keep(f"ppdata augment -> {fmt}", dt, size, rss)
            dt, rss, size = ours(scratch / "in-webdataset", scratch / "out-nofsync", fsync=False)
            keep("ppdata augment -> webdataset, fsync stubbed out (CPU-bound part)", dt, size, rss)
            shutil.rmtree(scratch / "out-nofsync", ignore_errors=True)
            size = best["ppdata augment -> webdataset"][1]
            lim = copy_limits(scratch / "out-webdataset", scratch, reps=1)
            keep(DURABLE, lim["dd+fsync"], size)
            keep(CACHE, lim["dd"], size)
            keep("cp -r of our WebDataset output (in-kernel copy)", lim["cp"], size)
            keep("sha256 of the same bytes, in memory, one core (the manifest's checksums)", sha256_limit(size), size)
            for fmt in ("webdataset", "hdf5"):
                shutil.rmtree(scratch / f"out-{fmt}", ignore_errors=True)
        base = baseline(scratch / "in-webdataset", scratch / "baseline", args.baseline_n)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load_after = load()
    limit = best[DURABLE][0]
    rows = []
    for name, (dt, size, *rest) in best.items():
        rss = f"{rest[0] / 2**20:,.0f} MiB" if rest else ""
        rows.append(f"| {name} | {dt:.2f} | {n_out / dt:,.0f} | {size / dt / 1e6:,.0f} | {dt / limit:.2f} | {rss} |")
    wsize = best["ppdata augment -> webdataset"][1]
    rows.append(f"| baseline: per-image np.flip/np.roll + webdataset.ShardWriter, no shuffle "
                f"({args.baseline_n} inputs, extrapolated) | {n_out / base:.1f} | {base:,.0f} | "
                f"{base * wsize / n_out / 1e6:,.0f} | {n_out / base / limit:.2f} | |")
    ours_w = best["ppdata augment -> webdataset"][0]
    ours_h = best["ppdata augment -> hdf5"][0]
    lines = [
        f"# Augment benchmark ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {machine()}. ppdata {__version__}. Command: `python bench/augment.py --n {args.n} "
        f"--repeat {args.repeat}` (best of {args.repeat}). Machine load: before: {load_before}; after: {load_after}.",
        f"Input: {args.n:,} encrypted (NP+CS, independent keys) 32x32 real CIFAR-10 images "
        f"({in_bytes / 1e6:,.0f} MB of WebDataset tar); output: {n_out:,} images "
        f"({wsize / 1e6:,.0f} MB of tar), x8 = flip x (+-4, +-4), seeded global shuffle.",
        "",
        "| what | seconds | output images/s | MB/s written | time vs durable copy | peak memory |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"ppdata augment (WebDataset) takes {ours_w / limit:.2f}x the time of copying the same bytes durably "
        f"(dd conv=fsync per shard, as ppdata fsyncs each shard; target: within 3x), "
        f"{ours_w / best[CACHE][0]:.2f}x that of copying them into the page cache; HDF5 {ours_h / limit:.2f}x "
        f"(the same images in a {best['ppdata augment -> hdf5'][1] / 1e6:,.0f} MB file, against the copy of the "
        f"tar's bytes). It is {n_out / ours_w / base:.0f}x the "
        f"obvious per-image script, which does not even shuffle. Without fsync (CPU-bound: tar records, sha256 of "
        f"every byte, the variants, on {os.cpu_count()} cores) it takes "
        f"{best['ppdata augment -> webdataset, fsync stubbed out (CPU-bound part)'][0]:.2f} s.",
    ]
    write_report(lines, args.out, "augment")


if __name__ == "__main__":
    main()
