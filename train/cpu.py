"""The CPU recipe: the best accuracy per minute of a small CPU on the whole CIFAR-10.

    python -m train.resnet SHARDS --profile cpu [--eval plain=PLAIN] [--epochs E] --out RUN

One file, top to bottom, after airbench94 (Keller Jordan, KellerJordan/cifar10-airbench),
adapted to a CPU. In order:

1. Data. The training split and every evaluation split are held in memory as NHWC uint8. An
   epoch is a permutation in batches of 256 (on a CPU a small batch costs little throughput and
   gives more steps per epoch). Flip: each image gets a random mirror in the first epoch and the
   opposite one in every later epoch (airbench's alternating flip); translation by up to 2 px
   with reflect fill. Both commute with the per-pixel cipher, so no key is needed.
2. Input. For NP and NP+CS shards (schemes ``pixel``, ``icip``) the key-free fold (as in every
   recipe: ``train.preprocess``); ``--input raw`` feeds the stored pixels. Per-channel
   normalisation from the training shards.
3. Network. ``train.models.AirNet`` (airbench94's: a fixed 2x2 whitening convolution whose
   filters are the eigenvectors of the covariance of the training images' 2x2 patches, computed
   here from the first 5,000 (normalised, folded) training images; three conv-pool-BN-GELU
   groups at widths 64/256/256; BatchNorm without learned scale; a scaled linear head).
4. Optimiser. SGD with Nesterov momentum 0.85 in airbench's decoupled form: ``--lr`` (11.5) and
   ``--weight-decay`` (0.0153) are per 1024 examples, the loss is summed over the batch, so the
   step per example does not depend on the batch size; BatchNorm biases learn 64x faster; the
   whitening bias learns for the first 30% of the steps only (airbench: 3 of 10 epochs); label smoothing 0.2.
5. Schedule. Per step: from 0.2x up to the peak at 23% of the steps (``--warmup``), then linear
   down to 0.07x at the end.
6. Lookahead. Every 5 steps the weights are pulled towards a slow copy, by a factor growing as
   0.95^5 * (t / T)^3 (airbench); at the end the weights are the slow copy.
7. Evaluation. Enc(Q) (the folder's test split) and every ``--eval`` folder (plain Q, ...), with
   test-time augmentation (``--tta``): the mean of the logits of each image and its mirror, each
   also shifted by one pixel up-left and down-right (reflect), weighted 1/2 unshifted, 1/4 each
   shifted (airbench's level 2).
8. Speed. Measured at the start, not assumed (``choose_kernels``): on a CPU with bf16 matrix
   units (AMX, AVX512-BF16) a few steps each of float32, bf16 autocast, and bf16 with the 3x3
   weight gradients as GEMMs (``train.models.conv3x3_weight_grad``: on some machines the
   convolution library's bf16 backward-weights kernel stalls), then the fastest (``--amp``
   narrows the choice; ``bench/results/cpu-recipe-speed-*``). NHWC; all cores as threads of one
   process; the foreach SGD step. The clock covers everything (loading, whitening, training,
   evaluation): ``seconds`` in metrics.json is what the user waits; ``cpu_seconds`` the process's CPU
   time; ``load_average`` the machine's 1/5/15-minute load at the start and the end (a run timed
   for a target runs alone: a load near the thread count).

Every setting is a ``Config`` field; ``PROFILE`` holds the recipe's values and each can be
overridden on the command line (``--epochs``, ``--lr``, ``--widths``, ``--no-tta``, ...).
The run folder is the one every recipe writes (``train.rundir``: log.csv, metrics.json,
checkpoint.pt with the final weights, ``--resume`` after an interruption).
"""
from __future__ import annotations

import copy
import os
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ppdata.errors import PpdataError
from ppdata.shards import open_shards

from . import data as D
from .augment import translate
from .classifier import make_model
from .config import Config, resolve, train_split_of
from .evaluation import eval_batch_size, eval_sets, logits_tta, scheme_text
from .models import count_parameters
from .preprocess import norm_stats
from .rundir import (CHECKPOINT, LOG, METRICS, atomic_json, atomic_save, check_resume, eval_summary, log_fields,
                     prepare_out, write_log)
from .runtime import cpu_has_bf16, describe_device, say_fn, setup_process, synthetic_batch, under_torchrun

