"""Privacy audit of a shard folder: attack it as an outsider would, score against the originals.

``audit(directory, plain_source, plain_path, out=...)`` reads one split of an encrypted shard
folder of any scheme (``pixel``, ``icip``, ``le``, ``etc``, ``chaos``) and key mode, runs the
strongest training-free attacks known for it (``attack.suite.plan``; with ``learned=True`` also
the paper's 1x1 attack and a U-Net trained the way an attacker with similar plain images would),
aligns every reconstruction with its plain original by sample key, and writes to ``out``:

- ``report.md``: the verdict (the strongest *realistic* attack: no oracle), then per attack mean
  luminance SSIM, colour SSIM, PSNR, their spread and the share of images with SSIM >= 0.5; oracle
  rows (the global transform picked by SSIM to the original) are marked as upper bounds;
- ``metrics.json``: the same numbers, the settings, the machine, the attacker's choosers, and
  per-image SSIM and PSNR by sample key (which images leak most);
- ``grid.png``: originals, encrypted images and each attack's reconstructions.

The attacker's own images: the plain source's train split when the audited split is another one
(``attacker_images`` of them, spread over the split, train the choosers; ``train_limit`` the
learned attacks); without
one, the audited images stand in (choosers cross-fitted on halves; learned attacks trained on the
first half, attacking the second). The data owner runs it on the client, before uploading: it
needs the plain images, never a key.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from ppdata.cipher import scheme_from_manifest
from ppdata.errors import PpdataError
from ppdata.fileio import atomic_write
from ppdata.shards import ShardSet, read_manifest
from ppdata.sources import open_source_as, originals

log = logging.getLogger("ppdata")

REPORT_FILES = ("report.md", "metrics.json", "grid.png")


def _check_out(out: Path, overwrite: bool) -> list[str]:
    """The report files already in ``out`` (an error unless ``overwrite``); creates nothing."""
    if out.exists() and not out.is_dir():
        raise PpdataError(f"--out {out} exists and is not a folder")
    present = [n for n in REPORT_FILES if (out / n).exists()]
    if present and not overwrite:
        raise PpdataError(f"{out} already holds an audit report ({', '.join(present)}); pass --overwrite or "
                          f"choose another --out")
    return present


def _prepare_out(out: Path, present: list[str]) -> None:
    """Create ``out`` and remove the earlier report files ``present`` (from ``_check_out``)."""
    out.mkdir(parents=True, exist_ok=True)
    # the report is written last: a folder with metrics but no report.md is an interrupted run
    for n in present:
        (out / n).unlink()


def scheme_label(sch: dict) -> str:
    """A short name of a manifest's scheme entry, e.g. ``pixel NP+CS``, ``etc 4x4``."""
    name = sch.get("name", "?")
    if name in ("pixel", "icip"):
        return f"{name} {'NP+CS' if sch.get('cs') else 'NP'}"
    if name == "etc":
        b = sch.get("block_size", 4)
        return f"etc {b}x{b}" + ("" if sch.get("cs", True) else " no CS")
    if name == "le":
        b = sch.get("block_size", 4)
        return f"le {b}x{b}"
    return name


