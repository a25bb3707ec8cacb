"""Which attacks apply to which scheme and key mode; running the training-free ones and scoring them.

Every scheme of ``ppdata`` gets the strongest training-free attacks known here for it, plus the
encrypted baseline:

=========  ==================  =================================================================
scheme     key mode            attacks (``ATTACKS``)
=========  ==================  =================================================================
pixel,     independent / same  ``fold-raw``, ``fold``, ``neighbour`` (key-free)
icip       same                + ``known-plaintext``
le         independent         ``le-components`` (per image)
           same                ``le-components`` (one key from many images), ``known-plaintext``
etc        independent         ``jigsaw`` (per image, on the first ``jigsaw_images``)
           same                ``jigsaw`` (one puzzle from many images), ``known-plaintext``
chaos      independent         (none beyond the baseline: an RC4 keystream per image)
           same                ``known-plaintext``
=========  ==================  =================================================================

A key-free reconstruction is right at best up to a global transform (``attack.variants``; for the
jigsaw also a symmetry of the square). Each such attack is reported twice: ``(oracle)`` picks the
transform with the highest SSIM to the original, an *upper bound* no attacker reaches; ``(chosen)``
is what an attacker gets choosing without the original (``attack.chooser``, trained on the
attacker's own plain images). Verdicts use the chosen numbers.

A *row* (one line of a report) is ``{"attack", "pick", "oracle": bool, "needs", "rows": indices of
the audited images it covers, "metrics": per-image arrays, "summary", "seconds", "note",
"images": the grid's reconstructions}``. Images are (N, H, W, 3) uint8.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ppdata.cipher import fold

from . import chooser, metrics, variants

# name -> (needs, description)
ATTACKS = {
    "encrypted": ("nothing", "the encrypted image itself (what a viewer sees)"),
    "fold-raw": ("nothing", "min(e, 255 - e) per channel (sorted per pixel under CS) as it is: no key, no training, "
                            "no choice (every value read as below mid-grey)"),
    "fold": ("nothing", "the fold, global transform (a sign per channel, under CS a channel order: 8/48) chosen; "
                        "equals the neighbour-consistency rule with nearest neighbours"),
    "neighbour": ("nothing", "neighbour consistency with extrapolation (Chang and Case): per pixel the candidate of "
                             "the fold closest to the decided neighbours and their extrapolations; global transform "
                             "chosen"),
    "le-components": ("nothing", "LE's per-image key structure read from the ciphertext (high nibbles, reversal, "
                                 "position in the block, channel; attack/le.py); global sign and channel order "
                                 "chosen"),
    "jigsaw": ("nothing", "jigsaw puzzle solver over the blocks' 96 variants (attack/jigsaw.py); global symmetry, "
                          "sign and channel order chosen"),
    "known-plaintext": ("known pairs", "the common key recovered from known plain/encrypted pairs, the other images "
                                      "decrypted (attack/known_plaintext.py)"),
    "coa-1x1": ("attacker's images", "the paper's attack: three 1x1 locally connected layers (8/32/3) on the "
                                     "encrypted image, trained on the attacker's images under fresh keys"),
    "candidates": ("attacker's images", "U-Net on the fold classifying each pixel's candidate (8/48), trained on "
                                        "the attacker's images under fresh keys for a fixed time budget"),
    "unet": ("attacker's images", "U-Net on the encrypted image regressing the plain image, trained on the attacker's "
                                  "images under fresh keys for a fixed time budget"),
}
DESCRIPTIONS = {k: v[1] for k, v in ATTACKS.items()}
# attacks whose output is right up to a global transform: reported as (oracle) and (chosen)
AMBIGUOUS = ("fold", "neighbour", "le-components", "jigsaw")
TRAINING_FREE = ("encrypted", "fold-raw", "fold", "neighbour")  # the pixel scheme's (attack.coa)


def plan(scheme: str, key_mode: str) -> list[str]:
    """Training-free attacks for a scheme (manifest name) and key mode, baseline first."""
    same = key_mode == "same"
    base = {"pixel": ["fold-raw", "fold", "neighbour"], "icip": ["fold-raw", "fold", "neighbour"],
            "le": ["le-components"], "etc": ["jigsaw"], "chaos": []}
    if scheme not in base:
        raise ValueError(f"no attacks known for scheme {scheme!r}")
    return ["encrypted", *base[scheme], *(["known-plaintext"] if same else [])]


def learned_plan(scheme: str) -> list[str]:
    return ["coa-1x1", "candidates"] if scheme in ("pixel", "icip") else ["coa-1x1", "unet"]


# ------------------------------------------------------------------------------------------------
# global transforms with the square's symmetries (the jigsaw)


def geometries(shape) -> list[int]:
    """Symmetries (``attack.jigsaw.geometry`` codes) that keep an (H, W) image's shape."""
    return list(range(8)) if shape[0] == shape[1] else [0, 2, 4, 6]


