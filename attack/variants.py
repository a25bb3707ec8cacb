"""Global ambiguities of key-free reconstructions, and how an attacker resolves them.

A reconstruction computed from the key-free invariant (``ppdata.cipher.fold``) can only be right up
to a *global* transform: negating a channel everywhere (NP: 2^3 = 8 sign patterns) and, under CS,
reordering the channels everywhere (3! = 6 orders), 8 or 48 transforms in all. A transform is a
pair ``(perm, neg)``: ``out[..., c] = x[..., perm[c]]``, then ``255 - out[..., c]`` where
``neg[c]``.

An attacker resolves the ambiguity by looking at the 8 or 48 candidate images and keeping the
natural-looking one. ``best`` models that attacker by the transform with the highest luminance
SSIM to the original (an upper bound on a human's pick; it needs the original, so it is a
measurement device, not an attack on its own). All 8 or 48 SSIMs come from one set of Gaussian
moments per image (luminance is linear in R, G, B) and equal scikit-image's values to about 1e-7
(float32 arithmetic per transform); reported SSIMs are recomputed with scikit-image.
"""
from __future__ import annotations

import itertools

import numpy as np
from . import metrics
from .metrics import C1, C2, CROP, LUMA

PERMS = np.array(list(itertools.permutations(range(3))), np.int64)  # (6, 3), identity first
SIGNS = np.array(list(itertools.product([False, True], repeat=3)), bool)  # (8, 3), none negated first


