"""The GPU check: one command for a fresh GPU machine, at most 8 minutes, one report.

    make gpu-check DATA=path/to/cifar10-jpeg             # = python scripts/gpu_check.py --data ...
    make gpu-check DATA=path/to/cifar10-jpeg TINY=1      # the same steps on CPU, tiny, about a minute

``DATA`` holds CIFAR-10's JPEG archives ``train.tar.gz`` and ``test.tar.gz`` (ImageFolder
layout ``<split>/<class>/<file>``). Steps, each a subprocess with its own time limit, its log
in ``WORK/logs/`` and its result written into the report as soon as it ends (a later failure or
a kill loses nothing before it):

1. ``prepare``: plain and NP+CS (independent keys) shards of the archives with the ppdata CLI
   (``ppdata encrypt folder train.tar.gz test.tar.gz [--plain | --cs] --out ...``), both at once;
2. ``train-plain``: the fast recipe (``train.resnet --profile fast``) on the plain shards: plain Q;
3. ``train-npcs-fold``: the fast recipe on the NP+CS shards with fold input: Enc(Q) (independent
   keys) and plain Q;
4. ``cpu-recipe``: the CPU recipe (``train.resnet --profile cpu``: AirNet, airbench's tricks) on the
   NP+CS shards, fold input, on the GPU: the same maths as the CPU table in
   ``docs/results/cifar10-cpu`` (compare the accuracy; the minutes are the GPU's);
5. ``ddp-smoke``: ``torchrun --nproc_per_node 1`` through the DDP path (process group, DDP wrapper,
   BatchNorm sync, streaming loader with pinned copies), one short epoch;
6. ``feed``: the streaming loader's feed ratio (``bench/train.py --feed``): training images/s fed
   by WebDataset workers over those fed from the device-resident split;
7. ``compile``: the fast recipe with ``--compile`` for two epochs, if the budget still allows.

The steps share one budget (``--budget``, default 480 s); a step that cannot get its minimum
time is skipped and says so. Writes ``RESULTS/gpu-<date>.md`` and ``.json`` (``--tiny``:
``gpu-<date>-tiny.md``, marked as a CPU check, not a measurement) with the card's name, the
machine, the commit and every step's command, status, seconds and numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ppdata.fileio import atomic_write  # noqa: E402
from ppdata.machine import describe, summary  # noqa: E402
from train.experiments.source import slice_archive  # noqa: E402

TARGETS = {"plain Q, plain model": 0.94, "Enc(Q), NP+CS fold model": 0.90, "training seconds": 180.0,
           "feed ratio": 0.95}
ARCHIVES = ("train.tar.gz", "test.tar.gz")


@dataclass
class Step:
    name: str
    what: str
    command: list[str]
    limit: float          # seconds
    minimum: float        # skip unless this much budget is left
    status: str = "pending"   # ok | failed | timeout | skipped | pending
    seconds: float | None = None
    result: dict = field(default_factory=dict)
    note: str = ""


# ---------------------------------------------------------------------------------------------
# data


def find_archives(data: Path) -> tuple[Path, Path]:
    """``train.tar.gz`` and ``test.tar.gz`` in ``data`` or in its ``cifar10-jpeg`` folder."""
    for d in (data, data / "cifar10-jpeg"):
        if all((d / a).is_file() for a in ARCHIVES):
            return d / ARCHIVES[0], d / ARCHIVES[1]
    raise SystemExit(f"gpu-check: {data} holds no {' and '.join(ARCHIVES)} (CIFAR-10 JPEG archives); "
                     f"pass the folder that does: make gpu-check DATA=folder")


# ---------------------------------------------------------------------------------------------
# running steps


def run_step(step: Step, log: Path, env: dict, timeout: float) -> None:
    """Run ``step.command`` (a list, or a list of lists run at once) in its own process group;
    kill the group when ``timeout`` passes."""
    cmds = step.command if step.command and isinstance(step.command[0], list) else [step.command]
    t = time.perf_counter()
    with open(log, "w") as f:
        f.write("".join(f"$ {shlex.join(c)}\n" for c in cmds))
        f.flush()
        procs = [subprocess.Popen(c, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
                 for c in cmds]
        try:
            for p in procs:
                p.wait(timeout=max(1.0, timeout - (time.perf_counter() - t)))
            codes = [p.returncode for p in procs]
            step.status = "ok" if all(c == 0 for c in codes) else "failed"
            if step.status == "failed":
                step.note = f"exit status {codes}"
        except subprocess.TimeoutExpired:
            step.status, step.note = "timeout", f"stopped after {timeout:.0f} s"
        finally:
            for p in procs:
                if p.poll() is None:
                    try:
                        os.killpg(p.pid, signal.SIGTERM)
                        p.wait(timeout=10)
                    except (ProcessLookupError, subprocess.TimeoutExpired):
                        try:
                            os.killpg(p.pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                        p.wait()
    step.seconds = time.perf_counter() - t
    if step.status != "ok":
        step.result["log_tail"] = log.read_text(errors="replace")[-2000:]


def run_metrics(run_dir: Path) -> dict:
    """The numbers of a training run folder (also of an unfinished one)."""
    p = run_dir / "metrics.json"
    if not p.exists():
        return {}
    m = json.loads(p.read_text())
    out = {k: m.get(k) for k in ("complete", "epochs_done", "seconds", "load_seconds", "prewarm_seconds",
                                 "train_seconds", "images_per_s", "device", "effective", "input", "world_size",
                                 "ranks_in_sync")}
    out["epochs"] = m.get("config", {}).get("epochs")
    out["accuracy"] = {k: v.get("final_acc") for k, v in m.get("eval", {}).items()}
    out["final_epoch"] = {k: v.get("final_epoch") for k, v in m.get("eval", {}).items()}
    if "fast" in m:
        out["variants"] = m["fast"]["variants"]
    return out


# ---------------------------------------------------------------------------------------------
# the report


def shown(cmd: list[str]) -> str:
    """A command as the report shows it: ``python`` for this interpreter, paths inside the
    repository relative to it (the report names no machine's folders)."""
    def one(arg: str) -> str:
        if arg == sys.executable:
            return "python"
        pre, eq, path = arg.rpartition("=") if arg.startswith("plain=") else ("", "", arg)
        try:
            return pre + eq + str(Path(path).resolve().relative_to(REPO))
        except ValueError:
            return arg
    return shlex.join(one(a) for a in cmd)


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def num(v, fmt="{:,.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def verdicts(steps: dict[str, Step], tiny: bool) -> list[tuple[str, str, str, str]]:
    """(target, goal, measured, met/missed/not run) rows."""
    plain = steps["train-plain"].result
    fold = steps["train-npcs-fold"].result
    feed = steps["feed"].result
    rows = []

    def row(name, goal, value, ok, show):
        state = "not run" if value is None else ("met" if ok else "missed")
        rows.append((name, goal, show(value), "tiny CPU check" if tiny and value is not None else state))

    a = (plain.get("accuracy") or {}).get("test") if plain.get("complete") else None
    row("plain Q, plain model", ">= 94%", a, a is not None and a >= TARGETS["plain Q, plain model"], pct)
    a = (fold.get("accuracy") or {}).get("test") if fold.get("complete") else None
    row("Enc(Q), NP+CS fold model", ">= 90%", a, a is not None and a >= TARGETS["Enc(Q), NP+CS fold model"], pct)
    for name, r in (("training seconds, plain", plain), ("training seconds, NP+CS fold", fold)):
        s = r.get("train_seconds") if r.get("complete") else None
        row(name, "<= 180 s", s, s is not None and s <= TARGETS["training seconds"], lambda v: num(v))
    r = feed.get("ratio")
    row("feed ratio, streaming / device-resident", ">= 0.95", r, r is not None and r >= TARGETS["feed ratio"],
        lambda v: num(v, "{:.3f}"))
    return rows


def write_report(path: Path, info: dict, steps: dict[str, Step], tiny: bool) -> None:
    data = {**info, "targets": TARGETS, "steps": {k: {**asdict(s), "command": [
        shown(c) for c in (s.command if s.command and isinstance(s.command[0], list) else [s.command])]}
        for k, s in steps.items()}}
    data["verdicts"] = [dict(zip(("target", "goal", "measured", "state"), v)) for v in verdicts(steps, tiny)]
    atomic_write(path.with_suffix(".json"), json.dumps(data, indent=2) + "\n", fsync=False)
    L = [f"# GPU check, {info['date']}" + (" (TINY CPU CHECK: not a measurement)" if tiny else ""), "",
         f"- card: {info['card'] or 'none (CPU)'}", f"- machine: {info['machine']}",
         f"- commit: {info['commit']}", f"- command: `{info['command']}`",
         f"- data: {info['data']}", f"- budget: {info['budget']:.0f} s; elapsed {info['elapsed']:.0f} s"
         + ("" if info.get("finished") else " (still running or interrupted)"), "",
         "## Targets", "", "| target | goal | measured | state |", "|---|---|---:|---|"]
    L += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in verdicts(steps, tiny)]
    L += ["", "## Steps", "", "| step | what | status | seconds | limit |", "|---|---|---|---:|---:|"]
    L += [f"| {s.name} | {s.what} | {s.status}{f' ({s.note})' if s.note else ''} | {num(s.seconds)} | "
          f"{s.limit:.0f} |" for s in steps.values()]
    L += ["", "## Training runs", "",
          "| run | epochs | Enc(Q) / test | plain Q | train s | images/s | warm-up s | whole run s | device |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name in ("train-plain", "train-npcs-fold", "cpu-recipe", "ddp-smoke", "compile"):
        r = steps[name].result
        if not r.get("epochs_done"):
            continue
        acc = r.get("accuracy") or {}
        L.append(f"| {name} | {r['epochs_done']}/{r.get('epochs')} | {pct(acc.get('test'))} | "
                 f"{pct(acc.get('plain'))} | {num(r.get('train_seconds'))} | {num(r.get('images_per_s'), '{:,.0f}')} | "
                 f"{num(r.get('prewarm_seconds'))} | {num(r.get('seconds'))} | {r.get('device')} |")
    for name in ("train-plain", "train-npcs-fold"):
        v = steps[name].result.get("variants")
        if v:
            L += ["", f"{name}, final accuracy by weights and test-time flip: " + "; ".join(
                f"{es}: " + ", ".join(f"{k} {pct(a)}" for k, a in d.items()) for es, d in v.items())]
    f = steps["feed"].result
    if f.get("ratio") is not None:
        L += ["", f"Feed: streaming {num(f['images_per_s']['stream'], '{:,.0f}')} images/s vs device-resident "
              f"{num(f['images_per_s']['memory'], '{:,.0f}')} images/s, ratio {f['ratio']:.3f} "
              f"({f['workers']} workers, batch {f['batch']}, {f['timed_epochs']} timed epochs each, "
              f"{f['shard_files']} shard files)."]
    d = steps["ddp-smoke"].result
    if d:
        L += ["", f"DDP smoke: complete {d.get('complete')}, world size {d.get('world_size')}, "
              f"effective {d.get('effective')}, ranks_in_sync {d.get('ranks_in_sync')}."]
    L += ["", "## Commands", ""]
    for s in steps.values():
        cmds = s.command if s.command and isinstance(s.command[0], list) else [s.command]
        L += [f"- {s.name}: " + "; ".join(f"`{shown(c)}`" for c in cmds)]
    bad = [s for s in steps.values() if s.status in ("failed", "timeout")]
    if bad:
        L += ["", "## Failures", ""]
        for s in bad:
            L += [f"### {s.name}", "", "```", s.result.get("log_tail", "").strip(), "```", ""]
    atomic_write(path.with_suffix(".md"), "\n".join(L) + "\n", fsync=False)


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder holding CIFAR-10's train.tar.gz and test.tar.gz (JPEG)")
    ap.add_argument("--work", default=str(REPO / "runs" / "gpu-check"), help="scratch folder (replaced)")
    ap.add_argument("--results", default=str(REPO / "bench" / "results"), help="where the report goes")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for all steps together")
    ap.add_argument("--tiny", action="store_true", help="the same steps on CPU, tiny data and networks")
    ap.add_argument("--epochs", type=int, default=None, help="fast recipe epochs (default: the recipe's)")
    ap.add_argument("--workers", type=int, default=None, help="streaming workers (default: cores - 4, max 12)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compile step")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    deadline = t0 + a.budget

    train_tar, test_tar = find_archives(Path(a.data))
    import torch

    if not a.tiny and not torch.cuda.is_available():
        raise SystemExit("gpu-check: no CUDA device here; on a CPU run the tiny check: make gpu-check DATA=... TINY=1")
    device = "cpu" if a.tiny else "cuda"
    work = Path(a.work)
    if work.exists():
        import shutil

        shutil.rmtree(work)
    (work / "logs").mkdir(parents=True)
    results = Path(a.results)
    results.mkdir(parents=True, exist_ok=True)
    date = time.strftime("%Y-%m-%d")
    report = results / f"gpu-{date}{'-tiny' if a.tiny else ''}.md"
    if a.tiny:  # 30 training and 10 test images per class
        train_tar = slice_archive(train_tar, work / "train.tar.gz", 30)
        test_tar = slice_archive(test_tar, work / "test.tar.gz", 10)
    cores = os.cpu_count() or 1
    workers = a.workers or (1 if a.tiny else max(1, min(12, cores - 4)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if a.tiny:
        env.setdefault("OMP_NUM_THREADS", "1")
    py = sys.executable
    plain, npcs, runs = work / "plain", work / "npcs", work / "runs"
    # tiny: narrow networks, two epochs; GPU: the recipe as it is
    net = ["--width", "8", "--batch-size", "32", "--epochs", "2", "--eval-every", "1"] if a.tiny else []
    if a.epochs:
        net += ["--epochs", str(a.epochs)]
    common = ["--device", device, "-q"]
    shard = ["--shard-size", "100" if a.tiny else "2000"]  # enough shard files for every streaming worker
    s = {
        "prepare": Step("prepare", "plain and NP+CS (independent keys) shards, ppdata CLI, both at once",
                        [[py, "-m", "ppdata", "-q", "encrypt", "folder", str(train_tar), str(test_tar), "--plain",
                          *shard, "--out", str(plain)],
                         [py, "-m", "ppdata", "-q", "encrypt", "folder", str(train_tar), str(test_tar), "--cs",
                          *shard, "--out", str(npcs)]], 120, 30),
        "train-plain": Step("train-plain", "fast recipe on plain shards: plain Q",
                            [py, "-m", "train.resnet", str(plain), "--profile", "fast", *net,
                             "--out", str(runs / "plain"), *common], 150, 60),
        "train-npcs-fold": Step("train-npcs-fold", "fast recipe on NP+CS, fold input: Enc(Q), plain Q",
                                [py, "-m", "train.resnet", str(npcs), "--profile", "fast", "--input", "fold", *net,
                                 "--eval", f"plain={plain}", "--out", str(runs / "npcs-fold"), *common], 150, 60),
        "cpu-recipe": Step("cpu-recipe", "CPU recipe (AirNet) on NP+CS, fold input: Enc(Q), plain Q; compare "
                           "docs/results/cifar10-cpu",
                           [py, "-m", "train.resnet", str(npcs), "--profile", "cpu",
                            *(["--widths", "8,16,16", "--epochs", "2", "--batch-size", "32"] if a.tiny else []),
                            "--eval", f"plain={plain}", "--out", str(runs / "cpu-recipe"), *common], 120, 40),
        "ddp-smoke": Step("ddp-smoke", "torchrun, 1 process: DDP path, streaming loader, one short epoch",
                          [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                           "-m", "train.resnet", str(npcs), "--profile", "smoke", "--data", "stream",
                           "--workers", str(workers), "--input", "fold", "--eval", f"plain={plain}",
                           *(["--width", "4", "--batch-size", "16"] if a.tiny else ["--batch-size", "512"]),
                           "--out", str(runs / "ddp"), *common], 90, 30),
        "feed": Step("feed", "streaming loader's feed ratio (bench/train.py --feed)",
                     [py, "bench/train.py", "--feed", "--shards", str(npcs), "--device", device,
                      "--workers", str(workers), "--json", str(work / "feed.json"),
                      *(["--width", "8", "--batch-size", "32", "--epochs", "1"] if a.tiny else ["--epochs", "2"])],
                     90, 30),
        "compile": Step("compile", "fast recipe with --compile, two epochs (compilation in the warm-up)",
                        [py, "-m", "train.resnet", str(npcs), "--profile", "fast", "--compile", "--epochs", "2",
                         "--eval-every", "1", "--out", str(runs / "compile"), *common], 150, 120),
    }
    if a.no_compile or a.tiny:
        s["compile"].status, s["compile"].note = "skipped", (
            "--no-compile" if a.no_compile else "tiny: inductor takes ~90 s to compile ResNet-18 on 2 CPU cores")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    info = {"date": date, "tiny": a.tiny, "card": describe(device).get("gpu") if device == "cuda" else None,
            "machine": summary(describe(device)), "machine_detail": describe(device), "commit": commit,
            "command": "python scripts/gpu_check.py " + shown(sys.argv[1:] if argv is None else argv),
            "data": f"{train_tar.name}, {test_tar.name} from {Path(a.data).name}" + (" (sliced: 30/10 per class)"
                                                                                  if a.tiny else ""),
            "budget": a.budget, "elapsed": 0.0, "finished": False, "workers": workers}

    def save():
        info["elapsed"] = time.perf_counter() - t0
        write_report(report, info, s, a.tiny)

    save()
    for step in s.values():
        if step.status == "skipped":
            continue
        if step.name != "prepare" and s["prepare"].status != "ok":
            step.status, step.note = "skipped", "its shards were not prepared"
            save()
            continue
        left = deadline - time.perf_counter()
        if left < step.minimum:
            step.status, step.note = "skipped", f"budget: {max(0, left):.0f} s left, needs {step.minimum:.0f} s"
            save()
            continue
        print(f"gpu-check: {step.name} (limit {min(step.limit, left):.0f} s) ...", file=sys.stderr, flush=True)
        run_step(step, work / "logs" / f"{step.name}.log", env, min(step.limit, left))
        if step.name.startswith("train") or step.name in ("cpu-recipe", "ddp-smoke", "compile"):
            step.result.update(run_metrics(runs / {"train-plain": "plain", "train-npcs-fold": "npcs-fold",
                                                   "cpu-recipe": "cpu-recipe", "ddp-smoke": "ddp",
                                                   "compile": "compile"}[step.name]))
        if step.name == "feed" and (work / "feed.json").exists():
            step.result.update(json.loads((work / "feed.json").read_text()))
        if step.name == "prepare" and step.status == "ok":
            step.result["shards"] = {d.name: json.loads((d / "manifest.json").read_text())["splits"]["train"]["count"]
                                     for d in (plain, npcs)}
        print(f"gpu-check: {step.name} {step.status} in {step.seconds:.1f} s", file=sys.stderr, flush=True)
        save()
    info["finished"] = True
    save()
    print(report.read_text())
    print(f"gpu-check: report {report} and {report.with_suffix('.json')}", file=sys.stderr)
    return 0 if all(st.status in ("ok", "skipped") for st in s.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