def _geometry(images: np.ndarray, g: int) -> np.ndarray:
    from .jigsaw import geometry

    return np.ascontiguousarray(geometry(images, g))


def _dihedral_features(rec: np.ndarray, gs, ts) -> np.ndarray:
    return np.concatenate([chooser.features(_geometry(rec, g), ts) for g in gs], axis=1)


# ------------------------------------------------------------------------------------------------
# the attacker's choice of transform


@dataclass
class Context:
    """What the training-free attacks of one audit need: the scheme, the key mode, the attacker's
    own plain images (for the choosers; ``None``: cross-fitting on the audited images), limits."""

    scheme: object
    key_mode: str
    own: np.ndarray | None = None
    known: int = 1
    jigsaw_images: int = 32
    pool: int = 16
    seed: int = 0
    pickers: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.scheme.name

    @property
    def cs(self) -> bool:
        return bool(getattr(self.scheme, "cs", False))

    @property
    def shared(self) -> bool:
        return self.key_mode == "same"


def transforms_for(attack: str, ctx: Context):
    """The global transforms an attack's output is ambiguous by (the pixel scheme without CS: 8)."""
    if attack in ("fold", "neighbour") and not ctx.cs:
        return variants.transforms(False)
    return variants.transforms(True)


def reconstruct(attack: str, encrypted: np.ndarray, ctx: Context) -> np.ndarray:
    """The reconstruction of a training-free, key-free attack (before any global choice)."""
    if attack == "encrypted":
        return encrypted
    if attack in ("fold-raw", "fold"):
        return fold(encrypted, ctx.cs)
    if attack == "neighbour":
        from .neighbour import neighbour_attack

        return neighbour_attack(encrypted, ctx.cs, "extrapolate")
    if attack == "le-components":
        from . import le

        return le.attack(encrypted, ctx.scheme.block_size, shared=ctx.shared, pool=max(ctx.pool, 64))
    if attack == "jigsaw":
        from . import jigsaw

        return jigsaw.attack(encrypted, ctx.scheme.block_size, shared=ctx.shared, pool=ctx.pool)
    raise ValueError(f"{attack} is not a key-free reconstruction")


def _own_encrypted(ctx: Context, images: np.ndarray) -> np.ndarray:
    """The attacker's own images encrypted with the audited scheme under fresh keys (one fresh
    common key when the audited folder uses one)."""
    from ppdata.keys import KeyStream, new_secret

    stream = KeyStream(new_secret(), "same" if ctx.shared else "independent")
    keys = ctx.scheme.derive_keys(stream, "train", np.arange(len(images)), images.shape[1:])
    return ctx.scheme.encrypt(images, keys)


