"""Helpers shared by the benchmarks: the machine, the load on it, the input images, timing."""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ppdata.sources import SampleSource  # noqa: E402


def machine() -> str:
    """CPU model, core count, Python and numpy versions."""
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}"


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
