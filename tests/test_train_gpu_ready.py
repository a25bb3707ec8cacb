"""train before its first GPU run: the multi-process and timing problems of the loop, and the
CUDA-only settings (bf16 autocast, channels_last, fused SGD, torch.compile) exercised on CPU.

Each test names the problem it guards (numbers as in docs/train.md, "Checked on CPU").
"""
# ruff: noqa: F811  (the fixtures of test_train are imported by name, then requested as arguments)
from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ppdata.shards import open_shards
from test_train import N_TRAIN, _interrupt_after, _make, folders, read_log, sample_arrays, tiny  # noqa: F401

from train import data as D
from train import classifier, config, cpu, fast, paper, runtime
from train.cli import run
from train.models import ResNet18

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# 1. the streaming pipeline pickles: workers start under spawn and forkserver


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_stream_workers_start_under_spawn_and_forkserver(folders, method):
    """Python 3.14 on Linux starts DataLoader workers with forkserver, macOS with spawn: both
    pickle the dataset, so no stage of the pipeline may be a local closure."""
    before = multiprocessing.get_start_method()
    multiprocessing.set_start_method(method, force=True)  # the platform default the DataLoader uses
    try:
        shards = open_shards(folders["npcs"], "train")
        loader = D.StreamLoader(shards, 4, torch.device("cpu"), seed=1, workers=1, group=2)
        n = sum(len(y) for _, y in loader.epoch(0))
        loader.close()
    finally:
        multiprocessing.set_start_method(before, force=True)
    assert n == len(loader) * 4 > 0


# ---------------------------------------------------------------------------------------------
# 2 and 3. DDP: one data-mode decision for all ranks; equal BatchNorm statistics at evaluation

DRIVER = r'''
import os, sys
import torch
from train import paper

spy_dir, rank = sys.argv[1], int(os.environ["RANK"])
if os.environ.get("SMALL_MEMORY_RANK") == str(rank):  # this process sees almost no free memory
    real_sysconf = os.sysconf
    os.sysconf = lambda name: 1 if name == "SC_AVPHYS_PAGES" else real_sysconf(name)
real_evaluate, calls = paper.evaluate, []

def spy(model, es, *a, **k):  # the BatchNorm statistics each process evaluates with
    torch.save({n: b.detach().cpu().clone() for n, b in model.named_buffers() if "running" in n},
               os.path.join(spy_dir, f"bn-{es.name}-{len(calls)}-rank{rank}.pt"))
    calls.append(1)
    return real_evaluate(model, es, *a, **k)

paper.evaluate = spy
from train.resnet import main
main(sys.argv[2:])
'''


def _torchrun(tmp_path: Path, folders, args: list[str], env: dict, nproc: int = 2):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    spy = tmp_path / "spy"
    spy.mkdir()
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(driver), str(spy), str(folders["npcs"]), "--profile", "smoke", "--width", "4", "--batch-size", "4",
           "--epochs", "2", "--workers", "1", "--eval", str(folders["plain"]), "--device", "cpu",
           "--out", str(out), "-q", *args]
    p = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env},
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text()), out, spy


def _bn_equal_on_every_rank(spy: Path, nproc: int = 2) -> int:
    """Number of evaluations checked; asserts each saw the same statistics on every rank."""
    files = sorted(spy.glob("bn-*-rank0.pt"))
    for f in files:
        a = torch.load(f)
        for r in range(1, nproc):
            b = torch.load(Path(str(f).replace("-rank0.pt", f"-rank{r}.pt")))
            assert a.keys() == b.keys() and len(a) > 0
            for k in a:
                assert torch.equal(a[k], b[k]), (f.name, k)
    return len(files)


