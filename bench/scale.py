"""Photo collections at the hardware limit: ppdata vs the decode-only limit vs the previous ppdata,
larger photos, the Ray engine's scaling, a per-image cost table, and the cost of verification.

    python bench/scale.py [--data DIR] [--work DIR] [--baseline-rev REV] [--photos 240] [--small 4000]

Everything in one run, side by side, with the machine and its load next to every number
(``bench/common.py``). Sections:

cifar      ``ppdata encrypt folder train.tar.gz --cs`` (50,000 CIFAR-10 JPEGs), a fresh process as a
           user runs it, all cores, vs the decode-only limit (the same archive read by ppdata's
           fastest reader, the JPEGs decoded on all cores by the fastest decoder, the pixels thrown
           away; Pillow and torchvision, the import of torchvision included), vs the previous
           ppdata (``git archive --baseline-rev``, run the same way).
photos     ImageNet-style JPEGs generated from the 96x96 scenes96 photos (upscaled with Pillow to
           mixed sizes, longer side 300..2400, with sensor-like noise so they compress like photos):
           ``--resize 256 --crop 224x224``, and a set of 224x224 JPEGs as they are; images/s and
           MB/s in (JPEG bytes) and out (shard bytes), vs decode-only and decode+resize+crop limits.
ray        the Ray engine with 1 and 2 workers (a local Ray, started once, not timed), on the CIFAR
           archive uncompressed and on the full-size photos; the local engine likewise.
cost       per-image single-thread costs (decode per decoder, resize+crop, encryption, tar + sha256)
           and the arithmetic for 1.28M ImageNet images on N nodes.
verify     reading shards whole with sha256 (the default of every consumer), without it
           (``--no-verify``), and the raw read of the same bytes.

Generated data lives in ``--work`` (default ``bench/data/``, git-ignored).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import load, machine, write_report  # noqa: E402

BASELINE_REV = "7e151dc"  # main when the local and Ray engines were started


# ---------------------------------------------------------------------------------------------
# the decode-only limit: a program that only reads and decodes (run as its own process)


def _lean_pillow(data: bytes):
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def _limit_worker(args):
    blobs, decoder, resize = args
    if decoder == "torchvision":
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        out = decode_jpeg([torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs], mode=ImageReadMode.RGB)
        return len(out)
    n = 0
    for b in blobs:
        if isinstance(b, str):
            with open(b, "rb") as f:
                b = f.read()
        a = _lean_pillow(b)
        if resize:
            from ppdata.sources.decode import Decode, finish
            from PIL import Image

            finish(Image.fromarray(a), Decode(resize=resize[0], crop=tuple(resize[1])))
        n += 1
    return n


def limit_main(src: str, decoder: str, workers: int, resize=None, chunk: int = 256) -> None:
    """Read ``src`` (a tar.gz / tar or a directory), decode every image on ``workers`` processes,
    discard the pixels; print the count."""
    import multiprocessing as mp
    from collections import deque

    if decoder == "torchvision":
        import torchvision.io  # noqa: F401  (imported before the fork: counted once, shared)
    from ppdata.archive import compression, iter_tar

    def items():
        if os.path.isdir(src):
            for dirpath, _, files in sorted(os.walk(src)):
                for f in sorted(files):
                    if f.endswith((".jpg", ".jpeg", ".png")):
                        yield os.path.join(dirpath, f)
            return
        with open(src, "rb") as f:
            for e in iter_tar(f, src, compressed=compression(src)):
                if e.data is not None and e.name.endswith((".jpg", ".jpeg", ".png")):
                    yield e.data

    ctx = mp.get_context("fork")
    n = 0
    with ctx.Pool(workers) as pool:
        window: deque = deque()
        buf = []
        for it in items():
            buf.append(it)
            if len(buf) == chunk:
                window.append(pool.apply_async(_limit_worker, ((buf, decoder, resize),)))
                buf = []
                while len(window) > 2 * workers:
                    n += window.popleft().get()
        if buf:
            window.append(pool.apply_async(_limit_worker, ((buf, decoder, resize),)))
        while window:
            n += window.popleft().get()
    print(n)


# ---------------------------------------------------------------------------------------------
# data


def gunzip(src: Path, dst: Path) -> Path:
    if not dst.exists():
        with gzip.open(src) as f, open(dst.with_suffix(".part"), "wb") as out:
            shutil.copyfileobj(f, out, 1 << 20)
        dst.with_suffix(".part").rename(dst)
    return dst


def make_photos(scenes: Path, dst: Path, n: int, mode: str, seed: int = 0) -> Path:
    """``n`` JPEGs from scenes96 photos: ``mode`` "full" (longer side 300..2400, mixed aspect
    ratios) or "224" (224x224); upscaled with Pillow, plus noise so that they compress like photos
    (about 0.5 bytes per pixel at quality 90; ImageNet's JPEGs hold roughly 0.5-0.8)."""
    from PIL import Image

    if (dst / ".done").exists() and (dst / ".done").read_text() == f"{n} v2":
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    rng = np.random.default_rng(seed)
    made = 0
    with tarfile.open(scenes, "r:gz") as tf:
        for m in tf:
            if made >= n:
                break
            if not m.isfile() or not m.name.endswith(".jpg"):
                continue
            cls = m.name.split("/")[-2]
            img = Image.open(tf.extractfile(m)).convert("RGB")
            if mode == "224":
                h = w = 224
            else:
                long = int(rng.integers(300, 2401))
                ratio = float(rng.choice([4 / 3, 3 / 2, 1.0, 16 / 9]))
                short = int(round(long / ratio))
                h, w = (long, short) if rng.random() < 0.3 else (short, long)
            a = np.asarray(img.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
            a += rng.normal(0, 18, a.shape).astype(np.float32)  # noise: about 0.5 bytes per pixel at q90
            out = dst / "train" / cls / f"{made:06d}.jpg"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(out, quality=90)
            made += 1
    (dst / ".done").write_text(f"{n} v2")
    return dst


def folder_bytes(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def baseline_tree(rev: str, dst: Path) -> Path:
    """The ppdata of ``rev`` (``git archive``), to run as the previous version."""
    if not (dst / "ppdata").is_dir():
        dst.mkdir(parents=True, exist_ok=True)
        arc = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(arc)) as tf:
            tf.extractall(dst, filter="data")
    return dst


# ---------------------------------------------------------------------------------------------
# timing


def timed(cmd: list[str], env_path: Path | None = None, reps: int = 1, cleanup: Path | None = None) -> dict:
    """Best wall time of ``reps`` runs of ``cmd`` (a fresh process each), with its CPU seconds and
    the load before it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(env_path or ROOT)
    best = None
    for _ in range(reps):
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        before_load = load()
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if p.returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
        row = {"wall": wall, "cpu": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), "load": before_load,
               "out": p.stdout.strip()}
        if best is None or wall < best["wall"]:
            best = row
    return best


def calm(below: float = 2.5, max_wait: float = 90.0) -> None:
    """Wait (at most ``max_wait`` s) for the 1-minute load average to drop below ``below``: the
    machine is shared; measurements still record the load they ran under."""
    t = time.time()
    while os.getloadavg()[0] > below and time.time() - t < max_wait:
        time.sleep(5)


def compare(configs: list[tuple[str, list, Path | None, Path | None]], reps: int) -> dict:
    """Run every (name, cmd, PYTHONPATH, output folder) once per rep, interleaved (A B C, A B C),
    so that they share the machine's load; per name the row of its fastest rep."""
    best: dict = {}
    for _ in range(reps):
        calm()
        for name, cmd, path, out in configs:
            row = timed(cmd, env_path=path, reps=1, cleanup=out)
            if out is not None:
                row["out_bytes"] = folder_bytes(out) if out.exists() else 0
                shutil.rmtree(out, ignore_errors=True)
            if name not in best or row["wall"] < best[name]["wall"]:
                best[name] = row
    return best


def ppdata_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "ppdata", "-q", *map(str, args)]


def limit_cmd(src, decoder, workers, resize=None) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--limit", str(src), "--decoder", decoder,
           "--workers", str(workers)]
    if resize:
        cmd += ["--limit-resize", json.dumps(resize)]
    return cmd


