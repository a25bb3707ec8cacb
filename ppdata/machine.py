"""The machine a result was measured on, described once for every package (bench, train, attack).

``describe(device=None)`` returns a dict: ``cpu`` (model name), ``cores`` (logical), ``memory_gib``,
``python``, ``numpy`` and, when torch is importable, ``torch``, ``torch_threads`` and ``gpu`` (the
card's name for a CUDA ``device``, or the first visible card; None without one). ``summary(d)`` is
the one-line form used in reports. torch is imported only if it is installed: the client never
needs it.
"""
from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


# CPU features that decide what a CPU trains fast with (bf16 needs AMX-BF16 or AVX512-BF16)
FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_features() -> list[str]:
    """Which of ``FEATURES`` this CPU has (``/proc/cpuinfo`` flags; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return []
    return [x for x in FEATURES if x in flags]


def describe(device=None) -> dict:
    """What the machine is (see module docstring); ``device``: a torch device or its name."""
    import numpy as np

    d = {"cpu": cpu_name(), "cores": os.cpu_count(), "memory_gib": memory_gib(), "cpu_features": cpu_features(),
         "python": platform.python_version(), "numpy": np.__version__}
    try:
        import torch
    except ImportError:
        return d
    d["torch"] = torch.__version__
    d["torch_threads"] = torch.get_num_threads()
    gpu = None
    if torch.cuda.is_available():
        dev = torch.device(device) if device is not None else torch.device("cuda", 0)
        if dev.type == "cuda":
            gpu = torch.cuda.get_device_name(dev)
    d["gpu"] = gpu
    return d


def summary(d: dict | None = None) -> str:
    """One line: ``<gpu>; <cpu>, N cores, M GiB, Python x, torch y``."""
    d = d or describe()
    host = f"{d['cpu']}, {d['cores']} cores" + (f", {d['memory_gib']:g} GiB" if d.get("memory_gib") else "")
    host += f", Python {d['python']}" + (f", torch {d['torch']}" if d.get("torch") else f", numpy {d['numpy']}")
    return f"{d['gpu']}; host {host}" if d.get("gpu") else host
