"""Image-quality metrics for reconstruction attacks: SSIM and PSNR from scikit-image.

Conventions (all functions take ``(N, H, W, 3)`` uint8 batches, reference first, and return one
value per image as a float64 array):

``ssim``        luminance SSIM: both images converted to Y = 0.299 R + 0.587 G + 0.114 B
                (ITU-R BT.601, float64, not rounded), then
                ``skimage.metrics.structural_similarity`` with the settings of Wang et al. (2004):
                11x11 Gaussian window (``gaussian_weights=True, sigma=1.5``), population
                covariance (``use_sample_covariance=False``), K1 = 0.01, K2 = 0.03,
                ``data_range=255``; the mean of the SSIM map without the 5-pixel border that
                the window cannot cover. This is the SSIM of MATLAB's ``ssim`` and of most image
                restoration papers, and the primary number we report.
``ssim_colour`` the same SSIM on R, G and B separately, averaged over the three channels
                (``channel_axis=-1``).
``psnr``        ``skimage.metrics.peak_signal_noise_ratio`` over all three channels,
                ``data_range=255``: 10 log10(255^2 / MSE). Identical images give MSE = 0 and
                +inf; ``summary`` caps each value at ``PSNR_CAP`` = 100 dB before averaging.

The paper (Sirichotedumrong et al., Table 2) reports "SSIM" and "PSNR" of reconstructions from its
ciphertext-only attack without stating colour or luminance or the window; the Gaussian-window
luminance SSIM above is the common reading of "SSIM" for colour images, and we report the
colour variant alongside so either reading can be compared. Both SSIMs are bounded by 1, and
reach 1 only for identical (luminance) images.
"""
from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

DATA_RANGE = 255.0
PSNR_CAP = 100.0
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601
SSIM_SETTINGS = dict(data_range=DATA_RANGE, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                     K1=0.01, K2=0.03)


def _check_pair(ref: np.ndarray, rec: np.ndarray) -> None:
    if ref.shape != rec.shape or ref.ndim != 4 or ref.shape[-1] != 3:
        raise ValueError(f"need two (N, H, W, 3) batches of one shape, got {ref.shape} and {rec.shape}")
    if min(ref.shape[1:3]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels, got {ref.shape[1]}x{ref.shape[2]}")


def luminance(images: np.ndarray) -> np.ndarray:
    """BT.601 luma of ``(..., 3)`` uint8 or float images as float64 in [0, 255]."""
    return np.asarray(images, np.float64) @ LUMA


def ssim(ref: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """Luminance SSIM per image (see module docstring)."""
    _check_pair(ref, rec)
    a, b = luminance(ref), luminance(rec)
    return np.array([structural_similarity(x, y, **SSIM_SETTINGS) for x, y in zip(a, b)], np.float64)


def ssim_colour(ref: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """Mean over R, G, B of the per-channel SSIM, per image."""
    _check_pair(ref, rec)
    a, b = np.asarray(ref, np.float64), np.asarray(rec, np.float64)
    return np.array([np.mean([structural_similarity(x[..., c], y[..., c], **SSIM_SETTINGS) for c in range(3)])
                     for x, y in zip(a, b)], np.float64)


def psnr(ref: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """PSNR in dB per image over all channels (+inf for identical images)."""
    _check_pair(ref, rec)
    out = np.empty(len(ref), np.float64)
    with np.errstate(divide="ignore"):
        for i, (x, y) in enumerate(zip(ref, rec)):
            if np.array_equal(x, y):
                out[i] = np.inf  # skimage would warn about the division by zero
            else:
                out[i] = peak_signal_noise_ratio(x, y, data_range=DATA_RANGE)
    return out


def evaluate(ref: np.ndarray, rec: np.ndarray, colour: bool = True) -> dict[str, np.ndarray]:
    """Per-image ``ssim``, ``psnr`` and (if ``colour``) ``ssim_colour`` arrays."""
    out = {"ssim": ssim(ref, rec), "psnr": psnr(ref, rec)}
    if colour:
        out["ssim_colour"] = ssim_colour(ref, rec)
    return out


def summary(values: dict[str, np.ndarray]) -> dict:
    """Mean, standard deviation and 10/50/90th percentiles of each per-image metric, plus the
    fraction of images with luminance SSIM >= 0.5 (``ssim_ge_0.5``). PSNR is capped at
    ``PSNR_CAP``; means are over images."""
    out: dict = {}
    for name, v in values.items():
        v = np.minimum(np.asarray(v, np.float64), PSNR_CAP) if name == "psnr" else np.asarray(v, np.float64)
        p10, p50, p90 = np.percentile(v, [10, 50, 90]) if len(v) else (np.nan,) * 3
        out[name] = {"mean": float(v.mean()) if len(v) else float("nan"), "std": float(v.std()) if len(v) else float("nan"),
                     "p10": float(p10), "median": float(p50), "p90": float(p90)}
    if "ssim" in values and len(values["ssim"]):
        out["ssim_ge_0.5"] = float(np.mean(np.asarray(values["ssim"]) >= 0.5))
    out["n"] = int(len(next(iter(values.values())))) if values else 0
    return out