# ---------------------------------------------------------------------------------------------
# per-image costs (one thread)


def per_image_costs(photo_dir: Path, n: int = 60) -> dict:
    """Single-thread seconds per image for each step, on the first ``n`` photos of ``photo_dir``."""
    from PIL import Image

    from ppdata.cipher import get_scheme
    from ppdata.keys import KeyStream, new_secret
    from ppdata.shards.tar import tar_records
    from ppdata.sources.decode import Decode, finish

    files = sorted(photo_dir.rglob("*.jpg"))[:n]
    blobs = [f.read_bytes() for f in files]
    mp_ = []
    t = time.process_time()
    decoded = [_lean_pillow(b) for b in blobs]
    decode = (time.process_time() - t) / len(blobs)
    for a in decoded:
        mp_.append(a.shape[0] * a.shape[1] / 1e6)
    per = []
    for b, a in zip(blobs, decoded):  # per image, for the fit against megapixels
        t = time.process_time()
        _lean_pillow(b)
        per.append(time.process_time() - t)
    d = Decode(resize=256, crop=(224, 224))
    outs, per_rs = [], []
    for a in decoded:
        im = Image.fromarray(a)
        t = time.process_time()
        outs.append(finish(im, d))
        per_rs.append(time.process_time() - t)
    out = np.stack(outs)
    resize = float(np.mean(per_rs))
    scheme = get_scheme("pixel", cs=True)
    stream = KeyStream(new_secret())
    t = time.process_time()
    for _ in range(3):
        scheme.encrypt(out, scheme.derive_keys(stream, "train", np.arange(len(out)), out.shape[1:]))
    enc = (time.process_time() - t) / (3 * len(out))
    t = time.process_time()
    for _ in range(3):
        recs = tar_records([f"train_{i:06d}" for i in range(len(out))], out, np.zeros(len(out), np.int64))
        hashlib.sha256(recs).hexdigest()
    write = (time.process_time() - t) / (3 * len(out))
    tv = None
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        t = time.process_time()
        decode_jpeg([torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs], mode=ImageReadMode.RGB)
        tv = (time.process_time() - t) / len(blobs)
    except ImportError:
        pass
    fit = np.polynomial.polynomial.polyfit(np.asarray(mp_), np.asarray(per), 1)[::-1]  # s = fit[0] * MP + fit[1]
    fit_rs = np.polynomial.polynomial.polyfit(np.asarray(mp_), np.asarray(per_rs), 1)[::-1]
    return {"n": len(blobs), "mp_mean": float(np.mean(mp_)), "bytes_mean": float(np.mean([len(b) for b in blobs])),
            "decode_pillow": decode, "decode_torchvision": tv, "resize_crop": resize, "encrypt_224": enc,
            "tar_sha_224": write, "decode_fit": [float(fit[0]), float(fit[1])],
            "resize_fit": [float(fit_rs[0]), float(fit_rs[1])]}