def audit(directory: str | os.PathLike, plain_source: str, plain_path=None, *,
          out: str | os.PathLike = "report", split: str | None = None, limit: int | None = None,
          root: str = "data", learned: bool = False, epochs: int | None = None, budget: float | None = None,
          train_limit: int = 5000, attacker_images: int = 1000, known: int = 1, jigsaw_images: int = 32,
          device: str = "auto", overwrite: bool = False, grid_images: int = 8, workers: int | None = None,
          seed: int = 0) -> dict:
    """Attack ``split`` (default: test if present) of shard folder ``directory``; see the module
    docstring. ``plain_path``: one path or several (folder archives, e.g. train and test).
    ``workers``: processes for the training-free attacks (default: the CPU count, at most 4).
    ``budget``: minutes of training for each budgeted learned attack (default 5). Returns the
    metrics record (also written to ``out/metrics.json``)."""
    from . import suite

    t_start = time.time()
    workers = workers or min(4, os.cpu_count() or 1)
    directory = Path(directory)
    m = read_manifest(directory)
    sch = m.get("scheme") or {}
    if not sch.get("encrypted", False):
        raise PpdataError(f"{directory} holds plain images; there is nothing to attack")
    try:
        scheme = scheme_from_manifest(sch)
        suite.plan(scheme.name, "independent")
    except (ValueError, KeyError) as e:
        raise PpdataError(f"{directory}: scheme {sch} cannot be audited: {e}") from None
    if scheme.name in ("pixel", "icip") and not sch.get("np", True):
        raise PpdataError(f"{directory} uses the pixel scheme without NP; the audit knows attacks on NP (and NP+CS)")
    key_mode = (m.get("keys") or {}).get("mode") or "independent"
    split = split or ("test" if "test" in m["splits"] else next(iter(m["splits"])))
    ss = ShardSet(directory, split, m)
    out = Path(out)
    present = _check_out(out, overwrite)

    samples = ss.load() if limit is None else _first(ss, limit)
    log.info("audit: %d %s images of %s (%s, %s keys)", len(samples), split, directory, scheme_label(sch), key_mode)
    if isinstance(plain_path, (list, tuple)) and len(plain_path) == 1:
        plain_path = plain_path[0]
    several = isinstance(plain_path, (list, tuple))
    # the originals as they were encrypted: the manifest's decode settings (resize, crop, EXIF,
    # decoder), and the source checked against the recorded listing
    src = open_source_as(m, plain_source, plain_path, split=None if several else split, root=root)
    _prepare_out(out, present)  # only once the inputs are known to be what they claim
    plain = originals(src, split, samples.keys)
    if plain.shape != samples.images.shape:
        raise PpdataError(f"plain images from {plain_source} {plain_path or ''} are {plain.shape[1:]}, the shards "
                          f"hold {samples.images.shape[1:]}: not the source these shards were made from")
    if min(plain.shape[1:3]) < 11:
        raise PpdataError("images smaller than 11x11 pixels cannot be scored with SSIM")
    own, own_where = None, "none: choosers cross-fitted on the two halves of the audited images"
    if "train" in src.splits() and split != "train":
        from .data import read_spread

        own, _ = read_spread(src, "train", attacker_images)
        if own.shape[1:] != plain.shape[1:]:
            raise PpdataError(f"the plain source's train split holds {own.shape[1:]} images, the audited ones are "
                              f"{plain.shape[1:]}")
        own_where = f"{len(own)} images spread over the plain source's train split"

    ctx = suite.Context(scheme, key_mode, own=own, known=known, jigsaw_images=jigsaw_images, seed=seed)
    rows = suite.run(samples.images, plain, ctx, workers=workers, grid=grid_images + known,
                     log=lambda msg: log.info("audit: %s", msg))
    for r in rows:
        log.info("audit: %-28s SSIM %.3f over %d images (%.1f s)", r["name"], r["summary"]["ssim"]["mean"],
                 r["summary"]["n"], r["seconds"])
    learned_info = None
    if learned:
        learned_info = _learned(rows, scheme, key_mode, samples, plain, src, split, epochs, budget, train_limit,
                                device, seed)

    record = {
        "report": "ppdata privacy audit", "directory": str(directory), "dataset_id": m.get("id"),
        "split": split, "images": int(len(samples)), "shape": list(samples.images.shape[1:]),
        "scheme": sch, "scheme_label": scheme_label(sch), "keys": m.get("keys"), "key_mode": key_mode,
        "plain_source": {"name": plain_source, "path": plain_path},
        "attacker_images": own_where, "choosers": ctx.notes.get("pickers", {}),
        "metrics": "luminance SSIM (BT.601 Y, Gaussian window sigma 1.5, data range 255); colour SSIM (mean of "
                   "R, G, B); PSNR over RGB in dB, capped at 100; see attack/metrics.py",
        "attacks": {r["name"]: {"attack": r["attack"], "pick": r["pick"], "oracle": r["oracle"], "needs": r["needs"],
                                "description": suite.DESCRIPTIONS[r["attack"]], "summary": r["summary"],
                                "seconds": r["seconds"], "images": int(len(r["rows"])),
                                **({"note": r["note"]} if r.get("note") else {})} for r in rows},
        "learned": learned_info, "machine": suite.machine(),
        "per_image": {r["name"]: {"keys": samples.keys[r["rows"]].tolist(),
                                  "ssim": np.round(r["metrics"]["ssim"], 4).tolist(),
                                  "psnr": np.round(np.minimum(r["metrics"]["psnr"], 100.0), 2).tolist()}
                      for r in rows},
    }
    record["verdict"] = verdict(record)
    _grid(out / "grid.png", rows, plain, samples.images, grid_images, known if key_mode == "same" else 0)
    record["seconds"] = round(time.time() - t_start, 1)
    atomic_write(out / "metrics.json", json.dumps(record, indent=2))
    atomic_write(out / "report.md", report_markdown(record, rows))
    return record


