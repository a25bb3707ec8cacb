"""Training throughput fed from shards vs fed from synthetic tensors on the device (the compute limit).

    python bench/train.py [--shards DIR] [--device cpu|cuda] [--width 64] [--batch-size B] [--steps N]

Without ``--shards`` it encrypts the embedded sample (NP+CS, 500 images) into a temporary
folder, in both formats. Reports, side by side in one run:

1. the data path alone, images/s: shards -> device (``ShardSet.load`` + copy, once); the
   in-memory batcher (permutation, gather, flip + shift) vs a plain device copy of the same
   bytes (the memory-bandwidth limit); the streaming loaders (webdataset and HDF5 workers);
2. ResNet-18 training steps, images/s: fed from synthetic uint8 tensors already on the device
   (the compute limit), from the in-memory shards loader, from the streaming loader; and the
   ratio shards / synthetic (the target on a GPU is >= 0.95; on a CPU the model dominates and
   the ratio is reported only).

Writes ``bench/results/train-<device>.md`` (and ``.json``) with the machine it ran on.
(The streaming row of 2. interleaves its steps with the other feeds, which gives its workers
slack: it is an upper bound. ``--feed`` measures the streaming loader on its own.)

    python bench/train.py --feed --shards DIR [--device cuda] [--workers N] [--epochs E] [--json OUT]

``--feed``: the streaming loader's feed ratio, the number the issue's target (>= 0.95 on a GPU)
is about: ResNet-18 training images/s fed by the streaming loader (WebDataset or HDF5 workers)
over that fed from the device-resident split, whole epochs of each, alternated (memory, stream,
memory, stream, ...) after one untimed epoch of each; bf16 autocast, channels_last and the fused
step on CUDA; timed with CUDA events. Prints (and with ``--json`` writes) one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ppdata.cipher import get_scheme  # noqa: E402
from ppdata.keys import KeyStream, new_secret  # noqa: E402
from ppdata.pipeline import encrypt  # noqa: E402
from ppdata.shards import open_shards  # noqa: E402
from ppdata.sources import SampleSource  # noqa: E402
from train import data as D  # noqa: E402
from train.augment import Augment  # noqa: E402
from ppdata.machine import describe, summary  # noqa: E402
from train.classifier import make_model, make_optimizer, train_step  # noqa: E402
from train.config import Config  # noqa: E402
from train.runtime import Clock, Kernels  # noqa: E402


def machine(device: torch.device) -> str:
    return summary(describe(device))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeat=1):
    sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    sync(device)
    return (time.perf_counter() - t) / repeat, out


def make_sample_shards(root: Path) -> dict[str, Path]:
    out = {}
    for fmt in ("webdataset", "hdf5"):
        out[fmt] = root / fmt
        encrypt(SampleSource(), out[fmt], scheme=get_scheme("pixel", cs=True), keys=KeyStream(new_secret()),
                fmt=fmt, shard_size=100, progress=False)
    return out


def data_path(dirs: dict[str, Path], device, batch, workers, epochs=3) -> list[tuple[str, float, str]]:
    rows = []
    first = next(iter(dirs.values()))
    shards = open_shards(first, "train")
    t, split = timed(lambda: D.load_split(shards, device), device)
    n = len(split)
    rows.append(("load shards -> device (once)", n / t, f"{n} images in {t:.2f}s ({shards.format})"))
    aug = Augment(True, 4)
    loader = D.DeviceLoader(split, batch, seed=0)
    g = D.generator(device, 0)

    def one_epoch(e=[0]):
        e[0] += 1
        last = None
        for x, y in loader.epoch(e[0]):
            last = aug(x, g)
        return last

    one_epoch()
    t, _ = timed(one_epoch, device, epochs)
    rows.append(("in-memory batcher: permute + gather + flip/shift", loader.steps * batch / t, "no model"))
    t, _ = timed(lambda: split.images.clone(), device, 5)
    rows.append(("device copy of the split (bandwidth limit)", n / t, ""))
    for fmt, d in dirs.items():
        s = open_shards(d, "train")
        for w in sorted({0, workers}):
            try:
                sl = D.StreamLoader(s, batch, device, seed=0, workers=w)
            except Exception as e:  # noqa: BLE001 (too few shards for this many workers)
                rows.append((f"stream {fmt}, {w} workers", float("nan"), str(e)[:80]))
                continue
            t0 = time.perf_counter()
            count = sum(len(y) for _, y in sl.epoch(0))
            sync(device)
            rows.append((f"stream {fmt}, {w} workers (incl. start-up)", count / (time.perf_counter() - t0), ""))
    return rows


def training(dirs, device, width, batch, steps, amp, channels_last, workers) -> list[tuple[str, float, str]]:
    """Training steps fed three ways, interleaved step by step (A, B, C, A, B, C, ...) so that a
    change in machine load hits every feed alike; images/s from the median step time."""
    first = next(iter(dirs.values()))
    shards = open_shards(first, "train")
    cfg = Config(model="resnet18", model_args={"width": width}, batch_size=batch, lr=0.05, nesterov=True)
    split = D.load_split(shards, device)
    aug = Augment(True, 4)

    def synthetic():
        x = torch.randint(0, 256, (batch, *shards.shape), dtype=torch.uint8, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        while True:
            yield x, y

    def forever(loader):
        e = 0
        while True:
            yield from loader.epoch(e)
            e += 1

    w = max(1, workers)
    wds_dir = dirs.get("webdataset", first)
    feeds = {"synthetic uint8 tensors on the device (compute limit)": synthetic(),
             "in-memory shards loader (+ flip/shift on device)": forever(D.DeviceLoader(split, batch, seed=0)),
             f"streaming {open_shards(wds_dir, 'train').format} loader, {w} workers (+ flip/shift on device)":
                 forever(D.StreamLoader(open_shards(wds_dir, "train"), batch, device, 0, workers=w))}
    state = {}
    for name, it in feeds.items():
        torch.manual_seed(0)
        model = make_model(cfg, 10, [127.5] * 3, [64.0] * 3, False, device, channels_last)
        state[name] = (model, make_optimizer(cfg, model), D.generator(device, 1), it)
        for _ in range(2):  # warm-up (cudnn autotune, allocator, worker start-up)
            x, y = next(it)
            train_step(model, state[name][1], x, y, aug, state[name][2], amp)
    times = {name: [] for name in feeds}
    for _ in range(steps):
        for name, (model, opt, g, it) in state.items():
            sync(device)
            t = time.perf_counter()
            x, y = next(it)
            train_step(model, opt, x, y, aug, g, amp)
            sync(device)
            times[name].append(time.perf_counter() - t)
    ips = {name: batch / float(np.median(t)) for name, t in times.items()}
    rows = [(name, v, f"median of {steps} interleaved steps") for name, v in ips.items()]
    names = list(ips)
    rows.append(("ratio in-memory / synthetic", ips[names[1]] / ips[names[0]], "target >= 0.95 on a GPU"))
    rows.append(("ratio streaming / synthetic", ips[names[2]] / ips[names[0]], ""))
    return rows


def feed(shards_dir, device: torch.device, width: int = 64, batch: int = 512, workers: int = 8, epochs: int = 2
         ) -> dict:
    """Training images/s fed from the streaming loader vs the device-resident split (see --feed)."""
    shards = open_shards(shards_dir, "train")
    cfg = Config(model="resnet18", model_args={"width": width}, batch_size=batch, lr=0.05, nesterov=True,
                 amp="auto", channels_last=None, sgd="auto")
    kern = Kernels.of(cfg, device)
    t = time.perf_counter()
    split = D.load_split(shards, device)
    load_s = time.perf_counter() - t
    loaders = {"memory": D.DeviceLoader(split, batch, seed=0),
               "stream": D.StreamLoader(shards, batch, device, seed=0, workers=workers)}
    torch.manual_seed(0)
    model = make_model(cfg, max(1, len(shards.classes)), [127.5] * 3, [64.0] * 3, False, device, kern.channels_last)
    opt = make_optimizer(cfg, model, kern.sgd)
    aug, gen, clock = Augment(True, 4, "reflect"), D.generator(device, 1), Clock(device)
    seconds = {k: 0.0 for k in loaders}
    images = {k: 0 for k in loaders}
    try:
        for e in range(epochs + 1):  # epoch 0 of each: warm-up (autotuning, worker start), not timed
            for name, loader in loaders.items():
                clock.start()
                n = 0
                for x, y in loader.epoch(e):
                    train_step(model, opt, x, y, aug, gen, kern.amp)
                    n += len(y)
                s = clock.stop()
                if e:
                    seconds[name] += s
                    images[name] += n
    finally:
        loaders["stream"].close()
    ips = {k: images[k] / seconds[k] for k in loaders}
    return {"shards": str(shards_dir), "format": shards.format, "train_images": len(shards),
            "shard_files": len(shards.paths), "device": str(device), "machine": machine(device),
            "width": width, "batch": batch, "workers": workers, "timed_epochs": epochs, **kern.describe(),
            "load_seconds": load_s, "steps_per_epoch": {k: len(v) for k, v in loaders.items()},
            "images_per_s": ips, "seconds": seconds, "ratio": ips["stream"] / ips["memory"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", action="append", default=[],
                    help="shard folder(s) with a train split (default: the embedded sample, both formats)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--width", type=int, default=64, help="ResNet-18 stem width (64 = ResNet-18)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 512 on CUDA, 32 on CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per feed (default 50 on CUDA, 8 on CPU)")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--out", default=None)
    ap.add_argument("--feed", action="store_true", help="only the streaming feed ratio (see above)")
    ap.add_argument("--epochs", type=int, default=2, help="--feed: timed epochs per loader")
    ap.add_argument("--json", default=None, help="--feed: also write the result here")
    a = ap.parse_args()
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    if a.feed:
        if len(a.shards) != 1:
            ap.error("--feed needs one --shards folder")
        res = feed(a.shards[0], device, a.width, a.batch_size or (512 if cuda else 32), a.workers, a.epochs)
        res["command"] = "python bench/train.py " + " ".join(sys.argv[1:])
        text = json.dumps(res, indent=2)
        print(text)
        if a.json:
            Path(a.json).write_text(text + "\n")
        return
    batch = a.batch_size or (512 if cuda else 32)
    steps = a.steps or (50 if cuda else 8)
    with tempfile.TemporaryDirectory() as tmp:
        if a.shards:
            dirs = {}
            for d in a.shards:
                fmt = open_shards(d, "train").format
                dirs[fmt if fmt not in dirs else f"{fmt}-{len(dirs)}"] = Path(d)
            what = "; ".join(f"{Path(d).name}: {s.format}, {s.scheme.get('name')} {dict((k, v) for k, v in s.scheme.items() if k in ('np', 'cs'))}, "
                             f"{len(s)} train images in {len(s.paths)} file(s)"
                             for d in a.shards for s in [open_shards(d, "train")])
        else:
            dirs = make_sample_shards(Path(tmp))
            what = "embedded sample, NP+CS, 500 train images, shards of 100"
        rows = data_path(dirs, device, batch, a.workers)
        rows += training(dirs, device, a.width, batch, steps, cuda, cuda, a.workers)
        batcher = next(v for n, v, _ in rows if n.startswith("in-memory batcher"))
        limit = next(v for n, v, _ in rows if n.startswith("synthetic"))
        rows.append(("ratio bound from the batcher's own cost: 1 / (1 + limit / batcher)", 1 / (1 + limit / batcher),
                     "what the in-memory ratio would be if the data path did not overlap the step"))
    cmd = "python bench/train.py " + " ".join(sys.argv[1:])
    head = (f"# bench/train.py on {device.type}\n\n- machine: {machine(device)}\n- date: "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n- command: `{cmd}`\n- data: {what}\n"
            f"- model: ResNet-18 width {a.width}, batch {batch}, {steps} timed steps per feed (interleaved), "
            f"{'bf16 autocast + channels_last' if cuda else 'float32'}, SGD\n\n")
    table = "| measurement | images/s (or ratio) | note |\n|---|---:|---|\n" + "".join(
        f"| {name} | {v:,.3f} | {note} |\n" if "ratio" in name else f"| {name} | {v:,.0f} | {note} |\n"
        for name, v, note in rows)
    text = head + table
    print(text)
    out = Path(a.out or REPO / "bench" / "results" / f"train-{device.type}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(
        {"machine": machine(device), "command": cmd, "data": what, "batch": batch, "steps": steps,
         "width": a.width, "rows": [{"name": n, "value": v, "note": note} for n, v, note in rows]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