# ---------------------------------------------------------------------------------------------
# verification


def verify_costs(folder: Path, split: str = "train", reps: int = 3) -> dict:
    from ppdata.shards import ShardSet

    ss = ShardSet(folder, split)
    size = sum(p.stat().st_size for p in ss.paths)

    def raw():
        for p in ss.paths:
            with open(p, "rb") as f:
                while f.readinto(buf):
                    pass

    buf = bytearray(16 << 20)

    def read(verify):
        n = 0
        for s in ss.batches(16384, verify=verify):
            n += len(s)
        assert n == len(ss)

    raw()  # warm the page cache
    out = {"bytes": size, "samples": len(ss)}
    for name, fn in (("raw", raw), ("no_verify", lambda: read(False)), ("verify", lambda: read(True))):
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        out[name] = best
    out["load"] = load()
    return out


# ---------------------------------------------------------------------------------------------
# Ray


def ray_runs(src: Path, work: Path, shard_size: int, extra: dict, label: str, reps: int = 2) -> list[dict]:
    """Ray engine with 1 and 2 workers, and the local engine with 1 and 2 (in this process, Ray
    started once beforehand)."""
    from ppdata.cipher import get_scheme
    from ppdata.keys import KeyStream, new_secret
    from ppdata.pipeline import encrypt
    from ppdata.sources import Decode, open_source

    best: dict = {}
    for _ in range(reps):
        calm()
        for engine, w in (("ray", 1), ("ray", 2), ("local", 1), ("local", 2)):
            out = work / f"ray-{label}-{engine}{w}"
            shutil.rmtree(out, ignore_errors=True)
            src_ = open_source("folder", str(src), split="train", decode=Decode(**extra))
            before = load()
            t = time.perf_counter()
            encrypt(src_, out, scheme=get_scheme("pixel", cs=True), keys=KeyStream(new_secret()), split="train",
                    shard_size=shard_size, progress=False, workers=w, engine=engine)
            wall = time.perf_counter() - t
            n = json.loads((out / "manifest.json").read_text())["splits"]["train"]["count"]
            row = {"engine": engine, "workers": w, "wall": wall, "n": n, "load": before}
            if (engine, w) not in best or wall < best[(engine, w)]["wall"]:
                best[(engine, w)] = row
            shutil.rmtree(out, ignore_errors=True)
    return list(best.values())