def _first(ss: ShardSet, limit: int):
    from ppdata.shards import Samples

    parts, have = [], 0
    for s in ss.batches(min(limit, 4096)):
        parts.append(s[: limit - have])
        have += len(parts[-1])
        if have >= limit:
            break
    return Samples(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                   np.concatenate([p.keys for p in parts]))


def _grid(path: Path, rows: list[dict], plain: np.ndarray, encrypted: np.ndarray, n: int, start: int) -> None:
    """Originals, encrypted images and every row's reconstructions of audited images
    ``start .. start + n - 1`` (grey where a row does not cover an image)."""
    from .suite import save_grid

    shown = np.arange(start, min(start + n, len(plain)))
    results = {}
    for r in rows:
        if r["attack"] == "encrypted" or r.get("images") is None:
            continue
        have = {int(v): i for i, v in enumerate(r["rows"][: len(r["images"])])}
        grey = np.full(plain.shape[1:], 128, np.uint8)
        results[r["name"]] = {"images": np.stack([r["images"][have[i]] if i in have else grey for i in shown])}
    save_grid(path, plain[shown], encrypted[shown], results, len(shown))


def _learned(rows, scheme, key_mode, samples, plain, src, split, epochs, budget, train_limit, device, seed):
    """Train the learned attacks the way an attacker would: on plain images of the same kind (the
    plain source's train split if it has one, else the first half of the audited split, then only
    the second half is attacked), encrypted under fresh independent keys."""
    import torch

    from ppdata.cipher import fold
    from ppdata.keys import KeyStream, new_secret

    from . import candidates as cand
    from . import suite
    from .data import read_spread
    from .learn import COANet, TrainConfig, UNet, fit, pick_device, predict

    dev = pick_device(device)
    if epochs is None:
        epochs = 30 if dev.type == "cuda" else 2
    budget = 5.0 if budget is None else float(budget)
    h, w = plain.shape[1:3]
    if "train" in src.splits() and split != "train":
        T, T_index = read_spread(src, "train", train_limit)
        where_rows = np.arange(len(samples))
        where = f"{len(T)} images of the plain source's train split"
    else:
        half = len(samples) // 2
        if half < 2:
            raise PpdataError("--learned needs a train split in the plain source or at least 4 audited images")
        T = plain[:half][:train_limit]
        T_index = np.arange(len(T))
        where_rows = np.arange(half, len(samples))
        where = f"the first {len(T)} audited images (plain); only the other {len(where_rows)} are attacked"
    log.info("audit: learned attacks train on %s on %s (1x1: %d epochs; others: %.1f minutes each)", where, dev,
             epochs, budget)
    keys = scheme.derive_keys(KeyStream(new_secret(), "independent"), "train", T_index, T.shape[1:])
    E = scheme.encrypt(T, keys)
    V, Q = samples.images[where_rows], plain[where_rows]
    info = {"training_data": where, "device": str(dev), "keys": "independent (fresh)",
            "torch_threads": torch.get_num_threads()}
    for name in suite.learned_plan(scheme.name):
        t0 = time.time()
        torch.manual_seed(seed)
        if name == "coa-1x1":
            cfg = TrainConfig(epochs=epochs, loss_scale=float(h * w), seed=seed)
            model = fit(COANet(h, w), E, T, cfg, dev)
            rec = predict(model, V, dev)
            info[name] = {"epochs": epochs, "train_log": cfg.log}
            note = f"trained {epochs} epochs on {where}"
        elif name == "candidates":
            cs = bool(getattr(scheme, "cs", False))
            width = cand.default_width(dev)
            held = np.arange(len(T)) % 10 == 9  # every 10th image: the output rule is chosen on them
            net = cand.CandidateUNet(cs, width)
            cfg = cand.budget_config(dev, budget, seed)
            cand.fit(net, fold(E[~held], cs), T[~held], cfg, dev)
            mode = _pick_mode(net, fold(E[held], cs), T[held], dev)
            hold = int(held.sum())
            rec = cand.predict(net, fold(V, cs), dev, mode=mode)
            info[name] = {"minutes": budget, "width": width, "levels": net.levels, "output": mode,
                          "output_rule": "argmax or mean, whichever scored higher on the attacker's held-out "
                                         f"{hold} images", "train_log": cfg.log}
            note = f"{budget:g} minutes on {where} (width {width}, {cfg.log[-1]['step']} steps), output {mode}"
        else:  # unet: regression from the encrypted image
            net = UNet(cand.default_width(dev), head="direct")
            cfg = cand.budget_config(dev, budget, seed)
            cand.fit_budget(net, E, T, _direct_loss, cfg, dev, multiple=4)
            rec = predict(net, V, dev)
            info[name] = {"minutes": budget, "train_log": cfg.log}
            note = f"{budget:g} minutes on {where} ({cfg.log[-1]['step']} steps)"
        r = suite.score(name, Q, rec, time.time() - t0)
        rows.append(suite._summarise(name, "", r["metrics"], where_rows, time.time() - t0, note, rec[:16]))
        log.info("audit: %-28s SSIM %.3f  (%.1f s)", name, r["summary"]["ssim"]["mean"], time.time() - t0)
    return info


