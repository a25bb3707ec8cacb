"""Run attacks on a victim's encrypted images and score them against the plain originals.

A *result* is ``{"images": (N, H, W, 3) uint8 reconstructions, "metrics": per-image arrays
(attack.metrics.evaluate), "summary": attack.metrics.summary, "seconds": float, "note": str}``.
Training-free attacks whose output is ambiguous up to a global transform are scored after the
``attack.variants.best`` choice (an attacker picking the natural-looking one of 8 or 48 images).
"""
from __future__ import annotations

import time

import numpy as np

from ppdata.cipher import fold

from . import metrics, variants
from .neighbour import neighbour_attack

# name -> one-line description (report tables use these)
DESCRIPTIONS = {
    "encrypted": "the encrypted image itself (baseline: what a viewer sees)",
    "fold-raw": "the fold as it is, no variant chosen (dark: every value read as below mid-grey)",
    "fold": "min(e, 255-e) per channel, sorted per pixel under CS; no key, no training; best of the 8/48 global "
            "variants (what the neighbour-consistency rule with nearest neighbours returns, exactly)",
    "neighbour": "neighbour consistency with extrapolation: per pixel the candidate (8, or 48 under CS) closest to "
                 "the decided neighbours and to linear extrapolations through them, spreading from a seed; best of "
                 "the 8/48 global variants",
    "coa-1x1": "the paper's attack: 1x1 locally connected 8/32/3 network trained on the attacker's (Enc(T), T)",
    "unet": "small U-Net on the fold, trained on the attacker's (Enc(T), T) under independent keys",
}


def score(name: str, plain: np.ndarray, rec: np.ndarray, seconds: float, note: str = "", colour: bool = True) -> dict:
    m = metrics.evaluate(plain, rec, colour=colour)
    return {"name": name, "images": rec, "metrics": m, "summary": metrics.summary(m), "seconds": round(seconds, 2),
            "note": note}


TRAINING_FREE = ("encrypted", "fold-raw", "fold", "neighbour")


def training_free(encrypted: np.ndarray, plain: np.ndarray, cs: bool, attacks=TRAINING_FREE,
                  colour: bool = True, workers: int = 1) -> dict[str, dict]:
    """The training-free attacks on ``encrypted`` (NP, or NP+CS if ``cs``), scored against ``plain``.

    ``workers > 1`` splits the images into that many parts, attacked and scored in forked
    processes (every attack and metric is per image, so the results are the same)."""
    workers = max(1, min(workers, len(encrypted) // 64))
    if workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        try:
            ctx = mp.get_context("fork")
        except ValueError:  # no fork on this platform
            ctx = None
        if ctx is not None:
            bounds = np.linspace(0, len(encrypted), workers + 1).astype(int)
            t0 = time.time()
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                parts = list(pool.map(_part, [(encrypted[a:b], plain[a:b], cs, tuple(attacks), colour)
                                              for a, b in zip(bounds, bounds[1:])]))
            wall = time.time() - t0
            out = {}
            for name in attacks:
                rs = [p[name] for p in parts]
                m = {k: np.concatenate([r["metrics"][k] for r in rs]) for k in rs[0]["metrics"]}
                cpu = sum(r["seconds"] for r in rs)
                out[name] = {"name": name, "images": np.concatenate([r["images"] for r in rs]), "metrics": m,
                             "summary": metrics.summary(m), "seconds": round(cpu, 2),
                             "note": f"{workers} processes; {wall:.1f} s wall for all attacks"}
            return out
    out = {}
    for name in attacks:
        t0 = time.time()
        if name == "encrypted":
            rec = encrypted
        elif name == "fold-raw":
            rec = fold(encrypted, cs)
        elif name == "fold":
            rec, _ = variants.best(fold(encrypted, cs), plain, cs)
        elif name == "neighbour":
            rec, _ = variants.best(neighbour_attack(encrypted, cs, "extrapolate"), plain, cs)
        else:
            raise ValueError(f"unknown training-free attack {name!r}")
        out[name] = score(name, plain, rec, time.time() - t0, colour=colour)
    return out


def _part(args):
    encrypted, plain, cs, attacks, colour = args
    return training_free(encrypted, plain, cs, attacks, colour, workers=1)


def grid_rows(plain: np.ndarray, encrypted: np.ndarray, results: dict[str, dict], n: int = 8) -> tuple[np.ndarray, list[str]]:
    """Images for a figure like the paper's Fig. 13: rows original, encrypted, then each attack's
    reconstruction (first ``n`` images). Returns (images (rows*n, H, W, 3), row labels)."""
    rows, labels = [plain[:n], encrypted[:n]], ["original", "encrypted"]
    for name, r in results.items():
        if name == "encrypted":
            continue
        rows.append(r["images"][:n])
        labels.append(name)
    return np.concatenate(rows), labels


def save_grid(path, plain, encrypted, results, n: int = 8) -> list[str]:
    """Write the grid of ``grid_rows`` as a PNG (one row per label, ``n`` columns)."""
    from ppdata.preview import auto_scale, grid, label_rows, save_png

    imgs, labels = grid_rows(plain, encrypted, results, n)
    n = min(n, len(plain))
    sheet = grid(imgs, cols=n, scale=auto_scale(plain.shape[1], 64))
    save_png(label_rows(sheet, labels, len(labels)), path)
    return labels


def table_rows(results: dict[str, dict]) -> list[str]:
    """Markdown rows: attack | mean SSIM (sd) | colour SSIM | PSNR dB (sd) | SSIM p10/median/p90 | SSIM >= 0.5."""
    out = []
    for name, r in results.items():
        s = r["summary"]
        col = f"{s['ssim_colour']['mean']:.3f}" if "ssim_colour" in s else "-"
        out.append(f"| {name} | {s['ssim']['mean']:.3f} ({s['ssim']['std']:.3f}) | {col} | "
                   f"{s['psnr']['mean']:.2f} ({s['psnr']['std']:.2f}) | "
                   f"{s['ssim']['p10']:.2f} / {s['ssim']['median']:.2f} / {s['ssim']['p90']:.2f} | "
                   f"{100 * s['ssim_ge_0.5']:.0f}% |")
    return out


TABLE_HEADER = ["| attack | SSIM mean (sd) | colour SSIM | PSNR dB mean (sd) | SSIM p10 / median / p90 | images with SSIM >= 0.5 |",
                "|---|---|---|---|---|---|"]


def machine() -> dict:
    """CPU model, cores and accelerator, for result records (``ppdata.machine.describe``)."""
    from ppdata.machine import describe

    return describe()