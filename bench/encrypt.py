"""Encryption throughput: the cipher alone, and end to end into WebDataset / HDF5 shards.

    python bench/encrypt.py [--n 60000] [--baseline-n 10000] [--out bench/results]

Input: CIFAR-10-sized, 60,000 decoded 32x32 images (the embedded sample's 600 real CIFAR-10
images tiled), labels 0..9. Compared in one run:
  cipher      NP+CS, independent keys (key derivation included), one thread, vs a memcpy of the
              same bytes (numpy copyto): the physical limit of touching the data once.
  end to end  ``ppdata.pipeline.encrypt`` from arrays to shards (WebDataset and HDF5), vs
              (a) the obvious baseline: per image PIL -> numpy -> per-image key + encryption ->
                  ``webdataset.ShardWriter`` (run on ``--baseline-n`` images, rate extrapolated),
              (b) the limit: a sequential ``dd`` write of the same number of bytes (with and without
                  fsync, since ppdata fsyncs every finished shard).
Writes a markdown table to ``--out`` and prints it.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import best_of, cifar_like, machine  # noqa: E402
from ppdata import __version__  # noqa: E402
from ppdata.cipher import get_scheme  # noqa: E402
from ppdata.keys import KeyStream, new_secret  # noqa: E402
from ppdata.pipeline import encrypt  # noqa: E402
from ppdata.sources import ArraySource  # noqa: E402








def bench_cipher(images) -> list[tuple[str, float]]:
    scheme = get_scheme("pixel", cs=True)
    stream = KeyStream(new_secret())
    n, batch = len(images), 256
    out = np.empty_like(images)

    def run():
        for a in range(0, n, batch):
            k = scheme.derive_keys(stream, "train", np.arange(a, min(n, a + batch)), images.shape[1:])
            out[a : a + batch] = scheme.encrypt(images[a : a + batch], k)

    def memcpy():
        np.copyto(out, images)

    t_enc = best_of(run)
    t_np = best_of(lambda: [get_scheme("pixel").encrypt(images[a:a + batch], get_scheme("pixel").derive_keys(
        stream, "train", np.arange(a, min(n, a + batch)), images.shape[1:])) for a in range(0, n, batch)])
    t_cpy = best_of(memcpy)
    return [("cipher NP+CS, independent keys (1 thread)", n / t_enc),
            ("cipher NP only, independent keys (1 thread)", n / t_np),
            ("memcpy of the same bytes (limit)", n / t_cpy)]


def baseline(images, labels, out: Path) -> float:
    """Per image: PIL -> numpy -> per-image key and encryption -> webdataset.ShardWriter."""
    import webdataset as wds
    from PIL import Image

    scheme = get_scheme("pixel", cs=True)
    stream = KeyStream(new_secret())
    out.mkdir(parents=True)
    t = time.perf_counter()
    with wds.ShardWriter(str(out / "train-%06d.tar"), maxcount=10000, verbose=0) as sink:
        for i in range(len(images)):
            x = np.asarray(Image.fromarray(images[i]))[None]
            k = scheme.derive_keys(stream, "train", [i], x.shape[1:])
            y = scheme.encrypt(x, k)[0]
            sink.write({"__key__": f"train_{i:06d}", "npy": y, "cls": int(labels[i])})
    return len(images) / (time.perf_counter() - t)


def ours(images, labels, out: Path, fmt: str) -> tuple[float, int]:
    src = ArraySource({"train": (images, labels)})
    t = time.perf_counter()
    encrypt(src, out, scheme=get_scheme("pixel", cs=True), keys=KeyStream(new_secret()), fmt=fmt,
            shard_size=10000, progress=False, batch_size=1024)
    dt = time.perf_counter() - t
    size = sum(p.stat().st_size for p in out.iterdir())
    return len(images) / dt, size


def write_limit(dst: Path, nbytes: int, n: int, fsync: bool) -> float:
    """dd of the same number of bytes from /dev/zero: a sequential write with no reading."""
    best = 0.0
    for i in range(3):  # best of 3
        best = max(best, _dd(dst.with_name(f"{dst.name}{i}"), nbytes, n, fsync))
    return best


def _dd(dst: Path, nbytes: int, n: int, fsync: bool) -> float:
    cmd = ["dd", "if=/dev/zero", f"of={dst}", "bs=1M", f"count={-(-nbytes // (1 << 20))}", "status=none"]
    if fsync:
        cmd.append("conv=fsync")
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60000)
    ap.add_argument("--baseline-n", type=int, default=10000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--tmp", default=None, help="scratch folder (default: system temp)")
    args = ap.parse_args()
    images, labels = cifar_like(args.n)
    rows = bench_cipher(images)
    scratch = Path(tempfile.mkdtemp(prefix="ppdata-bench-", dir=args.tmp))
    try:
        e2e = []
        for fmt in ("webdataset", "hdf5"):
            runs = [ours(images, labels, scratch / f"{fmt}{i}", fmt) for i in range(3)]  # best of 3
            for i in range(1, 3):
                shutil.rmtree(scratch / f"{fmt}{i}")
            (scratch / f"{fmt}0").rename(scratch / fmt)
            rate, size = max(runs)
            e2e.append((f"ppdata encrypt -> {fmt} (2 threads, best of 3)", rate, size))
        wsize = e2e[0][2]
        dd = write_limit(scratch / "dd", wsize, args.n, fsync=False)
        dds = write_limit(scratch / "dds", wsize, args.n, fsync=True)
        base = baseline(images[: args.baseline_n], labels[: args.baseline_n], scratch / "baseline")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    wds_size = e2e[0][2]
    lines = [
        f"# Encryption benchmark ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {machine()}. ppdata {__version__}. Command: `python bench/encrypt.py --n {args.n}`.",
        f"Input: {args.n} decoded 32x32 real CIFAR-10 images (embedded sample, tiled), NP+CS, independent keys.",
        "",
        "## Cipher alone (key derivation included, one thread)",
        "",
        "| what | images/s | vs memcpy |",
        "|---|---:|---:|",
    ]
    lim = rows[-1][1]
    for name, r in rows:
        lines.append(f"| {name} | {r:,.0f} | {r / lim:.3f} |")
    lines += [
        "",
        f"## End to end, arrays -> shards ({wds_size / 1e6:.0f} MB of WebDataset tar)",
        "",
        "| what | images/s | MB/s | vs dd |",
        "|---|---:|---:|---:|",
    ]
    per_img = wds_size / args.n
    for name, r, size in e2e:
        lines.append(f"| {name} | {r:,.0f} | {r * size / args.n / 1e6:,.0f} | {r / dd:.2f} |")
    lines.append(f"| baseline: per-image PIL -> encrypt -> webdataset.ShardWriter ({args.baseline_n} images) "
                 f"| {base:,.0f} | {base * per_img / 1e6:,.0f} | {base / dd:.3f} |")
    lines.append(f"| limit: dd of the same bytes from /dev/zero | {dd:,.0f} | {dd * per_img / 1e6:,.0f} | 1.00 |")
    lines.append(f"| limit: dd + fsync (ppdata fsyncs each finished shard) | {dds:,.0f} | "
                 f"{dds * per_img / 1e6:,.0f} | {dds / dd:.2f} |")
    lines += ["", f"ppdata (WebDataset) is {e2e[0][1] / base:.0f}x the baseline; the dd write is "
                  f"{dd / e2e[0][1]:.2f}x ppdata (target: within 3x), dd + fsync {dds / e2e[0][1]:.2f}x."]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"encrypt-{time.strftime('%Y-%m-%d')}.md").write_text(text)


if __name__ == "__main__":
    main()