PROFILE = dict(
    recipe="cpu", model="airnet", model_args={"widths": [64, 256, 256]},
    epochs=10, batch_size=256,
    lr=11.5, momentum=0.85, nesterov=True, weight_decay=0.0153,      # per 1024 examples (decoupled)
    schedule="onecycle", warmup=0.23, label_smoothing=0.2,
    lookahead=True, tta=2,
    flip=True, shift=2, fill="reflect", input="auto", norm="train",
    amp="auto", channels_last=True, sgd="foreach",
    data="memory", eval_every=0, checkpoint_every=1, eval_batch_size=1000, prewarm=0,
)
BIAS_SCALER = 64.0         # BatchNorm biases: lr x 64 (weight decay unscaled)
WHITEN_BIAS_FRACTION = 0.3  # the whitening bias learns for the first 30% of the steps, then stays
WHITEN_IMAGES = 5000       # training images whose 2x2 patches set the whitening filters
LOOKAHEAD_EVERY = 5        # steps between lookahead updates
LR_START, LR_END = 0.2, 0.07  # the schedule's multipliers at the first and the last step


def lr_factor(step: int, total: int, peak: float) -> float:
    """airbench's triangle: LR_START -> 1 at ``peak`` (fraction of steps) -> LR_END at the end."""
    up = int(total * peak)
    if step < up:
        f = step / up
        return LR_START * (1 - f) + f
    f = (step - up) / max(1, total - up)
    return (1 - f) + LR_END * f


def optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.SGD:
    """SGD in airbench's decoupled form (``cfg.lr``, ``cfg.weight_decay`` per 1024 examples, for a
    loss summed over the batch). Group 0: BatchNorm biases (lr x BIAS_SCALER); group 1: the rest.
    Each group's ``initial_lr`` is its peak; the schedule scales it."""
    kilostep = 1024 * (1 + 1 / (1 - cfg.momentum))
    lr = cfg.lr / kilostep
    wd = cfg.weight_decay * cfg.batch_size / kilostep
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    norm = [p for n, p in named if ".norm" in n]
    rest = [p for n, p in named if ".norm" not in n]
    groups = [dict(params=norm, lr=lr * BIAS_SCALER, weight_decay=wd / (lr * BIAS_SCALER)),
              dict(params=rest, lr=lr, weight_decay=wd / lr)]
    opt = torch.optim.SGD(groups, momentum=cfg.momentum, nesterov=cfg.nesterov, foreach=cfg.sgd != "plain")
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    return opt


class Lookahead:
    """A slow copy of the floating-point state (weights and BatchNorm statistics) that the
    weights are pulled back to: ``update(decay)`` sets slow = decay * slow + (1 - decay) * fast,
    then fast = slow."""

    def __init__(self, model: torch.nn.Module):
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, decay: float) -> None:
        state = model.state_dict()
        for k, s in self.slow.items():
            s.lerp_(state[k], 1 - decay)
            state[k].copy_(s)

    def state_dict(self) -> dict:
        return self.slow

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            self.slow[k].copy_(v)


def lookahead_decay(step: int, total: int) -> float:
    return 0.95 ** 5 * (step / total) ** 3


def flip_masks(n: int, seed: int) -> torch.Tensor:
    """The first epoch's random mirror of each of ``n`` training images (later epochs alternate)."""
    return torch.rand(n, generator=D.generator(torch.device("cpu"), seed, 0xF11B)) < 0.5  # the same on any device


def augment(x: torch.Tensor, flip: torch.Tensor | None, shift: int, fill: str, gen: torch.Generator) -> torch.Tensor:
    """Mirror the images of NHWC uint8 ``x`` where ``flip`` and translate each by up to ``shift`` px."""
    if flip is not None:
        x = torch.where(flip[:, None, None, None], x.flip(2), x)
    if shift:
        d = torch.randint(-shift, shift + 1, (2, len(x)), generator=gen, device=x.device)
        x = translate(x, d[0], d[1], fill)
    return x


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: D.Split, batch: int, amp: bool, tta: int) -> float:
    model.eval()
    correct = 0
    for x, y in D.eval_batches(split, eval_batch_size(batch, split.images.shape[1:3])):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = logits_tta(model, x.permute(0, 3, 1, 2), tta)
        correct += int((logits.argmax(1) == y).sum())
    return correct / max(1, len(split))