@pytest.mark.slow  # three Python processes start torch: ~15 s each on a busy 2-core machine
@pytest.mark.parametrize("case", ["memory", "auto-stream"])
def test_ddp_two_gloo_processes(tmp_path, folders, case):
    """memory: the in-memory path. auto-stream: ``--data auto`` where rank 1 sees almost no free
    memory (problem 2): every rank must stream (one decision, from the smallest free memory),
    or they run different step counts and hang in an all-reduce. Both: every evaluation sees the
    same BatchNorm statistics on every rank (problem 3), and the checkpoint is every rank's."""
    env = {"SMALL_MEMORY_RANK": "1"} if case == "auto-stream" else {}
    m, out, spy = _torchrun(tmp_path, folders, ["--data", "memory" if case == "memory" else "auto"], env)
    assert _bn_equal_on_every_rank(spy) >= 4  # 2 epochs x (test, plain)
    assert m["world_size"] == 2 and m["ranks_in_sync"] is True and m["complete"] and m["effective"]["ddp"]
    assert m["effective"]["global_batch"] == 8
    # memory: 32 images / 2 processes / batch 4; stream: 4 shards (10, 10, 10, 2) dealt to 2 processes
    assert m["effective"]["data"] == ("memory" if case == "memory" else "stream")
    assert m["effective"]["steps_per_epoch"] == (4 if case == "memory" else 3)
    assert len(read_log(out)) == 2 and 0 <= m["eval"]["plain"]["final_acc"] <= 1