def train_picker(attack: str, ctx: Context, own: np.ndarray) -> chooser.Picker:
    """The attacker's ``Picker`` for ``attack``, trained on its own plain images ``own``: their
    encryptions (fresh keys) go through the same attack; the quality of every transform is its
    luminance SSIM to the attacker's own original. The jigsaw, too slow to run on hundreds of
    images, trains on the attacker's plain images themselves (the natural image is the right
    transform)."""
    ts = transforms_for(attack, ctx)
    if attack == "jigsaw":
        gs = geometries(own.shape[1:3])
        q = np.zeros((len(own), len(gs) * len(ts)))
        q[:, 0] = 1.0  # the identity of the identity symmetry
        return chooser.train(_dihedral_features(own, gs, ts), q, seed=ctx.seed, fixed=False)
    rec = reconstruct(attack, _own_encrypted(ctx, own), ctx)
    q = variants.ssim_all(rec, own, len(ts) == 48)
    return chooser.train(chooser.features(rec, ts), q, seed=ctx.seed, fixed=attack not in FRAME_FREE)


# ------------------------------------------------------------------------------------------------
# running and scoring


def _summarise(attack: str, pick: str, m: dict, rows: np.ndarray, seconds: float, note: str = "",
               images: np.ndarray | None = None) -> dict:
    needs = ATTACKS[attack][0]
    name = attack if pick in ("", "as is") else f"{attack} ({pick})"
    return {"name": name, "attack": attack, "pick": pick, "oracle": pick == "oracle", "needs": needs,
            "rows": np.asarray(rows), "metrics": m, "summary": metrics.summary(m), "seconds": round(seconds, 2),
            "note": note, "images": images}


def _score_plain(name: str, ref: np.ndarray, rec: np.ndarray) -> dict:
    """Per-image metrics of reconstructions scored as they are (moment-based, shared code)."""
    out = variants.score(ref, {name: (rec, variants.identity(), {"as is": np.zeros(len(rec), np.int64)})})
    p = out[name]["picks"]["as is"]
    return {k: p[k] for k in ("ssim", "ssim_colour", "psnr")}


def run_part(attacks: list[str], encrypted: np.ndarray, plain: np.ndarray, ctx: Context, grid: int = 0) -> list[dict]:
    """Run ``attacks`` (from ``plan``, without ``known-plaintext``) on a part of the audited images
    and score them. ``grid``: how many of the first images' reconstructions to keep. ``fold-raw``
    is scored as the identity pick of the ``fold`` family when both run (one set of moments)."""
    rows_all = np.arange(len(encrypted))
    out = []
    families, timing, owner = {}, {}, {}
    for attack in attacks:
        if attack == "jigsaw":
            continue
        t0 = time.time()
        if attack == "fold-raw" and "fold" in attacks:
            owner[attack] = "fold"
            continue
        rec = reconstruct(attack, encrypted, ctx)
        if attack in ("encrypted", "fold-raw"):
            picks = {"as is": np.zeros(len(rec), np.int64)}
            ts = variants.identity()
        else:
            ts = transforms_for(attack, ctx)
            picks = {"oracle": "oracle"}
            if attack in ctx.pickers:
                p = ctx.pickers[attack]
                picks["chosen"] = lambda r, p=p, ts=ts: p.pick(chooser.features(r, ts))
            if attack == "fold" and "fold-raw" in attacks:
                picks = {"as is": np.zeros(len(rec), np.int64), **picks}
        families[attack] = (rec, ts, picks)
        timing[attack] = time.time() - t0
    t0 = time.time()
    scored = variants.score(plain, families) if families else {}
    t_score = (time.time() - t0) / max(1, len(families))
    for attack, (rec, ts, picks) in families.items():
        for label, res in scored[attack]["picks"].items():
            m = {k: res[k] for k in ("ssim", "ssim_colour", "psnr")}
            img = None
            if grid:
                k = res["choice"][:grid]
                img = variants.apply(rec[:grid], np.stack([ts[i][0] for i in k]), np.stack([ts[i][1] for i in k]))
            name = "fold-raw" if (attack == "fold" and label == "as is") else attack
            out.append(_summarise(name, label, m, rows_all, timing[attack] + t_score, images=img))
    order = {a: i for i, a in enumerate(attacks)}
    out.sort(key=lambda r: order.get(r["attack"], len(order)))  # the plan's order (fold-raw before fold)
    if "jigsaw" in attacks:
        out += _jigsaw(encrypted, plain, ctx, grid)
    return out