def _direct_loss(model, e, x):
    import torch.nn.functional as F

    return F.mse_loss(model(e / 255.0), x.float() / 255.0)


def _pick_mode(net, folds, plain, dev) -> str:
    """``argmax`` or ``mean`` output of the candidate classifier, by SSIM on held-out own images."""
    from . import candidates as cand
    from .metrics import ssim

    scores = {m: float(ssim(plain, cand.predict(net, folds, dev, mode=m)).mean()) for m in ("argmax", "mean")}
    return max(scores, key=scores.get)


def verdict(record: dict) -> dict:
    """The strongest realistic attack (no oracle, not the baseline), the strongest one that needs no
    known plaintext, and the best oracle number (an upper bound)."""
    att = record["attacks"]
    real = {k: a for k, a in att.items() if not a["oracle"] and a["attack"] != "encrypted"}
    best = max(real, key=lambda k: real[k]["summary"]["ssim"]["mean"]) if real else None
    no_kpa = {k: a for k, a in real.items() if a["needs"] != "known pairs"}
    best_free = max(no_kpa, key=lambda k: no_kpa[k]["summary"]["ssim"]["mean"]) if no_kpa else None
    oracle = {k: a for k, a in att.items() if a["oracle"]}
    best_oracle = max(oracle, key=lambda k: oracle[k]["summary"]["ssim"]["mean"]) if oracle else None
    pick = lambda k: None if k is None else {"attack": k, "ssim": att[k]["summary"]["ssim"]["mean"],  # noqa: E731
                                             "psnr": att[k]["summary"]["psnr"]["mean"],
                                             "ssim_ge_0.5": att[k]["summary"].get("ssim_ge_0.5"),
                                             "needs": att[k]["needs"], "images": att[k]["images"]}
    return {"strongest": pick(best), "strongest_without_known_plaintext": pick(best_free),
            "upper_bound": pick(best_oracle)}


