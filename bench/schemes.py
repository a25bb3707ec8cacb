"""Throughput of every scheme, side by side: key derivation + encryption, and decryption.

    python bench/schemes.py [--n 10000] [--batch 512] [--out bench/results]

Input: 10,000 decoded 32x32 images (the embedded sample's 600 real CIFAR-10 images, tiled), in
batches of ``--batch`` as the pipeline does (keys derived per batch from one ChaCha20 stream,
indices 0..n-1). One thread. Compared in one run: ``pixel`` (NP, NP+CS) as the reference, the
comparison schemes, and a memcpy of the same bytes (the limit of touching the data once).
Writes a markdown table to ``--out`` and prints it.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import best_of, cifar_like, machine, write_report  # noqa: E402
from ppdata import __version__  # noqa: E402
from ppdata.cipher import get_scheme  # noqa: E402
from ppdata.keys import KeyStream, new_secret  # noqa: E402

CASES = [
    ("pixel", {"cs": False}, "pixel NP (the paper's scheme)"),
    ("pixel", {"cs": True}, "pixel NP+CS"),
    ("icip", {"cs": True}, "icip NP+CS"),
    ("etc", {}, "etc, 4x4 blocks, CS"),
    ("le", {}, "le, 4x4 blocks"),
    ("chaos", {}, "chaos, 32-byte RC4 key (OpenSSL ARC4)"),
    ("chaos", {"rc4_key_bytes": 256}, "chaos, 256-byte RC4 key (numpy RC4)"),
]








def run_case(scheme, images, mode, batch, reps):
    stream = KeyStream(new_secret(), mode)
    shape = images.shape[1:]
    enc = np.empty_like(images)

    def encrypt():
        for a in range(0, len(images), batch):
            b = min(len(images), a + batch)
            k = scheme.derive_keys(stream, "train", np.arange(a, b), shape)
            enc[a:b] = scheme.encrypt(images[a:b], k)

    def decrypt():
        for a in range(0, len(images), batch):
            b = min(len(images), a + batch)
            k = scheme.derive_keys(stream, "train", np.arange(a, b), shape)
            out = scheme.decrypt(enc[a:b], k)
            if a == 0:
                assert np.array_equal(out, images[a:b])

    te = best_of(encrypt, reps)
    td = best_of(decrypt, reps)
    return len(images) / te, len(images) / td


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    images = cifar_like(args.n)[0]
    dst = np.empty_like(images)
    limit = args.n / best_of(lambda: np.copyto(dst, images), 5)
    rows = []
    ref = {}
    for name, opts, label in CASES:
        scheme = get_scheme(name, **opts)
        for mode in ("independent", "same"):
            e, d = run_case(scheme, images, mode, args.batch, args.reps)
            if name == "pixel":
                ref[(opts["cs"], mode)] = e
            rows.append((label, mode, e, d))
            print(f"{label:45s} {mode:11s} encrypt {e:12,.0f} img/s  decrypt {d:12,.0f} img/s", flush=True)
    today = datetime.date.today().isoformat()
    lines = [
        f"# Scheme throughput ({today})",
        "",
        f"Machine: {machine()}. ppdata {__version__}. Command: `python bench/schemes.py --n {args.n} "
        f"--batch {args.batch}`.",
        f"Input: {args.n} decoded 32x32 real CIFAR-10 images (embedded sample, tiled), batches of {args.batch}, "
        "one thread; key derivation (ChaCha20 material -> scheme key) included in every number; best of "
        f"{args.reps}.",
        "",
        f"Load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f} on "
        f"{os.cpu_count()} cores (a shared machine: compare within this table only).",
        "",
        "| scheme | keys | encrypt images/s | decrypt images/s | encrypt vs pixel NP | vs pixel NP+CS "
        "| vs memcpy |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, mode, e, d in rows:
        lines.append(f"| {label} | {mode} | {e:,.0f} | {d:,.0f} | {e / ref[(False, mode)]:.2f} "
                     f"| {e / ref[(True, mode)]:.2f} | {e / limit:.3f} |")
    lines.append(f"| memcpy of the same bytes (limit) | - | {limit:,.0f} | - "
                 f"| {limit / ref[(False, 'independent')]:.1f} | {limit / ref[(True, 'independent')]:.1f} | 1.000 |")
    print()
    print(f"written to {write_report(lines, args.out, 'schemes')}")


if __name__ == "__main__":
    main()