# ---------------------------------------------------------------------------------------------


def _minutes(m: float) -> str:
    return "< 1 min" if m < 1 else f"{m:.0f} min"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("PPDATA_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--work", default=str(ROOT / "bench" / "data"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--photos", type=int, default=240, help="full-size photos to generate")
    ap.add_argument("--small", type=int, default=4000, help="224x224 photos to generate")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--limit", help=argparse.SUPPRESS)
    ap.add_argument("--decoder", default="pillow", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help=argparse.SUPPRESS)
    ap.add_argument("--limit-resize", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.limit:
        return limit_main(args.limit, args.decoder, args.workers,
                          json.loads(args.limit_resize) if args.limit_resize else None)

    data, work = Path(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    cifar_gz = data / "cifar10-jpeg" / "train.tar.gz"
    cifar_tar = gunzip(cifar_gz, work / "cifar10-train.tar")
    full = make_photos(data / "scenes96" / "train.tar.gz", work / "photos-full", args.photos, "full")
    small = make_photos(data / "scenes96" / "train.tar.gz", work / "photos-224", args.small, "224", seed=1)
    base = baseline_tree(args.baseline_rev, work / f"baseline-{args.baseline_rev}")
    try:
        import torchvision  # noqa: F401
        have_tv = True
    except ImportError:
        have_tv = False
    lines = [f"# Photo collections: engines, limits, verification ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {machine()}; {cores} cores usable. A shared VM: "
             f"the load is recorded beside every number (load average 1/5/15 min, CPU pressure).",
             f"Command: `python bench/scale.py --photos {args.photos} --small {args.small} --reps {args.reps}`. "
             f"Times are the best of {args.reps} fresh processes unless said otherwise.", ""]

    # -- cifar --------------------------------------------------------------------------------------
    o = work / "o-cifar"
    configs = [("ppdata encrypt folder train.tar.gz --cs (this version, all cores; auto = Pillow here)",
                ppdata_cmd("encrypt", "folder", cifar_gz, "--cs", "--out", o), None, o)]
    if have_tv:
        configs.append(("ppdata ... --decoder torchvision (its import included)",
                        ppdata_cmd("encrypt", "folder", cifar_gz, "--cs", "--decoder", "torchvision", "--out", o), None, o))
    configs += [("ppdata ... --workers 1 (one process)", ppdata_cmd("encrypt", "folder", cifar_gz, "--cs", "--workers", 1,
                                                                      "--out", o), None, o),
                (f"previous ppdata ({args.baseline_rev}: threads in one process)",
                 ppdata_cmd("encrypt", "folder", cifar_gz, "--cs", "--out", o), base, o),
                ("limit: decode only, Pillow, all cores", limit_cmd(cifar_gz, "pillow", cores), None, None)]
    if have_tv:
        configs.append(("limit: decode only, torchvision (its import included), all cores",
                        limit_cmd(cifar_gz, "torchvision", cores), None, None))
    res = compare(configs, args.reps)
    for name, r in res.items():
        if name.startswith("limit"):
            assert r["out"] == "50000", r
    lim_name = min((n for n in res if n.startswith("limit")), key=lambda n: res[n]["wall"])
    lim = res[lim_name]
    new = res[configs[0][0]]
    old_ = res[f"previous ppdata ({args.baseline_rev}: threads in one process)"]
    cifar_out = new.get("out_bytes", 0)
    lines += ["## 50,000 CIFAR-10 JPEGs from train.tar.gz (16 MB in, "
              f"{cifar_out / 1e6:.0f} MB of shards out)", "",
              "Runs interleaved (each rep runs every row once), best wall time of the reps; CPU s = user + system "
              "of that run (all its processes). Ratios against the fastest limit, in wall time and in CPU time.", "",
              "| run | wall s | images/s | CPU s | wall / limit | CPU / limit | load before |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in res.items():
        lines.append(f"| {name} | {r['wall']:.2f} | {50000 / r['wall']:,.0f} | {r['cpu']:.1f} | "
                     f"{r['wall'] / lim['wall']:.2f}x | {r['cpu'] / lim['cpu']:.2f}x | {r['load']} |")
    lines += ["", f"ppdata: {new['wall'] / lim['wall']:.2f}x the fastest limit's wall time ({new['cpu'] / lim['cpu']:.2f}x its "
              f"CPU time; target 1.3x); the previous ppdata {old_['wall'] / lim['wall']:.2f}x ({old_['cpu'] / lim['cpu']:.2f}x).", ""]
    print("\n".join(lines), flush=True)
    shown = len(lines)

    # -- photos ----------------------------------------------------------------------------------
    full_cpu = None
    lines += ["## Larger photos", "",
              f"Generated from scenes96 (see `make_photos`): {args.photos} full-size JPEGs "
              f"({folder_bytes(full) / 1e6:.0f} MB), {args.small} 224x224 JPEGs ({folder_bytes(small) / 1e6:.0f} MB).",
              "", "| run | images | wall s | images/s | MB/s in | MB/s out | wall / limit | CPU / limit | load before |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for label, src, n, opts, lim_resize in (
            ("full-size -> --resize 256 --crop 224x224", full, args.photos, ["--resize", "256", "--crop", "224x224"],
             [256, [224, 224]]),
            ("224x224 as they are", small, args.small, [], None)):
        o = work / "o-photos"
        configs = [(f"ppdata, {label}", ppdata_cmd("encrypt", "folder", src, "--cs", *opts, "--out", o), None, o)]
        if have_tv:
            configs.append((f"ppdata --decoder torchvision, {label}",
                            ppdata_cmd("encrypt", "folder", src, "--cs", *opts, "--decoder", "torchvision", "--out", o),
                            None, o))
        if lim_resize is None:
            configs.append((f"previous ppdata ({args.baseline_rev})", ppdata_cmd("encrypt", "folder", src, "--cs", "--out", o),
                            base, o))
        configs.append(("limit: decode only (Pillow, all cores)", limit_cmd(src, "pillow", cores), None, None))
        if lim_resize:
            configs.append(("limit: decode + resize + crop (Pillow, all cores)", limit_cmd(src, "pillow", cores, lim_resize),
                            None, None))
        res = compare(configs, args.reps)
        ref = res[configs[-1][0]]
        if lim_resize:
            full_cpu = res[configs[0][0]]["cpu"] / n
        in_bytes = folder_bytes(src)
        for name, rr in res.items():
            ob = rr.get("out_bytes", 0)
            lines.append(f"| {name} | {n} | {rr['wall']:.2f} | {n / rr['wall']:,.0f} | {in_bytes / rr['wall'] / 1e6:,.1f} | "
                         f"{(ob / rr['wall'] / 1e6) if ob else 0:,.1f} | {rr['wall'] / ref['wall']:.2f}x | "
                         f"{rr['cpu'] / ref['cpu']:.2f}x | {rr['load']} |")
    lines += ["", "Interleaved reps as above. Ratios are against the last limit row of each set (the least work "
              "ppdata must do: for the full-size set decode + resize + crop).", ""]

    print("\n".join(lines[shown:]), flush=True)
    shown = len(lines)

    # -- per-image costs ------------------------------------------------------------------------------
    cost = per_image_costs(full)
    c224 = per_image_costs(small)
    lines += ["## Per-image cost (one thread, CPU seconds; measured here)", "",
              "| step | full-size set (mean " + f"{cost['mp_mean']:.2f} MP, {cost['bytes_mean'] / 1e3:.0f} kB) | "
              f"224x224 set ({c224['bytes_mean'] / 1e3:.0f} kB) |", "|---|---:|---:|"]
    for key, name in (("decode_pillow", "decode, Pillow"), ("decode_torchvision", "decode, torchvision (batched)"),
                      ("resize_crop", "resize 256 + crop 224 (Pillow, bilinear)"),
                      ("encrypt_224", "encrypt NP+CS at 224x224 (keys included)"), ("tar_sha_224", "tar record + sha256 at 224x224")):
        a, b = cost.get(key), c224.get(key)
        lines.append(f"| {name} | {a * 1e3:.2f} ms | {b * 1e3:.2f} ms |" if a is not None and b is not None else f"| {name} | n/a | n/a |")
    slope, icpt = cost["decode_fit"]
    rslope, ricpt = cost["resize_fit"]
    lines += ["", f"Against size (least squares over the full-size set, one thread): Pillow decode "
              f"{slope * 1e3:.1f} ms per megapixel + {icpt * 1e3:.2f} ms; resize 256 + crop 224 "
              f"{rslope * 1e3:.1f} ms per megapixel + {ricpt * 1e3:.2f} ms. Load: {load()}.", ""]

    print("\n".join(lines[shown:]), flush=True)
    shown = len(lines)

    # -- ray ----------------------------------------------------------------------------------------
    if not args.skip_ray:
        import logging

        import ray

        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        try:
            rc = ray_runs(cifar_tar, work, 5000, {}, "cifar", args.reps)
            rp = ray_runs(full, work, max(1, args.photos // 8), {"resize": 256, "crop": (224, 224)}, "photos", args.reps)
        finally:
            ray.shutdown()
        lines += ["## Ray engine: 1 vs 2 workers on this machine", "",
                  "In one process, a local Ray (`ray.init(num_cpus=%d)`) started once beforehand (not timed); "
                  "train split only, best of %d interleaved reps; CIFAR: the archive uncompressed (Ray tasks read "
                  "members by offset), 10 shards of 5,000; photos: 8 shards." % (cores, args.reps), "",
                  "| data | engine | workers | wall s | images/s | speed-up vs 1 worker | load before |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for label, rr in (("50,000 CIFAR JPEGs (.tar)", rc), (f"{args.photos} full-size photos -> 224", rp)):
            one = {r["engine"]: r["wall"] for r in rr if r["workers"] == 1}
            for r in rr:
                lines.append(f"| {label} | {r['engine']} | {r['workers']} | {r['wall']:.2f} | {r['n'] / r['wall']:,.0f} | "
                             f"{one[r['engine']] / r['wall']:.2f}x | {r['load']} |")
        loads = [float(r["load"].split()[2]) for rr in (rc, rp) for r in rr if r["load"].startswith("load average")]
        if loads:
            lines += ["", f"Speed-up needs idle cores: the 1-minute load average before these runs was "
                          f"{min(loads):.1f} to {max(loads):.1f} on {cores} cores (load column), and a second worker "
                          f"shares them with the driver (and, for Ray, Ray's own processes).", ""]

    print("\n".join(lines[shown:]), flush=True)
    shown = len(lines)

    # -- estimate --------------------------------------------------------------------------------------
    mp_imnet = 0.18  # assumed: ImageNet-1k train images average about 0.18 MP (~470 x 390 px)
    dec_in, rs_in = slope * mp_imnet + icpt, rslope * mp_imnet + ricpt
    at_full = cost["decode_pillow"] + cost["resize_crop"] + cost["encrypt_224"] + cost["tar_sha_224"]
    model = dec_in + rs_in + cost["encrypt_224"] + cost["tar_sha_224"]
    lines += ["## Worked estimate: 1.28M ImageNet images, --resize 256 --crop 224x224 --cs", "",
              "Arithmetic on the measured per-image costs above; the ImageNet mean size (about 0.18 MP) is an "
              "assumption, not measured here. Per image: decode "
              f"{dec_in * 1e3:.1f} ms + resize/crop {rs_in * 1e3:.1f} ms (both: the fits at 0.18 MP) "
              f"+ encrypt {cost['encrypt_224'] * 1e3:.2f} ms + tar/sha256 {cost['tar_sha_224'] * 1e3:.2f} ms = "
              f"**{model * 1e3:.1f} core-ms** (measured one-thread costs)." +
              (f" Check of the model against a whole run: `ppdata encrypt` on the full-size set used {full_cpu * 1e3:.0f} "
               f"CPU-ms per photo (all its processes; mean {cost['mp_mean']:.2f} MP), where the per-step costs at that "
               f"size add up to {at_full * 1e3:.0f} ms." if full_cpu else ""), "",
              "| nodes x cores | core-hours | wall (ideal) | output (224x224x3 + tar) |", "|---|---:|---:|---:|"]
    out_gb = 1.28e6 * (150528 + 2048) / 1e9
    for nodes, c in ((1, 2), (1, 16), (4, 16), (16, 16), (64, 16)):
        core_h = 1.28e6 * model / 3600
        lines.append(f"| {nodes} x {c} | {core_h:.1f} | {_minutes(core_h / (nodes * c) * 60)} | {out_gb:.0f} GB |")
    lines += ["", "Ideal = perfect scaling; the 1 -> 2 worker speed-ups above measure how close one machine comes. "
              f"At scale the storage must also take {out_gb:.0f} GB of shards (and supply the ~140 GB of JPEGs): e.g. "
              f"16 nodes finishing in the ideal time need about {out_gb * 1e3 / (1.28e6 * model / 3600 / (16 * 16) * 3600):,.0f} MB/s "
              "of writes in total (arithmetic, not measured).", ""]

    # -- verification ---------------------------------------------------------------------------------
    o = work / "o-verify"
    shutil.rmtree(o, ignore_errors=True)
    subprocess.run(ppdata_cmd("encrypt", "folder", cifar_tar, "--cs", "--out", o), check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    v1 = verify_costs(o)
    o2 = work / "o-verify224"
    shutil.rmtree(o2, ignore_errors=True)
    subprocess.run(ppdata_cmd("encrypt", "folder", small, "--cs", "--out", o2), check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    v2 = verify_costs(o2)
    lines += ["## Cost of verification (reading shards whole; page cache warm; best of 3, one thread)", "",
              "| shards | MB | raw read s | read + checks, --no-verify s | read + checks + sha256 (default) s | "
              "sha256 share | load |", "|---|---:|---:|---:|---:|---:|---|"]
    for label, v in (("50,000 CIFAR 32x32", v1), (f"{args.small} photos 224x224", v2)):
        lines.append(f"| {label} | {v['bytes'] / 1e6:.0f} | {v['raw']:.3f} ({v['bytes'] / v['raw'] / 1e9:.2f} GB/s) | "
                     f"{v['no_verify']:.3f} ({v['no_verify'] / v['raw']:.1f}x raw) | {v['verify']:.3f} "
                     f"({v['verify'] / v['raw']:.1f}x raw) | {(v['verify'] - v['no_verify']) / v['verify']:.0%} | {v['load']} |")
    shutil.rmtree(o, ignore_errors=True)
    shutil.rmtree(o2, ignore_errors=True)
    lines += ["", f"Load after: {load()}."]
    write_report(lines, args.out, "scale")


if __name__ == "__main__":
    main()
