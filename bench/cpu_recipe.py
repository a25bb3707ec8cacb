"""The CPU recipe (train/cpu.py) against the obvious baseline and the machine's limit.

    python bench/cpu_recipe.py speed [--steps N]
    python bench/cpu_recipe.py curve --plain DIR --npcs DIR [--epochs 2,4,6] [--run COND-eE=RUNDIR ...]

``speed``: training throughput (forward + backward + SGD step, batch 256, all cores as threads
of one process), side by side in one run, interleaved rounds, median per row:

- the paper's network as the project trained it on a CPU so far (ResNet-18, float32), the
  baseline;
- AirNet (airbench94's network) at the recipe's widths 64/256/256 in float32 NCHW, float32 NHWC,
  bf16 NHWC (the recipe), and at 32/128/128 (the small budget), plus ResNet-18 in bf16;
- the physical limit: the machine's dense matrix-multiply rate (float32 and bf16 GEMMs of
  2048^3), against which each row's achieved FLOP rate (from ``torch.utils.flop_counter``) is
  a utilisation.

``curve``: accuracy against CPU-minutes for plain and NP+CS (fold input): the recipe run alone at
each epoch budget on the given shard folders (whole CIFAR-10), each run's folder kept under
``--work`` (a finished budget is reused; ``--run`` adds finished runs of the recipe, e.g. the
cifar10-cpu table's), then ``bench/results/cpu-recipe-curve.{md,json,png}``.

Both write their report with the machine and its load (``bench/results/``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import load, machine, write_report  # noqa: E402

RESULTS = REPO / "bench" / "results"


def speed(steps: int, rounds: int) -> None:
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from train.models import AirNet, ResNet18

    torch.manual_seed(0)
    bs = 256
    rows = [  # name, network factory, bf16, channels_last
        ("ResNet-18 (width 64), float32 NHWC: the baseline", lambda: ResNet18(), False, True),
        ("ResNet-18 (width 64), bf16 NHWC", lambda: ResNet18(), True, True),
        ("AirNet 64/256/256, float32 NCHW", lambda: AirNet(), False, False),
        ("AirNet 64/256/256, float32 NHWC", lambda: AirNet(), False, True),
        ("AirNet 64/256/256, bf16 NHWC: the recipe", lambda: AirNet(), True, True),
        ("AirNet 32/128/128, bf16 NHWC: the small budget", lambda: AirNet(widths=(32, 128, 128)), True, True),
    ]
    x = torch.randn(bs, 3, 32, 32)
    y = torch.randint(0, 10, (bs,))

    def stepper(make, bf16, cl):
        net = make()
        xx = x
        if cl:
            net, xx = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-3, momentum=0.9,
                              nesterov=True, foreach=True)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(xx).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with FlopCounterMode(display=False) as fc:
            step()
        return step, fc.get_total_flops() / bs

    steppers = [(name, *stepper(make, bf16, cl)) for name, make, bf16, cl in rows]
    for _, step, _ in steppers:  # warm-up: oneDNN primitive creation
        step()
    times: dict[str, list[float]] = {name: [] for name, *_ in steppers}
    for _ in range(rounds):
        for name, step, _ in steppers:
            t = time.perf_counter()
            for _ in range(steps):
                step()
            times[name].append((time.perf_counter() - t) / steps)

    def gemm(dtype) -> float:
        n = 2048
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(5))
        return 2 * n ** 3 / best

    peak = {"float32": gemm(torch.float32), "bf16": gemm(torch.bfloat16)}
    base = statistics.median(times[rows[0][0]])
    out = {"machine": machine(), "load": load(), "batch": bs, "threads": torch.get_num_threads(),
           "gemm_flops": peak, "rows": []}
    lines = ["# The CPU recipe's speed: bench/cpu_recipe.py speed", "",
             f"- machine: {out['machine']}; {torch.get_num_threads()} threads",
             f"- load: {out['load']}", f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
             f"- batch {bs}, forward + backward + SGD step, {rounds} interleaved rounds of {steps} steps, median",
             f"- the physical limit: dense GEMM 2048^3 at {peak['float32'] / 1e9:,.0f} GFLOP/s in float32, "
             f"{peak['bf16'] / 1e9:,.0f} GFLOP/s in bf16", "",
             "| network, precision, layout | images/s | x baseline | GFLOP per image | GFLOP/s | of GEMM peak |",
             "|---|---:|---:|---:|---:|---:|"]
    for (name, _, bf16, _), (_, _, flops) in zip(rows, steppers):
        t = statistics.median(times[name])
        rate = flops * bs / t
        util = rate / peak["bf16" if bf16 else "float32"]
        out["rows"].append({"name": name, "images_per_s": bs / t, "x_baseline": base / t, "gflop_per_image": flops / 1e9,
                            "gflops": rate / 1e9, "of_gemm_peak": util})
        lines.append(f"| {name} | {bs / t:,.0f} | {base / t:.2f} | {flops / 1e9:.3f} | {rate / 1e9:,.0f} | {util:.0%} |")
    lines += ["", f"load after: {load()}"]
    path = write_report(lines, RESULTS, "cpu-recipe-speed")
    path.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")


def _shown(p: Path) -> str:
    """A path as reports show it: relative to the repository when inside it, else its last two parts."""
    try:
        return str(p.resolve().relative_to(REPO))
    except ValueError:
        return str(Path(*p.resolve().parts[-2:]))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def curve(plain: str, npcs: str, epochs: list[int], work: Path, extra: list[str]) -> None:
    runs = []
    known = dict(x.split("=", 1) for x in extra)  # COND-eE=RUNDIR: a finished run of the same recipe elsewhere
    for cond, shards in (("plain", plain), ("npcs-independent-fold", npcs)):
        for e in sorted(set(epochs) | {int(k.rsplit("-e", 1)[1]) for k in known if k.startswith(cond + "-e")}):
            out = Path(known.get(f"{cond}-e{e}", work / f"{cond}-e{e}"))
            m = out / "metrics.json"
            if not (m.is_file() and json.loads(m.read_text()).get("complete")):
                cmd = [sys.executable, "-m", "train.resnet", shards, "--profile", "cpu", "--epochs", str(e),
                       "--out", str(out), "-q"] + (["--overwrite"] if out.exists() else [])
                print("$", " ".join(cmd), f"  [{load()}]", flush=True)
                subprocess.run(cmd, check=True, cwd=REPO)
            r = json.loads(m.read_text())
            runs.append({"condition": cond, "epochs": e, "enc_q": 100 * r["eval"]["test"]["final_acc"],
                         "minutes": r["seconds"] / 60, "train_minutes": r["train_seconds"] / 60,
                         "process_cpu_minutes": r.get("cpu_seconds", 0) / 60, "load_average": r.get("load_average"),
                         "device": r["device"], "run": _shown(out)})
    lines = ["# The CPU recipe: accuracy against minutes on this CPU (bench/cpu_recipe.py curve)", "",
             f"- machine: {machine()}", f"- data: plain {plain}, NP+CS independent keys {npcs} (whole CIFAR-10 copy, "
             "JPEG q75; test on the 10,000 test images, Enc(Q) = Q for the fold)",
             f"- recipe: `python -m train.resnet SHARDS --profile cpu --epochs E` (AirNet 64/256/256, bf16, TTA); "
             "minutes: wall clock of the whole command; load: one-minute load average at start / end", "",
             "| condition | epochs | Enc(Q) % | minutes | training minutes | load start / end |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in runs:
        la = r["load_average"] or {}
        ld = f"{la['start'][0]:.1f} / {la['end'][0]:.1f}" if la else "-"
        lines.append(f"| {r['condition']} | {r['epochs']} | {r['enc_q']:.2f} | {r['minutes']:.1f} | "
                     f"{r['train_minutes']:.1f} | {ld} |")
    path = write_report(lines, RESULTS, "cpu-recipe-curve")
    path.with_suffix(".json").write_text(json.dumps({"machine": machine(), "runs": runs}, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f, ax = plt.subplots(figsize=(6, 4))
    for cond, label in (("plain", "plain"), ("npcs-independent-fold", "NP+CS, independent keys (fold)")):
        pts = sorted((r["minutes"], r["enc_q"], r["epochs"]) for r in runs if r["condition"] == cond)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
        for mnt, acc, e in pts:
            ax.annotate(f"{e} ep", (mnt, acc), fontsize=7, xytext=(3, -9), textcoords="offset points")
    ax.axvline(20, color="0.6", ls="--", lw=1)
    ax.set_xlabel("minutes on this CPU (whole run)")
    ax.set_ylabel("accuracy on Enc(Q) (%)")
    ax.set_title("CPU recipe on CIFAR-10 (AirNet 64/256/256, bf16)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    f.tight_layout()
    f.savefig(path.with_suffix(".png"), dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--steps", type=int, default=3)
    s.add_argument("--rounds", type=int, default=3)
    c = sub.add_parser("curve")
    c.add_argument("--plain", required=True)
    c.add_argument("--npcs", required=True)
    c.add_argument("--epochs", default="2,4,6,10")
    c.add_argument("--work", type=Path, default=REPO / "bench" / "data" / "cpu-curve")
    c.add_argument("--run", action="append", default=[], metavar="COND-eE=RUNDIR",
                   help="a finished run to use for a point (COND: plain or npcs-independent-fold)")
    a = ap.parse_args()
    if a.what == "speed":
        speed(a.steps, a.rounds)
    else:
        curve(a.plain, a.npcs, [int(v) for v in a.epochs.split(",")], a.work, a.run)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(REPO))
    main()