def _jigsaw(encrypted: np.ndarray, plain: np.ndarray, ctx: Context, grid: int, rec: np.ndarray | None = None,
            common=None) -> list[dict]:
    """The jigsaw rows: per image on the first ``ctx.jigsaw_images`` (independent keys), or ``rec``
    solved once for all (one key) with one ``common`` chosen transform; best over symmetries x 48
    channel transforms for the oracle."""
    n = len(encrypted) if rec is not None else min(len(encrypted), ctx.jigsaw_images)
    if n == 0:
        return []
    t0 = time.time()
    if rec is None:
        rec = reconstruct("jigsaw", encrypted[:n], ctx)
    plain = plain[:n]
    ts = variants.transforms(True)
    gs = geometries(rec.shape[1:3])
    every = np.stack([variants.ssim_all(_geometry(rec, g), plain, True) for g in gs], axis=1)  # (n, G, 48)
    choice = {"oracle": every.reshape(n, -1).argmax(axis=1)}
    chosen = None
    if common is not None:
        chosen = np.full(n, int(common), np.int64)
    elif "jigsaw" in ctx.pickers:
        chosen = ctx.pickers["jigsaw"].pick(_dihedral_features(rec, gs, ts))
    if chosen is not None:
        choice["chosen"] = _mirror_free(chosen, every, gs, len(ts), common is not None)
    rows = []
    for label, c in choice.items():
        g_idx, t_idx = np.divmod(c, len(ts))
        geo = np.stack([_geometry(rec[i : i + 1], gs[g])[0] for i, g in enumerate(g_idx)])
        res = variants.score(plain, {"j": (geo, ts, {label: t_idx})})["j"]["picks"][label]
        m = {k: res[k] for k in ("ssim", "ssim_colour", "psnr")}
        img = variants.apply(geo[:grid], np.stack([ts[i][0] for i in t_idx[:grid]]),
                             np.stack([ts[i][1] for i in t_idx[:grid]])) if grid else None
        note = "" if n == len(encrypted) else f"the first {n} images of this part of the audited images (the " \
                                               f"solver takes seconds per image)"
        if label == "chosen":
            note = "; ".join(x for x in (note, "the pick counted up to a left-right mirror (a mirrored scene shows "
                                               "the same content; the mirror bit is taken from the original)") if x)
        rows.append(_summarise("jigsaw", label, m, np.arange(n), time.time() - t0, note, img))
    return rows


def _mirror_free(chosen: np.ndarray, every: np.ndarray, gs: list[int], t: int, one: bool) -> np.ndarray:
    """The attacker's pick, or its left-right mirror where that is closer to the original.

    A scene and its mirror image show the same content, and no test of naturalness tells them
    apart (scenes have no preferred side), so the jigsaw's chosen rows count a pick up to a mirror:
    one bit per image (per data set when ``one``: a single pick for all) resolved with the
    original. ``every`` (n, G, T): luminance SSIM per symmetry and transform."""
    g_idx, t_idx = np.divmod(chosen, t)
    mirror_g = np.array([gs.index(g ^ 4) for g in np.asarray(gs)[g_idx]])  # fliplr after symmetry g: g ^ 4
    rows = np.arange(len(chosen))
    a, b = every[rows, g_idx, t_idx], every[rows, mirror_g, t_idx]
    use = np.full(len(chosen), b.mean() > a.mean()) if one else b > a
    return np.where(use, mirror_g * t + t_idx, chosen)