# what the CPU recipe can compute with: (name, bf16 autocast, how 3x3 weight gradients are computed)
KERNELS = {"float32": (False, "library"), "bf16": (True, "library"), "bf16+gemm": (True, "gemm")}
PREFERENCE = ("bf16", "bf16+gemm", "float32")
PROBE_MARGIN = 1.25


def kernel_candidates(cfg: Config, device: torch.device) -> list[str]:
    """The settings ``choose_kernels`` measures: ``--amp off`` float32 only, ``--amp bf16`` the two
    bf16 ones, ``auto`` all three on a CPU with bf16 matrix units (AMX, AVX512-BF16), else float32.
    On CUDA: bf16 unless ``--amp off`` (nothing to measure)."""
    if device.type == "cuda":
        return ["float32"] if cfg.amp == "off" else ["bf16"]
    if cfg.amp == "off":
        return ["float32"]
    if cfg.amp == "bf16":
        return ["bf16+gemm", "bf16"]
    return ["float32", "bf16+gemm", "bf16"] if cpu_has_bf16() else ["float32"]


def pick_kernels(rates: dict[str, float]) -> str:
    """The first of ``PREFERENCE`` whose measured images/s are within ``PROBE_MARGIN`` of the fastest."""
    top = max(rates.values())
    return next(k for k in PREFERENCE if k in rates and rates[k] * PROBE_MARGIN >= top)


