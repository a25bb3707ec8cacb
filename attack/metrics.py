"""Image-quality metrics for reconstruction attacks: SSIM and PSNR as scikit-image computes them.

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
``psnr``        10 log10(255^2 / MSE) over all three channels (as
                ``skimage.metrics.peak_signal_noise_ratio`` with ``data_range=255``). Identical
                images give MSE = 0 and +inf; ``summary`` caps each value at ``PSNR_CAP`` = 100 dB
                before averaging.

Implementation: scikit-image's algorithm (``structural_similarity``: the five Gaussian-filtered
moments, its formula, the cropped mean) run on stacks of images at once, with the same
``scipy.ndimage.gaussian_filter`` call; the values equal scikit-image's to rounding (about 1e-15,
tested), several times faster than one call per image and channel.

The paper (Sirichotedumrong et al., Table 2) reports "SSIM" and "PSNR" of reconstructions from its
ciphertext-only attack without stating colour or luminance or the window; the Gaussian-window
luminance SSIM above is the common reading of "SSIM" for colour images, and we report the
colour variant alongside so either reading can be compared. Both SSIMs are bounded by 1, and
reach 1 only for identical (luminance) images.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

DATA_RANGE = 255.0
PSNR_CAP = 100.0
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601
SSIM_SETTINGS = dict(data_range=DATA_RANGE, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                     K1=0.01, K2=0.03)
C1 = (SSIM_SETTINGS["K1"] * DATA_RANGE) ** 2
C2 = (SSIM_SETTINGS["K2"] * DATA_RANGE) ** 2
CROP = 5  # half-width of the 11x11 window (sigma 1.5, truncate 3.5): the border scikit-image leaves out
CHUNK = 32  # images per batch of filtered maps


def _check_pair(ref: np.ndarray, rec: np.ndarray) -> None:
    if ref.shape != rec.shape or ref.ndim != 4 or ref.shape[-1] != 3:
        raise ValueError(f"need two (N, H, W, 3) batches of one shape, got {ref.shape} and {rec.shape}")
    if min(ref.shape[1:3]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels, got {ref.shape[1]}x{ref.shape[2]}")


def luminance(images: np.ndarray) -> np.ndarray:
    """BT.601 luma of ``(..., 3)`` uint8 or float images as float64 in [0, 255]."""
    return np.asarray(images, np.float64) @ LUMA


def gaussian(maps: np.ndarray) -> np.ndarray:
    """scikit-image's SSIM window over the last two axes of float64 ``(..., H, W)`` maps: the
    same ``scipy.ndimage.gaussian_filter`` call (sigma 1.5, truncate 3.5, mode reflect) that
    ``structural_similarity`` makes per image, done for a whole stack at once."""
    sigma = (0,) * (maps.ndim - 2) + (SSIM_SETTINGS["sigma"],) * 2
    return gaussian_filter(maps, sigma=sigma, truncate=3.5, mode="reflect")


def ssim_from_moments(ux, uy, uxx, uyy, uxy, crop: bool = True) -> np.ndarray:
    """Mean SSIM over the cropped map from Gaussian moments ``(..., H, W)`` (E[x], E[y], E[x^2],
    E[y^2], E[xy]): scikit-image's formula, reduced over the last two axes (``crop=False``: the
    moments are already cropped to the SSIM support)."""
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    S = ((2 * ux * uy + C1) * (2 * vxy + C2)) / ((ux * ux + uy * uy + C1) * (vx + vy + C2))
    return (S[..., CROP:-CROP, CROP:-CROP] if crop else S).mean(axis=(-2, -1), dtype=np.float64)


def _planes_ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM of float64 planes (..., H, W), batched."""
    G = gaussian(np.stack([a, b, a * a, b * b, a * b]))
    return ssim_from_moments(*G)


def ssim(ref: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """Luminance SSIM per image (see module docstring)."""
    _check_pair(ref, rec)
    return np.concatenate([_planes_ssim(luminance(ref[i : i + CHUNK]), luminance(rec[i : i + CHUNK]))
                           for i in range(0, len(ref), CHUNK)] or [np.zeros(0)])


def ssim_colour(ref: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """Mean over R, G, B of the per-channel SSIM, per image."""
    _check_pair(ref, rec)
    out = []
    for i in range(0, len(ref), CHUNK):
        a = np.moveaxis(ref[i : i + CHUNK].astype(np.float64), -1, 1)  # (b, 3, H, W)
        b = np.moveaxis(rec[i : i + CHUNK].astype(np.float64), -1, 1)
        out.append(_planes_ssim(a, b).mean(axis=1))
    return np.concatenate(out or [np.zeros(0)])


def mse(ref: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """Mean squared error per image over all values, float64."""
    d = ref.astype(np.float64) - rec
    return np.einsum("nhwc,nhwc->n", d, d) / (d[0].size if len(d) else 1)


def psnr_from_mse(m: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return 10 * np.log10(DATA_RANGE**2 / np.asarray(m, np.float64))


def psnr(ref: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """PSNR in dB per image over all channels (+inf for identical images)."""
    _check_pair(ref, rec)
    return psnr_from_mse(mse(ref, rec))


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