def report_markdown(record: dict, rows: list[dict]) -> str:
    from . import suite

    keys = record.get("keys") or {}
    v = record["verdict"]
    enc = record["attacks"]["encrypted"]["summary"]
    mach = record["machine"]
    lines = [
        "# Privacy audit", "",
        f"- data: `{record['directory']}` (dataset {record['dataset_id']}), split `{record['split']}`, "
        f"{record['images']} images of {record['shape'][0]}x{record['shape'][1]}",
        f"- scheme: {record['scheme_label']}; keys: {record['key_mode']}"
        + ("; **seeded: anybody who knows the seed can decrypt**" if keys.get("seeded") else ""),
        f"- originals: {record['plain_source']['name']} {record['plain_source']['path'] or ''}".rstrip(),
        f"- the attacker's own plain images: {record['attacker_images']}",
        f"- took {record.get('seconds', '?')} s on {mach['cpu']} ({mach['cores']} cores)"
        + (f", {mach['gpu']}" if mach.get("gpu") else ""), "",
        "## Verdict", "",
    ]
    s = v["strongest"]
    if s is None:
        lines += ["No attack beyond the baseline applies.", ""]
    else:
        lines += [f"The strongest realistic attack here, **{s['attack']}** (needs: {s['needs']}), reconstructs "
                  f"{s['images']} images with mean SSIM **{s['ssim']:.3f}** and PSNR **{s['psnr']:.1f} dB** (the "
                  f"encrypted images themselves: SSIM {enc['ssim']['mean']:.3f}, PSNR {enc['psnr']['mean']:.1f} dB); "
                  f"{100 * (s['ssim_ge_0.5'] or 0):.0f}% of its reconstructions reach SSIM 0.5."]
        f = v["strongest_without_known_plaintext"]
        if f is not None and f["attack"] != s["attack"]:
            lines += [f"Without any known plain image: **{f['attack']}**, SSIM **{f['ssim']:.3f}**, PSNR "
                      f"{f['psnr']:.1f} dB."]
        u = v["upper_bound"]
        if u is not None:
            lines += [f"Upper bound (global transform picked with the original, which no attacker has): {u['attack']}, "
                      f"SSIM {u['ssim']:.3f}."]
        lines += ["", "Look at `grid.png`: where a reconstruction shows the scene, the encryption does not hide what "
                  "is in the picture.", ""]
    if record["key_mode"] == "same":
        lines += ["**One key for all images:** a single known plain/encrypted pair (a published photo, a guessed "
                  "image) gives the key, and every other image decrypts (the known-plaintext row).", ""]
    lines += ["## Attacks", ""] + suite.TABLE_HEADER + suite.table_rows(rows) + [""]
    for r in rows:
        lines.append(f"- **{r['name']}** ({len(r['rows'])} images, {r['seconds']} s; needs: {r['needs']}): "
                     f"{suite.DESCRIPTIONS[r['attack']]}" + (f"; {r['note']}" if r.get("note") else ""))
    ch = record.get("choosers") or {}
    if ch:
        lines += ["", "Choosers (how the attacker picks the global transform without the original, checked on its "
                  "own held-out images):", ""]
        for k, c in ch.items():
            lines.append(f"- {k}: {c.get('rule')}; held-out SSIM with the model {c.get('holdout_ssim_model', '-')}, "
                         f"with the best fixed transform {c.get('holdout_ssim_fixed', '-')} ({c.get('images')} images)")
    lines += ["", "## How to read this", "",
              "SSIM is the luminance SSIM of Wang et al. (Gaussian 11x11 window, sigma 1.5, data range 255): 1 for "
              "identical images, near 0 for unrelated ones. Colour SSIM averages SSIM over R, G and B. PSNR is over "
              "RGB in dB (capped at 100). Spread: standard deviation, and the 10th / 50th / 90th percentiles over "
              "images. Key-free reconstructions are right only up to a global transform (a sign per channel, a "
              "channel order, for the jigsaw a symmetry): *(oracle)* rows take the transform closest to the "
              "original, an **upper bound** no attacker reaches; *(chosen)* rows take the attacker's own pick, made "
              "by a small model trained on the attacker's own plain images. `metrics.json` lists SSIM and PSNR per "
              "sample key.", ""]
    return "\n".join(lines)