def transforms(cs: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 8 (NP) or 48 (NP+CS) global transforms ``(perm, neg)``; the identity first."""
    perms = PERMS if cs else PERMS[:1]
    return [(p, s) for p in perms for s in SIGNS]


def apply(images: np.ndarray, perm, neg) -> np.ndarray:
    """Apply one transform to ``(N, H, W, 3)`` uint8 images, or per image with ``perm`` (N, 3) and
    ``neg`` (N, 3)."""
    perm = np.asarray(perm)
    neg = np.asarray(neg, bool)
    if perm.ndim == 1:
        out = images[..., perm]
        return np.where(neg, 255 - out, out).astype(np.uint8)
    out = np.take_along_axis(images, perm[:, None, None, :], axis=-1)
    return np.where(neg[:, None, None, :], 255 - out, out).astype(np.uint8)


def _luma(a: np.ndarray) -> np.ndarray:
    """BT.601 luminance of channel-first float64 maps (3, ...): explicit weighted sums (no BLAS
    call, which would start threads in every worker process)."""
    return LUMA[0] * a[0] + LUMA[1] * a[1] + LUMA[2] * a[2]


def weights(ts) -> tuple[np.ndarray, np.ndarray]:
    """Luminance of a transformed image as ``K[t] + sum_d U[t, d] x_d``: (U (T, 3), K (T,))."""
    U = np.zeros((len(ts), 3))
    K = np.zeros(len(ts))
    for t, (perm, neg) in enumerate(ts):
        for c in range(3):
            U[t, perm[c]] += -LUMA[c] if neg[c] else LUMA[c]
            K[t] += 255.0 * LUMA[c] if neg[c] else 0.0
    return U, K


_PAIRS = [(d, e) for d in range(3) for e in range(d, 3)]


def _filter(products) -> np.ndarray:
    """Gaussian-filtered maps (K, b, H-10, W-10) (cropped to the SSIM support) of the (b, H, W)
    float64 maps that ``products`` (a list of callables ``f(out)``) write."""
    first = products[0]
    shape = first[1]
    buf = np.empty((len(products),) + shape)
    for k, (fn, _) in enumerate(products):
        fn(buf[k])
    return metrics.gaussian(buf)[:, :, CROP:-CROP, CROP:-CROP]


class _Ref:
    """The reference side of a chunk: ``r`` (3, b, H, W) float64, its luminance, and the Gaussian
    moments E[r_c], E[r_c^2], E[y], E[y^2] on the cropped support, (b, H-10, W-10) each."""

    def __init__(self, r: np.ndarray):
        self.rf = np.moveaxis(r.astype(np.float64), -1, 0)
        self.y = _luma(self.rf)
        sh = self.y.shape
        rf, y = self.rf, self.y
        G = _filter([*((lambda o, c=c: np.copyto(o, rf[c]), sh) for c in range(3)),
                     *((lambda o, c=c: np.multiply(rf[c], rf[c], out=o), sh) for c in range(3)),
                     (lambda o: np.copyto(o, y), sh), (lambda o: np.multiply(y, y, out=o), sh)])
        self.mr, self.my, self.srr, self.syy = G[0:3], G[6], G[3:6], G[7]
        self.vr = self.srr - self.mr * self.mr  # local variance of r_c
        self.vy = self.syy - self.my * self.my
        self.sum_r = rf.sum(axis=(2, 3))  # (3, b)
        self.sum_rr = (rf * rf).sum(axis=(0, 2, 3))


class _Plain:
    """Metrics of reconstructions scored as they are, from 12 filtered maps: luminance l, l^2,
    l y; per channel x_c, x_c^2, x_c r_c."""

    def __init__(self, x: np.ndarray, ref: _Ref):
        xf = np.moveaxis(x.astype(np.float64), -1, 0)
        lum = _luma(xf)
        rf, y, sh = ref.rf, ref.y, lum.shape
        G = _filter([(lambda o: np.copyto(o, lum), sh), (lambda o: np.multiply(lum, lum, out=o), sh),
                     (lambda o: np.multiply(lum, y, out=o), sh),
                     *((lambda o, c=c: np.copyto(o, xf[c]), sh) for c in range(3)),
                     *((lambda o, c=c: np.multiply(xf[c], xf[c], out=o), sh) for c in range(3)),
                     *((lambda o, c=c: np.multiply(xf[c], rf[c], out=o), sh) for c in range(3))])
        self.lum = metrics.ssim_from_moments(G[0], ref.my, G[1], ref.syy, G[2], crop=False)
        self.colour = metrics.ssim_from_moments(G[3:6], ref.mr, G[6:9], ref.srr, G[9:12], crop=False).mean(axis=0)
        d = xf - rf
        self.mse = (d * d).sum(axis=(0, 2, 3)) / (d[0, 0].size * 3)


class _Moments:
    """Gaussian moments (``attack.metrics.gaussian``) of a chunk of reconstructions ``x`` against
    the references of ``ref`` (``_Ref``), on the cropped SSIM support, (b, H-10, W-10) float64:
    E[x_d], E[x_d x_e], E[x_d r_c] (18 filtered maps); and the plain image sums for the MSE. Every
    SSIM (luminance or per channel) and PSNR of every global transform of ``x`` follows."""

    def __init__(self, x: np.ndarray, ref: _Ref):
        xf = np.moveaxis(x.astype(np.float64), -1, 0)  # (3, b, H, W)
        rf, sh = ref.rf, xf.shape[1:]
        G = _filter([*((lambda o, d=d: np.copyto(o, xf[d]), sh) for d in range(3)),
                     *((lambda o, d=d, e=e: np.multiply(xf[d], xf[e], out=o), sh) for d, e in _PAIRS),
                     *((lambda o, d=d, c=c: np.multiply(xf[d], rf[c], out=o), sh) for d in range(3) for c in range(3))])
        self.mr, self.my, self.vr, self.vy = ref.mr, ref.my, ref.vr, ref.vy
        self.sum_r, self.sum_rr = ref.sum_r, ref.sum_rr
        self.mx = G[0:3]
        cov = {}
        for k, (d, e) in enumerate(_PAIRS):
            cov[d, e] = cov[e, d] = G[3 + k] - self.mx[d] * self.mx[e]
        self.cxx = cov  # (d, e) -> (b, h, w) local covariance of x_d and x_e
        self.sxr = G[9:18].reshape((3, 3) + G.shape[1:])  # [d, c] E[x_d r_c]
        self.cxy = np.stack([_luma(self.sxr[d]) - self.mx[d] * self.my for d in range(3)])
        # whole-image sums for the MSE of any transform (exact: sums of integers in float64)
        self.n_values = xf[0, 0].size * 3
        self.sum_x = xf.sum(axis=(2, 3))  # (3, b)
        self.sum_xr = np.einsum("dbhw,cbhw->dcb", xf, rf)  # (3, 3, b): sum x_d r_c (no BLAS: see _luma)
        self.sum_xx = (xf * xf).sum(axis=(2, 3))

    def ssim_all(self, U: np.ndarray, K: np.ndarray) -> np.ndarray:
        """Luminance SSIM of every transform (rows of U, K): (b, T), float32 per transform (torch:
        its matrix products honour ``torch.set_num_threads``, numpy's BLAS would start threads in
        every worker process and oversubscribe the cores)."""
        import torch

        f32 = torch.float32
        b = self.my.shape[0]
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32))  # noqa: E731
        UU = t(np.stack([U[:, d] * U[:, e] * (1.0 if d == e else 2.0) for d, e in _PAIRS], axis=1))
        U32, K32 = t(U), t(K)[:, None]
        cxx = t(np.stack([self.cxx[p] for p in _PAIRS]).reshape(6, b, -1))  # (6, b, M)
        mx, cxy = t(self.mx.reshape(3, b, -1)), t(self.cxy.reshape(3, b, -1))
        my, vy = t(self.my.reshape(b, -1)), t((self.vy + C2).reshape(b, -1))
        den_y = t((self.my * self.my + C1).reshape(b, -1))
        out = np.empty((b, len(U)))
        with torch.no_grad():
            for i in range(b):  # one image at a time: (T, M) arrays stay in cache
                mu = torch.addmm(K32.expand(-1, mx.shape[2]), U32, mx[:, i])
                var = torch.addmm(vy[i].expand(len(U), -1), UU, cxx[:, i])
                cov = (U32 @ cxy[:, i]).mul_(2).add_(C2)
                num = (mu * my[i]).mul_(2).add_(C1).mul_(cov)
                den = mu.mul_(mu).add_(den_y[i]).mul_(var)
                out[i] = num.div_(den).mean(dim=1, dtype=torch.float64).numpy()
        del f32
        return out

    def ssim(self, u: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Luminance SSIM (float64) of one transform per image: weights u (b, 3), offset k (b,)."""
        u = u.T[:, :, None, None]  # (3, b, 1, 1)
        mu = (u * self.mx).sum(axis=0) + k[:, None, None]
        var = sum(u[d] * u[e] * self.cxx[d, e] for d in range(3) for e in range(3))
        cov = (u * self.cxy).sum(axis=0)
        S = ((2 * mu * self.my + C1) * (2 * cov + C2)) / ((mu * mu + self.my * self.my + C1) * (var + self.vy + C2))
        return S.mean(axis=(1, 2), dtype=np.float64)

    def ssim_colour(self, perm: np.ndarray, neg: np.ndarray) -> np.ndarray:
        """Colour SSIM (float64, mean over R, G, B) of one transform per image (perm, neg (b, 3))."""
        rows = np.arange(perm.shape[0])
        out = np.zeros(perm.shape[0])
        for c in range(3):
            src = perm[:, c]
            s = np.where(neg[:, c], -1.0, 1.0)[:, None, None]
            m = self.mx[src, rows]
            ux = s * m + np.where(neg[:, c], 255.0, 0.0)[:, None, None]
            vx = np.stack([self.cxx[d, d] for d in range(3)])[src, rows]
            vxy = s * (self.sxr[src, c, rows] - m * self.mr[c])
            uy = self.mr[c]
            S = ((2 * ux * uy + C1) * (2 * vxy + C2)) / ((ux * ux + uy * uy + C1) * (vx + self.vr[c] + C2))
            out += S.mean(axis=(1, 2), dtype=np.float64)
        return out / 3

    def mse(self, perm: np.ndarray, neg: np.ndarray) -> np.ndarray:
        """Mean squared error of one transform per image, from whole-image sums (float64)."""
        rows = np.arange(perm.shape[0])
        total = self.sum_rr.copy()
        npx = self.n_values // 3
        for c in range(3):
            src = perm[:, c]
            sx, sxx, sxr = self.sum_x[src, rows], self.sum_xx[src, rows], self.sum_xr[src, c, rows]
            # out = x or 255 - x: sum (out - r)^2 = sum out^2 - 2 sum out r + sum r^2
            so2 = np.where(neg[:, c], 255.0**2 * npx - 2 * 255.0 * sx + sxx, sxx)
            sor = np.where(neg[:, c], 255.0 * self.sum_r[c] - sxr, sxr)
            total += so2 - 2 * sor
        return np.maximum(total, 0.0) / self.n_values


def ssim_all(rec: np.ndarray, ref: np.ndarray, cs: bool, chunk: int = 8) -> np.ndarray:
    """Luminance SSIM (``attack.metrics.ssim``) of every transform of ``rec`` against ``ref``:
    (N, T) float64, T = 8 or 48 in the order of ``transforms(cs)``.

    A transform's luminance is ``k + sum_d u_d x_d`` (``u_d`` = the BT.601 weight of the output
    channel fed by input channel d, negated where that channel is negated), so its local means,
    variances and covariance with the reference's luminance follow from the Gaussian moments of
    x_d, x_d x_e, x_d y, y and y^2 (``_Moments``), and the per-transform part is a few products
    on the cropped maps (float32: equal to scikit-image's values to about 1e-7)."""
    U, K = weights(transforms(cs))
    out = np.empty((len(rec), len(U)), np.float64)
    for a in range(0, len(rec), chunk):
        out[a : a + chunk] = _Moments(rec[a : a + chunk], _Ref(ref[a : a + chunk])).ssim_all(U, K)
    return out


def best(rec: np.ndarray, ref: np.ndarray, cs: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the transform of ``rec`` with the highest luminance SSIM to ``ref``.
    Returns (images, index into ``transforms(cs)``)."""
    k = ssim_all(rec, ref, cs).argmax(axis=1)
    return apply_index(rec, k, cs), k


def apply_index(rec: np.ndarray, k: np.ndarray, cs: bool) -> np.ndarray:
    """``rec`` (N, H, W, 3) with transform ``k[i]`` (index into ``transforms(cs)``) on image i."""
    ts = transforms(cs)
    perm = np.stack([ts[i][0] for i in k]) if len(k) else np.zeros((0, 3), np.int64)
    neg = np.stack([ts[i][1] for i in k]) if len(k) else np.zeros((0, 3), bool)
    return apply(rec, perm, neg)


def identity() -> list[tuple[np.ndarray, np.ndarray]]:
    """The identity alone, for reconstructions scored as they are."""
    return transforms(False)[:1]


def score(ref: np.ndarray, families: dict, chunk: int = 8) -> dict:
    """Score chosen global transforms of several reconstructions of ``ref`` in one pass over the
    Gaussian moments (the reference's computed once per chunk).

    ``families``: name -> ``(rec, ts, picks)``: ``rec`` (N, H, W, 3) uint8, ``ts`` a list of
    transforms (``transforms(cs)`` or ``identity()``), ``picks``: label -> ``"oracle"`` (per
    image the transform of highest luminance SSIM: an upper bound, it needs the original), an
    (N,) array of indices into ``ts`` (zeros: ``rec`` as it is) or a callable ``f(rec_chunk) ->
    indices`` (an attacker's own choice, made without the original).
    Returns name -> ``{"every": (N, T) luminance SSIM of every transform (float32 arithmetic),
    "picks": {label: {"ssim", "ssim_colour", "psnr", "choice"}}}``: per image the float64
    metrics of ``attack.metrics`` for the chosen transform (equal to scoring
    ``apply(rec, ...)`` with them, to rounding) and the choice."""
    n = len(ref)
    out, consts = {}, {}
    for name, (rec, ts, picks) in families.items():
        if rec.shape != ref.shape:
            raise ValueError(f"{name}: reconstructions {rec.shape} and references {ref.shape} differ")
        U, K = weights(ts)
        consts[name] = (U, K, np.stack([p for p, _ in ts]), np.stack([g for _, g in ts]))
        out[name] = {"every": np.empty((n, len(ts))),
                     "picks": {k: {"ssim": np.empty(n), "ssim_colour": np.empty(n), "psnr": np.empty(n),
                                   "choice": np.empty(n, np.int64)} for k in picks}}
    for a in range(0, n, chunk):
        r = ref[a : a + chunk]
        sl = slice(a, a + len(r))
        rm = _Ref(r)
        for name, (rec, ts, picks) in families.items():
            U, K, P, Ng = consts[name]
            every = out[name]["every"]
            if len(ts) == 1 and all(not isinstance(p, str) and not callable(p) for p in picks.values()):
                pm = _Plain(rec[sl], rm)  # scored as it is: 12 maps instead of 18
                every[sl] = pm.lum[:, None]
                for label in picks:
                    o = out[name]["picks"][label]
                    o["choice"][sl] = 0
                    o["ssim"][sl], o["ssim_colour"][sl] = pm.lum, pm.colour
                    o["psnr"][sl] = metrics.psnr_from_mse(pm.mse)
                continue
            m = _Moments(rec[sl], rm)
            every[sl] = m.ssim_all(U, K) if len(ts) > 1 else 0.0
            for label, pick in picks.items():
                if isinstance(pick, str):
                    k = every[sl].argmax(axis=1)
                elif callable(pick):
                    k = np.asarray(pick(rec[sl]), np.int64)
                else:
                    k = np.asarray(pick)[sl]
                o = out[name]["picks"][label]
                o["choice"][sl] = k
                o["ssim"][sl] = m.ssim(U[k], K[k])
                o["ssim_colour"][sl] = m.ssim_colour(P[k], Ng[k])
                o["psnr"][sl] = metrics.psnr_from_mse(m.mse(P[k], Ng[k]))
            if len(ts) == 1:
                every[sl] = out[name]["picks"][next(iter(picks))]["ssim"][sl, None] if picks else np.nan
    return out
