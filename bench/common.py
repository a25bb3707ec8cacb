"""Helpers shared by the benchmarks: the machine, the load on it, the input images, timing."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ppdata.sources import SampleSource  # noqa: E402


def machine() -> str:
    """CPU model, cores, memory, Python and numpy/torch versions (``ppdata.machine``)."""
    from ppdata.machine import summary

    return summary()


def load() -> str:
    """Load average and CPU pressure (other tenants of a shared machine show up here)."""
    text = "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())
    try:
        some = open("/proc/pressure/cpu").readline().split()
        text += ", CPU pressure " + " ".join(some[1:3])
    except OSError:
        pass
    return text


def cifar_like(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` real 32x32 CIFAR-10 images (the embedded sample's 600, tiled) and labels 0..9."""
    base = np.concatenate([b.images for s in ("train", "test") for b in SampleSource().batches(s)])
    images = np.ascontiguousarray(np.tile(base, (-(-n // len(base)), 1, 1, 1))[:n])
    return images, (np.arange(n) % 10).astype(np.int64)


def best_of(fn, reps: int = 3) -> float:
    """The shortest of ``reps`` wall-clock timings of ``fn()``, in seconds."""
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def copy_limits(folder: Path, scratch: Path, reps: int = 3) -> dict[str, float]:
    """Seconds (best of ``reps``, each after ``sync``) to copy the files of ``folder``:

    ``dd``        user-space read + sequential write of the same bytes (bs=4M), page cache: the
                  limit for a program that writes this many bytes;
    ``dd+fsync``  the same, fsync'ed per file (``conv=fsync``): the limit for a durable write;
    ``cp``        ``cp -r`` (coreutils uses copy_file_range: the kernel copies cached pages
                  without a trip through user space, which a writer of new data cannot do).

    Copies of real bytes, never of /dev/zero: on virtual machines zero pages can be far cheaper
    to write than data.
    """
    import shutil
    import subprocess

    files = sorted(p for p in folder.iterdir() if p.is_file())
    out: dict[str, float] = {}

    def timed(run) -> float:
        best = float("inf")
        for i in range(reps):
            dst = scratch / f"limit-{i}"
            dst.mkdir(parents=True)
            os.sync()
            t = time.perf_counter()
            run(dst)
            best = min(best, time.perf_counter() - t)
            shutil.rmtree(dst)
        return best

    def dd(dst: Path, fsync: bool) -> None:
        for f in files:
            cmd = ["dd", f"if={f}", f"of={dst / f.name}", "bs=4M", "status=none"]
            subprocess.run(cmd + (["conv=fsync"] if fsync else []), check=True)

    out["dd"] = timed(lambda d: dd(d, False))
    out["dd+fsync"] = timed(lambda d: dd(d, True))
    out["cp"] = timed(lambda d: subprocess.run(["cp", "-r", str(folder), str(d / "copy")], check=True))
    return out


def write_report(lines: list[str], out_dir: str | Path, name: str) -> Path:
    """Print a markdown report and save it as ``out_dir/<name>-<date>.md``."""
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{time.strftime('%Y-%m-%d')}.md"
    path.write_text(text)
    return path