def test_sync_batchnorm_stats_is_a_no_op_without_ddp():
    model = ResNet18(width=4)
    model.train()(torch.randn(4, 3, 32, 32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runtime.sync_batchnorm_stats(model, runtime.Proc())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------------
# 4. resuming with an added or a removed evaluation set


def test_resume_with_an_added_evaluation_set(tmp_path, folders, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        _interrupt_after(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            run(tiny(epochs=2), folders["npcs"], out, [f"plain={folders['plain']}"], device="cpu", quiet=True)
    m = run(tiny(epochs=2), folders["npcs"], out, [f"plain={folders['plain']}", f"np={folders['np']}"],
            device="cpu", quiet=True, resume=True)
    assert m["complete"] and m["eval"]["np"]["final_epoch"] == 2 and m["eval"]["np"]["best_epoch"] == 2
    assert m["eval"]["plain"]["final_epoch"] == 2
    rows = read_log(out)
    assert [r["acc_np"] for r in rows][0] == "" and rows[1]["acc_np"] != "" and rows[0]["acc_plain"] != ""


def test_resume_with_a_removed_evaluation_set(tmp_path, folders, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        _interrupt_after(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            run(tiny(epochs=2), folders["npcs"], out, [f"plain={folders['plain']}", f"np={folders['np']}"],
                device="cpu", quiet=True)
    m = run(tiny(epochs=2), folders["npcs"], out, [f"plain={folders['plain']}"], device="cpu", quiet=True,
            resume=True)
    assert m["complete"] and set(m["eval"]) == {"test", "plain"}
    rows = read_log(out)
    assert rows[0]["acc_np"] != "" and rows[1]["acc_np"] == ""  # the removed set's column is kept
    assert rows[1]["acc_plain"] != ""


# ---------------------------------------------------------------------------------------------
# 5. bf16 autocast, channels_last, fused/foreach SGD and torch.compile on CPU


def _spy_model(monkeypatch) -> dict:
    """Record, from the model's first forward pass in training, the dtype of the logits and
    whether the first convolution saw a channels_last input."""
    seen: dict = {}
    real = classifier.make_model

    def logits(mod, inputs, out):
        seen.setdefault("dtype", out.dtype)

    def first_conv(mod, inputs):
        seen.setdefault("channels_last", inputs[0].is_contiguous(memory_format=torch.channels_last))

    def make(*a, **k):
        m = real(*a, **k)
        m.net.fc.register_forward_hook(logits)
        m.net.stem[0].register_forward_pre_hook(first_conv)
        return m

    for recipe in (paper, fast, cpu):  # each recipe builds its model with make_model
        monkeypatch.setattr(recipe, "make_model", make)
    return seen


@pytest.mark.parametrize("recipe", ["paper", "fast"])
def test_bf16_channels_last_and_fused_sgd_run_on_cpu(tmp_path, folders, monkeypatch, recipe):
    seen = _spy_model(monkeypatch)
    cfg = tiny(amp="bf16", channels_last=True)
    cfg.sgd = "fused"
    if recipe == "fast":
        cfg.recipe, cfg.ema, cfg.tta = "fast", 0.9, 1
    m = run(cfg, folders["npcs"], tmp_path / "r", device="cpu", quiet=True)
    assert m["effective"]["amp"] == "bf16" and m["effective"]["channels_last"] is True
    assert m["effective"]["sgd"] == "fused"
    assert seen == {"dtype": torch.bfloat16, "channels_last": True}
    assert np.isfinite(m["final_train_loss"]) and 0 <= m["eval"]["test"]["final_acc"] <= 1


def test_auto_settings_on_cpu(tmp_path, folders, monkeypatch):
    seen = _spy_model(monkeypatch)
    m = run(tiny(amp="auto", channels_last=None, sgd="auto"), folders["npcs"], tmp_path / "r", device="cpu",
            quiet=True)
    assert m["effective"]["amp"] == "off" and m["effective"]["channels_last"] is True
    assert m["effective"]["sgd"] == "foreach" and seen == {"dtype": torch.float32, "channels_last": True}
    k = runtime.Kernels.of(tiny(amp="auto", channels_last=None, sgd="auto"), torch.device("cuda"))
    assert (k.amp, k.channels_last, k.sgd) == (True, True, "fused")  # what a GPU gets


def test_no_channels_last_gives_the_network_nchw_input(tmp_path, folders, monkeypatch):
    seen = _spy_model(monkeypatch)
    m = run(tiny(channels_last=False), folders["npcs"], tmp_path / "r", device="cpu", quiet=True)
    assert m["effective"]["channels_last"] is False and seen["channels_last"] is False


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_implementations_take_the_same_steps(nesterov):
    """fused, foreach and the plain loop give the same parameters after a few steps (CPU)."""
    cfg = tiny(nesterov=nesterov, weight_decay=5e-4, norm_bias_decay=False)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    params = {}
    for impl in ("init", "plain", "foreach", "fused"):
        torch.manual_seed(0)
        model = ResNet18(width=8)
        if impl == "init":
            params[impl] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            continue
        opt = classifier.make_optimizer(cfg, model, impl)
        assert opt.defaults["fused"] is (True if impl == "fused" else None)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        params[impl] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.allclose(params["plain"], params["foreach"], atol=1e-6)
    assert torch.allclose(params["plain"], params["fused"], atol=1e-6)
    assert not torch.allclose(params["plain"], params["init"], atol=1e-4)  # the steps moved the weights


@pytest.mark.slow  # dynamo tracing and AOT autograd of ResNet-18: ~10 s each
@pytest.mark.parametrize("recipe", ["paper", "fast"])
def test_compile_runs_on_cpu(tmp_path, folders, monkeypatch, recipe):
    """--compile through dynamo and AOT autograd (the ``aot_eager`` backend: inductor's code
    generation takes about 90 s for this model on two CPU cores; docs/train.md)."""
    real = torch.compile
    compiled = []

    def compile_(model, **kw):
        compiled.append(type(model).__name__)
        return real(model, backend="aot_eager", **kw)

    monkeypatch.setattr(torch, "compile", compile_)
    extra = dict(recipe="fast", ema=0.9) if recipe == "fast" else {}
    m = run(tiny(compile=True, **extra), folders["npcs"], tmp_path / "r", device="cpu", quiet=True)
    torch._dynamo.reset()
    assert compiled == ["Classifier"] and m["effective"]["compile"] is True
    assert np.isfinite(m["final_train_loss"]) and m["prewarm_seconds"] > 0


# ---------------------------------------------------------------------------------------------
# 6. warm-up (autotuning, compilation) outside the clock


@pytest.mark.parametrize("recipe", ["paper", "fast"])
def test_warm_up_and_compilation_are_not_timed(tmp_path, folders, monkeypatch, recipe):
    """The first training step pays for cuDNN autotuning and compilation (here: a 2 s sleep);
    training seconds and images/s must not include it, and the run must be unchanged by it."""
    real, calls = classifier.train_step, []

    def first_step_slow(*a, **k):
        if not calls:
            time.sleep(2.0)
        calls.append(1)
        return real(*a, **k)

    extra = dict(recipe="fast", ema=0.9) if recipe == "fast" else {}
    with monkeypatch.context() as mp:
        for recipe in (paper, fast):
            mp.setattr(recipe, "train_step", first_step_slow)
        m = run(tiny(**extra), folders["npcs"], tmp_path / "r", device="cpu", quiet=True)
    assert m["train_seconds"] < 1.5 and m["images_per_s"] > N_TRAIN / 1.5
    assert m["prewarm_seconds"] >= 2.0
    ref = run(tiny(prewarm=0, **extra), folders["npcs"], tmp_path / "ref", device="cpu", quiet=True)
    assert len(calls) == len(read_log(tmp_path / "r")) * (N_TRAIN // 8) + 2  # 2 warm-up steps
    a = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # warm-up steps leave no trace
    assert m["final_train_loss"] == ref["final_train_loss"]


def test_clock_times_cpu_work():
    c = runtime.Clock(torch.device("cpu"))
    c.start()
    time.sleep(0.05)
    assert 0.04 < c.stop() < 1.0


# ---------------------------------------------------------------------------------------------
# 7. streaming: workers persist across epochs; HDF5 reads cover whole chunks


def test_stream_workers_persist_across_epochs(folders, tmp_path, monkeypatch):
    log = tmp_path / "pids"
    from ppdata.dataset import ShardIterableDataset

    real = ShardIterableDataset._read

    def read(self, *unit):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        yield from real(self, *unit)

    monkeypatch.setattr(ShardIterableDataset, "_read", read)  # forked workers inherit the patch
    before = multiprocessing.get_start_method()
    multiprocessing.set_start_method("fork", force=True)
    try:
        shards = open_shards(folders["npcs"], "train")
        loader = D.StreamLoader(shards, 4, torch.device("cpu"), seed=1, workers=2, group=2)
        orders = [[tuple(y.tolist()) for _, y in loader.epoch(e)] for e in range(3)]
        pids = set(log.read_text().split())
        assert len(pids) == 2 and os.getpid() not in {int(p) for p in pids}  # two workers, started once
        loader.close()
    finally:
        multiprocessing.set_start_method(before, force=True)
    assert orders[0] != orders[1] != orders[2]  # still a new shuffle every epoch
    # the same batches as fresh workers started at each epoch (what a resumed run sees)
    for e in (1, 2):
        fresh = D.StreamLoader(shards, 4, torch.device("cpu"), seed=1, workers=2, group=2)
        assert [tuple(y.tolist()) for _, y in fresh.epoch(e)] == orders[e]
        fresh.close()


def test_hdf5_stream_blocks_cover_whole_chunks(tmp_path, monkeypatch):
    import h5py

    from ppdata.cipher import get_scheme
    from ppdata.keys import KeyStream, secret_from_seed
    from ppdata.pipeline import encrypt
    from ppdata.sources import SampleSource

    d = tmp_path / "h5"
    encrypt(SampleSource(split="train"), d, scheme=get_scheme("pixel"), keys=KeyStream(secret_from_seed(1)),
            fmt="hdf5", seeded=True, progress=False)
    shards = open_shards(d, "train")
    with h5py.File(shards.paths[0]) as f:
        chunk = f["images"].chunks[0]
    assert 1 < chunk < len(shards)  # 341 images of 32x32x3 per ~1 MiB chunk; 500 images
    monkeypatch.setattr(D.StreamLoader, "H5_BLOCK", 200)  # not a multiple of the chunk
    loader = D.StreamLoader(shards, 8, torch.device("cpu"), workers=0)
    blocks = [(a, b) for _, a, b in loader.data.units()]
    assert all(a % chunk == 0 for a, _ in blocks) and blocks[-1][1] == len(shards)
    seen = sum(len(y) for _, y in loader.epoch(0))
    assert seen == len(loader) * 8 and len(loader) == sum((b - a) for a, b in blocks) // 8


# ---------------------------------------------------------------------------------------------
# 8. the declared torch floor has every feature used


def _floor(requirement: str) -> tuple[int, ...]:
    text = (REPO / "pyproject.toml").read_text()
    m = re.search(rf'"{requirement}>=([0-9.]+)', text)
    assert m, f"no {requirement} floor in pyproject.toml"
    return tuple(int(p) for p in m.group(1).split("."))


def test_torch_floor_covers_fused_sgd():
    """SGD(fused=True) arrived for CUDA in torch 2.3 and for CPU in 2.4 (pytorch#116585,
    #123629); torchvision 0.19 pairs with torch 2.4."""
    assert _floor("torch") >= (2, 4)
    assert _floor("torchvision") >= (0, 19)
    needs = [tuple(int(p) for p in v.split(".")) for v in config.TORCH_NEEDS.values()]
    assert (2, 4) in needs and _floor("torch") >= max(needs)