def choose_kernels(model, opt, cfg: Config, shape, classes: int, device: torch.device, say) -> tuple[str, dict]:
    """Measure each candidate's training step (``kernel_candidates``) on a synthetic batch and
    return the first of ``PREFERENCE`` within ``PROBE_MARGIN`` of the fastest, and the images/s
    of each. A candidate stops after its first timed step
    once that step is 3x slower than the best so far. The model, optimiser and random state are
    restored afterwards: the run is as if nothing had happened. (Measured, not assumed: the same
    CPU model runs bf16 3-4x faster than float32 on one machine, and 5x slower on another, where
    one kernel of the convolution library stalls.)"""
    names = kernel_candidates(cfg, device)
    if len(names) == 1:
        return names[0], {}
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    x, y = synthetic_batch(shape, cfg.batch_size, classes, device, cfg.seed)
    rates: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):
        for name in names:
            amp, how = KERNELS[name]
            model.net.set_weight_grad(how)
            times = []
            for k in range(3):  # one warm-up step (kernel creation), two timed
                t = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = F.cross_entropy(model(x.permute(0, 3, 1, 2)).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                dt = time.perf_counter() - t
                if k:
                    times.append(dt)
                if rates and dt > 3 * cfg.batch_size / max(rates.values()):
                    times = times or [dt]
                    break
            rates[name] = cfg.batch_size / min(times)
    model.load_state_dict(saved_model)
    opt.load_state_dict(saved_opt)
    opt.zero_grad(set_to_none=True)
    # within MARGIN of the fastest, prefer the library's kernels (a few synthetic steps cannot tell
    # 5% apart, and over a whole run the GEMMs' extra copies cost 15-30% where the library is sound)
    best = pick_kernels(rates)
    say("kernels measured (images/s): " + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items()) + f"; using {best}")
    return best, {k: round(v, 1) for k, v in rates.items()}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(cfg: Config, shards_dir, out, eval_dirs=(), device: str = "auto", resume: bool = False,
        overwrite: bool = False, quiet: bool = False, command: str | None = None) -> dict:
    """Train ``cfg`` (``recipe="cpu"``) on ``shards_dir``; write and return the metrics. Built for a
    CPU (``device`` auto picks CUDA when there is one: the same maths, to compare with a GPU)."""
    t_start, c_start, load_start = time.perf_counter(), cpu_seconds(), os.getloadavg()
    cfg.check()
    if under_torchrun():
        raise PpdataError("the CPU recipe runs in one process; under torchrun use --profile paper")
    if cfg.data == "stream":
        raise PpdataError("--data stream: the CPU recipe keeps the data in memory")
    proc = setup_process(device)  # built for a CPU; on a GPU it runs the same maths (to compare)
    dev, say, out = proc.device, say_fn(quiet, proc), Path(out)

    # 1. data ------------------------------------------------------------------------------------
    cfg.train_split = train_split_of(cfg, shards_dir, say)
    train = open_shards(shards_dir, cfg.train_split)
    if not train.classes:
        raise PpdataError(f"{shards_dir}: the manifest lists no classes")
    resolve(cfg, train, str(shards_dir))
    evals = eval_sets(train, shards_dir, list(eval_dirs), cfg.test_split)
    ck = prepare_out(out, resume, overwrite)
    if ck is not None:
        check_resume(cfg, ck, train)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = D.load_split(train, dev)
    for es in evals:
        es.split = D.load_split(es.shards, dev)
    batches = D.DeviceLoader(data, cfg.batch_size, cfg.seed)
    base_flip = flip_masks(len(data), cfg.seed).to(dev) if cfg.flip else None

    # 2. input and normalisation -----------------------------------------------------------------
    sort = bool(train.scheme.get("cs")) and cfg.input == "fold"
    mean, std = (ck["norm"]["mean"], ck["norm"]["std"]) if ck else norm_stats(cfg.norm, data.images, cfg.input, sort)
    load_seconds = time.perf_counter() - t0

    # 3. network: whitening from the training images ------------------------------------------------
    torch.manual_seed(cfg.seed)
    model = make_model(cfg, len(train.classes), mean, std, sort, dev, cfg.channels_last is not False)
    if not hasattr(model.net, "init_whiten"):
        raise PpdataError(f"--model {cfg.model}: the CPU recipe trains airnet (its whitening layer)")
    if ck is None:  # whitening filters from what the network sees at the start (a resumed run has them)
        with torch.no_grad():
            model.eval()
            model.net.init_whiten(model.net_input(data.images[:WHITEN_IMAGES].permute(0, 3, 1, 2)).float())
    opt = optimizer(model, cfg)
    if ck is not None and ck.get("kernels") in KERNELS:  # a resumed run computes as it started
        kernels, probe = ck["kernels"], ck.get("kernel_probe", {})
    else:
        kernels, probe = choose_kernels(model, opt, cfg, train.shape, len(train.classes), dev, say)
    amp, weight_grad = KERNELS[kernels]
    model.net.set_weight_grad(weight_grad)
    look = Lookahead(model) if cfg.lookahead else None
    history: list[dict] = []
    start_epoch, prior = 0, {"seconds": 0.0, "cpu_seconds": 0.0}
    if ck is not None:
        model.load_state_dict(ck["live"])
        opt.load_state_dict(ck["optimizer"])
        if look is not None:
            look.load_state_dict(ck["lookahead"])
        history, start_epoch = ck["history"], ck["epoch"]
        prior = {"seconds": ck["seconds"], "cpu_seconds": ck.get("cpu_seconds", 0.0)}
    steps = len(batches)
    total = cfg.epochs * steps

    info = {
        "model": cfg.model, "params": count_parameters(model.net), "profile": cfg.profile, "recipe": "cpu",
        "command": command, "config": cfg.to_json(), "device": describe_device(proc), "world_size": 1,
        "torch": torch.__version__,
        "effective": {"amp": "bf16" if amp else "off", "kernels": kernels, "kernel_probe": probe,
                      "channels_last": cfg.channels_last is not False,
                      "threads": torch.get_num_threads(), "steps_per_epoch": steps, "global_batch": cfg.batch_size},
        "train": {"dir": str(train.directory), "split": train.split, "count": len(train), "format": train.format,
                  "scheme": train.scheme, "key_mode": train.key_mode, "manifest_id": train.manifest.get("id")},
        "input": {"mode": cfg.input, "sort": sort}, "norm": {"mode": cfg.norm, "mean": mean, "std": std},
        "augment": {"flip": "alternating" if cfg.flip else False, "shift": cfg.shift, "fill": cfg.fill},
        "lookahead": cfg.lookahead, "tta": cfg.tta,
    }
    fields = log_fields(evals, history)
    write_log(out / LOG, fields, history)
    say(f"cpu recipe: {cfg.model} {cfg.model_args.get('widths')} ({info['params']:,} parameters), {info['device']}, "
        f"{kernels}; {len(train):,} training images ({scheme_text(train)}), input "
        f"{cfg.input}, loaded in {load_seconds:.1f}s; eval on "
        + ", ".join(f"{es.name} ({len(es.shards):,})" for es in evals))

    def elapsed() -> dict:
        return {"seconds": prior["seconds"] + time.perf_counter() - t_start,
                "cpu_seconds": prior["cpu_seconds"] + cpu_seconds() - c_start}

    def metrics(complete: bool) -> dict:
        train_s = sum(h["train_seconds"] for h in history)
        seen = len(history) * steps * cfg.batch_size
        return {**info, "complete": complete, "epochs_done": len(history), **elapsed(),
                "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
                "load_seconds": load_seconds, "train_seconds": train_s,
                "images_per_s": seen / train_s if train_s else None,
                "final_train_loss": history[-1]["train_loss"] if history else None,
                "final_train_acc": history[-1]["train_acc"] if history else None,
                "eval": eval_summary(evals, history)}

    def save_checkpoint(epoch: int) -> None:
        atomic_save({"config": cfg.to_json(), "epoch": epoch, "model": model.state_dict(),
                        "live": model.state_dict(), "lookahead": look.state_dict() if look else None,
                        "optimizer": opt.state_dict(), "history": history, "norm": {"mean": mean, "std": std},
                        "train": info["train"], "kernels": kernels, "kernel_probe": probe, **elapsed()},
                       out / CHECKPOINT)

    # 4. train -------------------------------------------------------------------------------------
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t_epoch = time.perf_counter()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        gen = D.generator(dev, cfg.seed, epoch, 0, 7)
        idx = batches.indices(epoch)
        flips = None if base_flip is None else base_flip ^ bool(epoch % 2)
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, file=sys.stderr,
                   disable=quiet, mininterval=1.0, unit="batch")
        for i in range(steps):
            n_step = epoch * steps + i
            model.net.whiten_bias_grad = n_step < WHITEN_BIAS_FRACTION * total
            j = idx[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            x = augment(data.images[j], None if flips is None else flips[j], cfg.shift, cfg.fill, gen)
            y = data.labels[j]
            f = lr_factor(n_step, total, cfg.warmup)
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * f
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x.permute(0, 3, 1, 2))
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing, reduction="sum")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if look is not None and (n_step + 1) % LOOKAHEAD_EVERY == 0:
                look.update(model, lookahead_decay(n_step + 1, total))
            loss_sum += loss.detach()  # summed on the device: no host synchronisation per step
            correct += (logits.argmax(1) == y).sum()
            bar.update(1)
        bar.close()
        last = epoch + 1 == cfg.epochs
        if last and look is not None:
            look.update(model, 1.0)  # the final weights are the slow copy
        train_s = time.perf_counter() - t_epoch
        n = steps * cfg.batch_size
        row = {"epoch": epoch + 1, "lr": opt.param_groups[1]["lr"], "train_loss": loss_sum.item() / n,
               "train_acc": correct.item() / n, "train_seconds": train_s, "images_per_s": n / train_s}
        for es in evals:
            due = last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0)
            row[f"acc_{es.name}"] = evaluate(model, es.split, cfg.eval_batch_size, amp, cfg.tta if last else 0) \
                if due else ""
        row["elapsed_seconds"] = elapsed()["seconds"]
        history.append(row)
        write_log(out / LOG, fields, history)
        if last or (epoch + 1) % max(1, cfg.checkpoint_every) == 0:
            save_checkpoint(epoch + 1)
        atomic_json(out / METRICS, metrics(False))
        accs = "  ".join(f"{es.name} {row[f'acc_{es.name}']:.2%}" for es in evals if row[f"acc_{es.name}"] != "")
        say(f"epoch {epoch + 1:3d}/{cfg.epochs}  loss {row['train_loss']:.4f}  train {row['train_acc']:.2%}  "
            f"{accs}  {train_s:.1f}s ({row['images_per_s']:,.0f} img/s)")

    result = metrics(True)
    atomic_json(out / METRICS, result)
    say(f"done in {result['seconds']:.1f}s ({result['train_seconds']:.1f}s training, {result['cpu_seconds']:.0f} "
        f"CPU-s): " + ", ".join(f"{k} {v['final_acc']:.2%}" for k, v in result["eval"].items()
                                if v["final_acc"] is not None) + f"; {out / METRICS}")
    return result
