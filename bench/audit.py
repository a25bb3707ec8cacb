"""Time of the training-free part of ``ppdata audit`` on 1,000 images of 128x128 (pixel NP+CS).

    python bench/audit.py                  # the attacks of the original audit: encrypted, fold-raw,
                                           # fold and neighbour (oracle picks), SSIM + colour SSIM + PSNR
    python bench/audit.py --with-choice    # also the full training-free audit of today (attacker's
                                           # choosers trained on 1,000 other images, oracle and chosen rows)
    python bench/audit.py --profile 300    # where the time goes: cProfile of the timed call on 300
                                           # images in one process, the functions by cumulative time

Images: the first 1,000 (and, for the choosers, the next 1,000) of the 96x96 photos' train split,
resized to 128x128 (Lanczos), encrypted with NP+CS under reproducible independent keys. Run it
with ``PYTHONPATH`` pointing at another checkout (default: this one) to time that code on the same input: the
timed call, ``attack.suite.training_free(encrypted, plain, cs, attacks, workers=2)``, has kept its
signature. Prints the seconds (wall) and the mean SSIMs, so that two versions can be compared.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

if "attack" not in sys.modules and not any(Path(q, "attack").is_dir() for q in sys.path if q):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, unless PYTHONPATH names one


def images(data: Path, n: int, offset: int = 0) -> np.ndarray:
    from PIL import Image

    from ppdata.sources import open_source

    src = open_source("folder", str(data / "train.tar.gz"), split="train")
    out, seen = [], 0
    for b in src.batches("train", 256):
        for img in b.images:
            if seen >= offset:
                out.append(np.asarray(Image.fromarray(img).resize((128, 128), Image.LANCZOS)))
            seen += 1
            if len(out) == n:
                return np.stack(out)
    return np.stack(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("PPDATA_DATA", "../shared/data") + "/scenes96")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--with-choice", action="store_true")
    p.add_argument("--profile", type=int, metavar="N", help="profile the timed call on N images, one process")
    a = p.parse_args()
    from ppdata.cipher import get_scheme
    from ppdata.keys import KeyStream, secret_from_seed

    from attack import suite

    x = images(Path(a.data), a.profile or a.n)
    scheme = get_scheme("pixel", cs=True)
    e = scheme.encrypt(x, scheme.derive_keys(KeyStream(secret_from_seed("bench-audit"), "independent"), "train",
                                             np.arange(len(x)), x.shape[1:]))
    if a.profile:
        import cProfile
        import pstats

        with cProfile.Profile() as prof:
            suite.training_free(e, x, True, ("encrypted", "fold-raw", "fold", "neighbour"), workers=1)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
        return
    load0 = os.getloadavg()[0]
    t0 = time.time()
    res = suite.training_free(e, x, True, ("encrypted", "fold-raw", "fold", "neighbour"), workers=a.workers)
    wall = time.time() - t0
    out = {"images": len(x), "shape": list(x.shape[1:]), "workers": a.workers, "seconds": round(wall, 1),
           "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2),
           "ssim": {k: round(r["summary"]["ssim"]["mean"], 4) for k, r in res.items()},
           "ssim_colour": {k: round(r["summary"]["ssim_colour"]["mean"], 4) for k, r in res.items()},
           "psnr": {k: round(r["summary"]["psnr"]["mean"], 3) for k, r in res.items()}}
    if a.with_choice and hasattr(suite, "run"):
        own = images(Path(a.data), a.n, offset=a.n)
        ctx = suite.Context(scheme, "independent", own=own)
        t0 = time.time()
        rows = suite.run(e, x, ctx, workers=a.workers)
        out["with_choice"] = {"seconds": round(time.time() - t0, 1),
                              "ssim": {r["name"]: round(r["summary"]["ssim"]["mean"], 4) for r in rows}}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
