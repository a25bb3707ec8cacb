"""The paper's recipe: SGD with momentum on a step schedule (or one-cycle), any number of
processes, data in memory or streamed. ``python -m train.resnet`` / ``train.densenet`` with
``--profile paper`` (the paper's schedules) or ``--profile smoke``.

``run(cfg, shards_dir, ...)`` trains on the folder's ``train`` split (or the expansion that
``ppdata augment`` added), evaluates every epoch on its ``test`` split (Enc(Q), whatever key mode
wrote it) and on each extra evaluation folder (plain Q, same-key Enc(Q), ...), and writes the
run folder (``train.rundir``: log.csv, metrics.json, checkpoint.pt; ``resume=True`` continues).

The learning rate is set per step (``config.lr_at``). A few throwaway steps before the clock
starts (``runtime.prewarm``) absorb cuDNN autotuning and compilation; epochs are timed with CUDA
events on a GPU. Under ``torchrun`` (any number of processes, one included) the model is
wrapped in DistributedDataParallel (NCCL on CUDA, gloo on CPU); rank 0 writes all files.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ppdata.errors import PpdataError
from ppdata.shards import open_shards

from . import data as D
from .augment import Augment
from .classifier import make_model, make_optimizer, set_lr, train_step
from .config import Config, expansion_next_to, lr_at, resolve, train_split_of
from .evaluation import EvalSet, eval_sets, evaluate, scheme_text
from .models import count_parameters
from .preprocess import norm_stats
from .rundir import (CHECKPOINT, LOG, METRICS, atomic_json, atomic_save, check_resume, eval_summary, log_fields,
                     prepare_out, write_log)
from .runtime import (Clock, Kernels, all_sum, choose_data_mode, cpu_estimate, describe_device, prewarm,
                      ranks_in_sync, say_fn, setup_process, sync_batchnorm_stats, synthetic_batch)

ESTIMATE_AFTER = 5  # training steps timed before a CPU run says how long it will take


def run(cfg: Config, shards_dir: str | os.PathLike, out: str | os.PathLike, eval_dirs: list[str] = (),
        device: str = "auto", resume: bool = False, overwrite: bool = False, quiet: bool = False,
        command: str | None = None) -> dict:
    """Train ``cfg`` on ``shards_dir`` and write the run folder ``out``; returns the metrics (rank 0).

    ``command``: the command line, recorded in metrics.json."""
    t_start = time.perf_counter()
    cfg.check()
    proc = setup_process(device)
    kern = Kernels.of(cfg, proc.device)
    out = Path(out)
    say = say_fn(quiet, proc)

    cfg.train_split = train_split_of(cfg, shards_dir, say)
    train = open_shards(shards_dir, cfg.train_split)
    if not train.classes:
        raise PpdataError(f"{shards_dir}: the manifest lists no classes")
    resolve(cfg, train, str(shards_dir))
    if not train.augment and not (cfg.flip or cfg.shift):
        hint = expansion_next_to(Path(shards_dir))
        say(f"note: {shards_dir} is not expanded and this profile does no on-device flip/shift"
            + (f"; {hint} holds an expansion of it (ppdata augment): train on that" if hint else
               "; expand it with `ppdata augment` or pass --augment"))
    evals = eval_sets(train, shards_dir, list(eval_dirs), cfg.test_split)
    ck = prepare_out(out, resume, overwrite)
    if ck is not None:
        check_resume(cfg, ck, train)
    if proc.ddp:
        dist.barrier()  # every process has checked the folder before rank 0 writes to it
    if proc.main:
        out.mkdir(parents=True, exist_ok=True)
    sort = bool(train.scheme.get("cs")) and cfg.input == "fold"

    # data
    t0 = time.perf_counter()
    mode = choose_data_mode(cfg, train, proc)
    if mode == "memory":
        tsplit = D.load_split(train, proc.device)
        loader = D.DeviceLoader(tsplit, cfg.batch_size, cfg.seed, proc.rank, proc.world)
        stat_images = tsplit.images
    else:
        loader = D.StreamLoader(train, cfg.batch_size, proc.device, cfg.seed, proc.rank, proc.world,
                                cfg.workers, cfg.stream_group)
        stat_images = None
    for es in evals:
        es.split = D.load_split(es.shards, proc.device)
    if ck is not None:
        mean, std = ck["norm"]["mean"], ck["norm"]["std"]
    else:
        if stat_images is None and cfg.norm == "train":
            stat_images = D.head_images(train)
        mean, std = norm_stats(cfg.norm, stat_images, cfg.input, sort)
    del stat_images
    load_seconds = time.perf_counter() - t0
    augment = Augment(cfg.flip, cfg.shift, cfg.fill)

    # model and optimiser
    torch.manual_seed(cfg.seed)  # the initial weights (DDP then broadcasts rank 0's)
    model = make_model(cfg, len(train.classes), mean, std, sort, proc.device, kern.channels_last)
    net = model.net
    opt = make_optimizer(cfg, model, kern.sgd)
    history: list[dict] = []
    start_epoch, prior_seconds = 0, 0.0
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        history, start_epoch, prior_seconds = ck["history"], ck["epoch"], ck["seconds"]
    step_model = model
    if proc.ddp:
        cuda_ids = [proc.device.index] if proc.device.type == "cuda" else None
        step_model = nn.parallel.DistributedDataParallel(model, device_ids=cuda_ids)
    if cfg.compile:
        step_model = torch.compile(step_model)
    steps = len(loader)

    info = {
        "model": cfg.model, "params": count_parameters(net), "profile": cfg.profile, "recipe": "paper",
        "command": command, "config": cfg.to_json(),
        "device": describe_device(proc), "world_size": proc.world, "torch": torch.__version__,
        "effective": {**kern.describe(), "compile": cfg.compile, "data": mode, "ddp": proc.ddp,
                      "steps_per_epoch": steps, "global_batch": cfg.batch_size * proc.world},
        "train": {"dir": str(train.directory), "split": train.split, "count": len(train), "format": train.format,
                  "scheme": train.scheme, "key_mode": train.key_mode, "manifest_id": train.manifest.get("id")},
        "input": {"mode": cfg.input, "sort": sort}, "norm": {"mode": cfg.norm, "mean": mean, "std": std},
        "adapt": ({"name": cfg.adapt, "args": cfg.adapt_args, "params": count_parameters(model.adapt)}
                  if model.adapt is not None else None),
        "augment": augment.describe(),
    }
    fields = log_fields(evals, history)
    if proc.main:
        write_log(out / LOG, fields, history)
    adapt_text = f" behind adaptation network {cfg.adapt} ({info['adapt']['params']:,})" if info["adapt"] else ""
    say(f"{cfg.model} ({info['params']:,} parameters){adapt_text}, profile {cfg.profile}, {info['device']}"
        f"{f' x{proc.world}' if proc.world > 1 else ''}; train {len(train):,} images ({train.format}, "
        f"{scheme_text(train)}), {mode} loading in {load_seconds:.1f}s; eval on "
        + ", ".join(f"{es.name} ({len(es.shards):,}, {scheme_text(es.shards)})" for es in evals)
        + (f"; resuming after epoch {start_epoch}" if ck is not None else ""))

    # warm-up outside the clock: the first steps autotune cuDNN and compile; workers start
    prewarm_seconds = 0.0
    if start_epoch < cfg.epochs:
        if isinstance(loader, D.StreamLoader):
            loader.prefetch(start_epoch)
        wx, wy = synthetic_batch(train.shape, cfg.batch_size, len(train.classes), proc.device, cfg.seed)
        wgen = D.generator(proc.device, cfg.seed, 0xC0FFEE)
        prewarm_seconds = prewarm(
            cfg.prewarm, model, opt,
            lambda: train_step(step_model, opt, wx, wy, augment, wgen, kern.amp, cfg.label_smoothing),
            lambda: evaluate(model, EvalSet("warm-up", train, D.Split(train, wx[: cfg.eval_batch_size],
                                                                       wy[: cfg.eval_batch_size])),
                             cfg, proc, kern.amp) if evals else None)

    def metrics(complete: bool) -> dict:
        m = dict(info)
        train_s = sum(h["train_seconds"] for h in history)
        seen = len(history) * steps * cfg.batch_size * proc.world
        m.update(complete=complete, epochs_done=len(history),
                 seconds=prior_seconds + time.perf_counter() - t_start, load_seconds=load_seconds,
                 prewarm_seconds=prewarm_seconds, train_seconds=train_s,
                 images_per_s=seen / train_s if train_s else None,
                 final_train_loss=history[-1]["train_loss"] if history else None,
                 final_train_acc=history[-1]["train_acc"] if history else None)
        m["eval"] = eval_summary(evals, history)
        return m

    def save_checkpoint(epoch: int) -> None:
        atomic_save({"config": cfg.to_json(), "epoch": epoch, "model": model.state_dict(),
                      "optimizer": opt.state_dict(), "history": history, "norm": {"mean": mean, "std": std},
                      "train": info["train"], "seconds": prior_seconds + time.perf_counter() - t_start},
                     out / CHECKPOINT)

    clock = Clock(proc.device)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            step_model.train()
            clock.start()
            loss_sum = torch.zeros((), device=proc.device)
            correct = torch.zeros((), dtype=torch.int64, device=proc.device)
            gen = D.generator(proc.device, cfg.seed, epoch, proc.rank, 7)
            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, file=sys.stderr,
                       disable=quiet or not proc.main, mininterval=1.0, unit="batch")
            for i, (x, y) in enumerate(loader.epoch(epoch)):
                lr = lr_at(cfg, epoch * steps + i, steps)
                set_lr(opt, lr)
                loss, logits = train_step(step_model, opt, x, y, augment, gen, kern.amp, cfg.label_smoothing)
                loss_sum += loss.float() * len(y)
                correct += (logits.argmax(1) == y).sum()
                bar.update(1)
                if epoch == start_epoch and i + 1 == ESTIMATE_AFTER and proc.device.type == "cpu":
                    say(cpu_estimate(cfg, clock.elapsed() / ESTIMATE_AFTER, steps,
                                     cfg.epochs - start_epoch))
            bar.close()
            sums = all_sum(proc, torch.stack([loss_sum.double(), correct.double()]))
            train_s = clock.stop()
            sync_batchnorm_stats(model, proc)
            n = steps * cfg.batch_size * proc.world
            row = {"epoch": epoch + 1, "lr": lr, "train_loss": sums[0].item() / n, "train_acc": sums[1].item() / n,
                   "train_seconds": train_s, "images_per_s": n / train_s}
            last = epoch + 1 == cfg.epochs
            for es in evals:
                do = last or (epoch + 1) % max(1, cfg.eval_every) == 0
                row[f"acc_{es.name}"] = evaluate(model, es, cfg, proc, kern.amp) if do else ""
            row["elapsed_seconds"] = prior_seconds + time.perf_counter() - t_start
            history.append(row)
            if proc.main:
                write_log(out / LOG, fields, history)
                if last or (epoch + 1) % max(1, cfg.checkpoint_every) == 0:
                    save_checkpoint(epoch + 1)
                atomic_json(out / METRICS, metrics(False))
            accs = "  ".join(f"{es.name} {row[f'acc_{es.name}']:.2%}" for es in evals if row[f"acc_{es.name}"] != "")
            say(f"epoch {epoch + 1:3d}/{cfg.epochs}  loss {row['train_loss']:.4f}  train {row['train_acc']:.2%}  "
                f"{accs}  lr {lr:.4g}  {train_s:.1f}s ({row['images_per_s']:,.0f} img/s)")
    finally:
        if isinstance(loader, D.StreamLoader):
            loader.close()

    result = metrics(True)
    if proc.ddp:
        result["ranks_in_sync"] = ranks_in_sync(model, proc)
    if proc.main:
        atomic_json(out / METRICS, result)
        say(f"done in {result['seconds']:.1f}s: " + ", ".join(
            f"{k} final {v['final_acc']:.2%} best {v['best_acc']:.2%}" for k, v in result["eval"].items()
            if v["final_acc"] is not None) + f"; {out / METRICS}")
    if proc.ddp:
        dist.barrier()
        dist.destroy_process_group()
    return result