def _common(attack: str, encrypted: np.ndarray, plain: np.ndarray, ctx: Context, picker, feats_rows, grid: int,
            workers: int) -> list[dict]:
    """An attack under one key: one reconstruction (one key estimate, one frame) for all images and
    one chosen transform for all, picked by ``picker`` from the features of the images
    ``feats_rows`` (images the picker was not trained on)."""
    t0 = time.time()
    rec = reconstruct(attack, encrypted, ctx)
    ts = transforms_for(attack, ctx)
    if attack == "jigsaw":
        gs = geometries(rec.shape[1:3])
        common = picker.pick_common(_dihedral_features(rec[feats_rows], gs, ts)) if picker is not None else None
        return _jigsaw(encrypted, plain, ctx, grid, rec=rec, common=common)
    picks = {"oracle": "oracle"}
    if picker is not None:
        picks["chosen"] = np.full(len(rec), picker.pick_common(chooser.features(rec[feats_rows], ts)), np.int64)
    n = len(rec)
    bounds = np.linspace(0, n, max(1, min(workers, n // 32)) + 1).astype(int)
    jobs = [(attack, rec[a:b], plain[a:b], ts, {k: (v if isinstance(v, str) else v[a:b]) for k, v in picks.items()},
             grid if a == 0 else 0, time.time() - t0) for a, b in zip(bounds, bounds[1:])]
    parts = parallel(_score_family, jobs, workers)
    return merge(parts, [int(a) for a in bounds[:-1]]) if len(parts) > 1 else parts[0]


def _score_family(attack, rec, plain, ts, picks, grid, seconds):
    t0 = time.time()
    scored = variants.score(plain, {attack: (rec, ts, picks)})[attack]["picks"]
    out = []
    for label, res in scored.items():
        m = {k: res[k] for k in ("ssim", "ssim_colour", "psnr")}
        img = None
        if grid:
            k = res["choice"][:grid]
            img = variants.apply(rec[:grid], np.stack([ts[i][0] for i in k]), np.stack([ts[i][1] for i in k]))
        out.append(_summarise(attack, label, m, np.arange(len(rec)), seconds + time.time() - t0, images=img))
    return out


def known_plaintext(encrypted: np.ndarray, plain: np.ndarray, ctx: Context, grid: int = 0) -> dict | None:
    """The known-plaintext row: the first ``ctx.known`` audited images are the known pairs, the
    others are decrypted with the recovered key and scored."""
    from . import known_plaintext as kpa

    k = ctx.known
    if len(encrypted) <= k:
        return None
    t0 = time.time()
    rec = kpa.attack(ctx.scheme, plain[:k], encrypted[:k], encrypted[k:])
    m = _score_plain("kpa", plain[k:], rec)
    return _summarise("known-plaintext", "", m, np.arange(k, len(encrypted)), time.time() - t0,
                      f"{k} known pair(s): the first {k} audited image(s)", rec[:grid] if grid else None)


def merge(parts: list[list[dict]], offsets: list[int]) -> list[dict]:
    """Join the rows of image parts (run in parallel) into one list of rows."""
    out = []
    for i, row in enumerate(parts[0]):
        same = [p[i] for p in parts]
        m = {k: np.concatenate([r["metrics"][k] for r in same]) for k in row["metrics"]}
        rows = np.concatenate([r["rows"] + off for r, off in zip(same, offsets)])
        out.append(dict(row, metrics=m, rows=rows, summary=metrics.summary(m),
                        seconds=round(sum(r["seconds"] for r in same), 2)))
    return out


def parallel(fn, jobs: list, workers: int) -> list:
    """``[fn(*job) for job in jobs]`` in up to ``workers`` forked processes (serially where fork
    is unavailable or ``workers`` is 1)."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    try:
        ctx = mp.get_context("fork")
    except ValueError:
        return [fn(*job) for job in jobs]
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
        return list(pool.map(_call, [(fn, job) for job in jobs]))


def _call(args):
    """Run one job in a worker process, single-threaded (the processes share the cores)."""
    fn, job = args
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    return fn(*job)


FRAME_FREE = ("le-components", "jigsaw")  # outputs in an arbitrary frame: no fixed transform means anything


def run(encrypted: np.ndarray, plain: np.ndarray, ctx: Context, workers: int = 1, grid: int = 8,
        log=None) -> list[dict]:
    """All training-free attacks of ``plan(ctx.name, ctx.key_mode)`` on the audited images, scored.

    Choosers are trained first on ``ctx.own`` (the attacker's images); without them, by
    cross-fitting: the audited images are split in two halves, each half's choice made by a
    chooser trained on the other half. Under one key, ``le-components`` and ``jigsaw`` reconstruct
    all images at once (one key estimate) and choose one transform for all. The per-image work
    runs in ``workers`` processes."""
    log = log or (lambda msg: None)
    attacks = plan(ctx.name, ctx.key_mode)
    free = [a for a in attacks if a != "known-plaintext"]
    common = [a for a in free if ctx.shared and a in FRAME_FREE]
    per_part = [a for a in free if a not in common]
    need = [a for a in free if a in AMBIGUOUS]
    n = len(encrypted)
    t0 = time.time()
    if need and ctx.own is not None:
        ctx.pickers.update(dict(zip(need, parallel(_train, [(a, ctx, ctx.own) for a in need], workers))))
        log(f"choosers trained on {len(ctx.own)} of the attacker's images ({time.time() - t0:.1f} s)")
        result = _run_parts(per_part, encrypted, plain, ctx, workers, grid)
        for a in common:
            result += _common(a, encrypted, plain, ctx, ctx.pickers.get(a), np.arange(n), grid, workers)
    elif need and n >= 20:
        log("no attacker's images: choosers cross-fitted on the two halves of the audited images")
        halves = np.array_split(np.arange(n), 2)
        rows, pickers = [], []
        for part, other in ((halves[0], halves[1]), (halves[1], halves[0])):
            pick_ctx = Context(**{**ctx.__dict__, "pickers": {}, "notes": {}})
            pick_ctx.pickers.update(dict(zip(need, parallel(_train, [(a, pick_ctx, plain[other]) for a in need],
                                                            workers))))
            pickers.append(pick_ctx.pickers)
            rows.append(_run_parts(per_part, encrypted[part], plain[part], pick_ctx, workers,
                                   grid if part[0] == 0 else 0))
        result = merge(rows, [int(halves[0][0]), int(halves[1][0])])
        for a in common:  # the picker trained on the second half picks from the first half's features
            result += _common(a, encrypted, plain, ctx, pickers[1].get(a), halves[0], grid, workers)
        ctx.pickers = pickers[0]
        ctx.notes["choosers"] = "cross-fitted on the two halves of the audited images"
    else:
        result = _run_parts(per_part, encrypted, plain, ctx, workers, grid)
        for a in common:
            result += _common(a, encrypted, plain, ctx, None, np.arange(n), grid, workers)
    if "known-plaintext" in attacks:
        r = known_plaintext(encrypted, plain, ctx, grid)
        if r is not None:
            result.append(r)
    ctx.notes["pickers"] = {a: p.report for a, p in ctx.pickers.items()}
    return result


def _train(attack, ctx, own):
    return train_picker(attack, ctx, own)


def _run_parts(free, encrypted, plain, ctx, workers, grid):
    n = len(encrypted)
    bounds = np.linspace(0, n, max(1, min(workers, n // 32)) + 1).astype(int)
    parts = len(bounds) - 1
    if "jigsaw" in free and parts > 1:  # the per-image jigsaw's limit, shared among the parts
        ctx = Context(**{**ctx.__dict__, "jigsaw_images": -(-ctx.jigsaw_images // parts)})
    jobs = [(free, encrypted[a:b], plain[a:b], ctx, grid if a == 0 else 0) for a, b in zip(bounds, bounds[1:])]
    parts = parallel(run_part, jobs, workers)
    out = merge(parts, [int(a) for a in bounds[:-1]]) if len(parts) > 1 else parts[0]
    for row, src in zip(out, parts[0]):
        row["images"] = src["images"]
    return out


# ------------------------------------------------------------------------------------------------
# the pixel scheme's training-free attacks with oracle picks (attack.coa's Table 2 layout)


def training_free(encrypted: np.ndarray, plain: np.ndarray, cs: bool, attacks=TRAINING_FREE,
                  colour: bool = True, workers: int = 1) -> dict[str, dict]:
    """``encrypted``, ``fold-raw`` and the oracle picks of ``fold`` and ``neighbour`` on images
    encrypted with the pixel scheme (NP, or NP+CS), as ``{name: result}`` with ``images``,
    ``metrics``, ``summary``, ``seconds``, ``note``."""
    from ppdata.cipher import get_scheme

    ctx = Context(get_scheme("pixel", cs=cs), "independent")
    n = len(encrypted)
    bounds = np.linspace(0, n, max(1, min(workers, n // 32)) + 1).astype(int)
    jobs = [(list(attacks), encrypted[a:b], plain[a:b], ctx, b - a) for a, b in zip(bounds, bounds[1:])]
    parts = parallel(run_part, jobs, workers)
    rows = merge(parts, [int(a) for a in bounds[:-1]]) if len(parts) > 1 else parts[0]
    out = {}
    for r in rows:
        if r["pick"] in ("as is", "oracle"):
            imgs = np.concatenate([p[[x["name"] for x in p].index(r["name"])]["images"] for p in parts])
            out[r["attack"]] = {"name": r["attack"], "images": imgs, "metrics": r["metrics"], "summary": r["summary"],
                                "seconds": r["seconds"], "note": "best of the 8/48 global variants by SSIM to the "
                                "original (oracle: an upper bound)" if r["oracle"] else ""}
    return out


# ------------------------------------------------------------------------------------------------
# reports


def score(name: str, plain: np.ndarray, rec: np.ndarray, seconds: float, note: str = "", colour: bool = True) -> dict:
    """A learned attack's result, scored as it is (no choice)."""
    m = _score_plain(name, plain, rec)
    if not colour:
        m.pop("ssim_colour")
    return {"name": name, "images": rec, "metrics": m, "summary": metrics.summary(m), "seconds": round(seconds, 2),
            "note": note}


def grid_rows(plain: np.ndarray, encrypted: np.ndarray, results: dict[str, dict],
              n: int = 8) -> tuple[np.ndarray, list[str]]:
    """Images for a figure like the paper's Fig. 13: rows original, encrypted, then each attack's
    reconstruction (first ``n`` images). Returns (images (rows*n, H, W, 3), row labels)."""
    rows, labels = [plain[:n], encrypted[:n]], ["original", "encrypted"]
    for name, r in results.items():
        if name == "encrypted" or r.get("images") is None:
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


def table_rows(results) -> list[str]:
    """Markdown rows: attack | needs | mean SSIM (sd) | colour SSIM | PSNR dB (sd) | SSIM p10/median/p90 |
    SSIM >= 0.5 | images."""
    out = []
    items = results.items() if isinstance(results, dict) else ((r["name"], r) for r in results)
    for name, r in items:
        s = r["summary"]
        col = f"{s['ssim_colour']['mean']:.3f}" if "ssim_colour" in s else "-"
        label = f"{name} **(upper bound)**" if r.get("oracle") else name
        out.append(f"| {label} | {r.get('needs', '-')} | {s['ssim']['mean']:.3f} ({s['ssim']['std']:.3f}) | {col} | "
                   f"{s['psnr']['mean']:.2f} ({s['psnr']['std']:.2f}) | "
                   f"{s['ssim']['p10']:.2f} / {s['ssim']['median']:.2f} / {s['ssim']['p90']:.2f} | "
                   f"{100 * s['ssim_ge_0.5']:.0f}% | {s['n']} |")
    return out


TABLE_HEADER = ["| attack | needs | SSIM mean (sd) | colour SSIM | PSNR dB mean (sd) | SSIM p10 / median / p90 | "
                "SSIM >= 0.5 | images |", "|---|---|---|---|---|---|---|---|"]


def machine() -> dict:
    """CPU model, cores and accelerator, for result records (``ppdata.machine.describe``)."""
    from ppdata.machine import describe

    return describe()
