"""The fast recipe: ResNet-18 (or DenseNet-40-12) on ppdata shards in minutes on one GPU.

    python -m train.resnet SHARDS --profile fast [--eval plain=PLAIN] [--input raw] --out RUN

One file, top to bottom, in the spirit of airbench (KellerJordan/cifar10-airbench): the data
lives on the device and nothing inside an epoch waits for the host. In order:

1. Data. The training split and every evaluation split are loaded once onto the device as NHWC
   uint8. An epoch is a permutation; each batch is flipped left-right (p = 1/2) and shifted by up
   to 4 px with reflect fill, in batch, on the device. Both commute with the per-pixel cipher
   (flipping Enc(x) is Enc'(flip(x)) under the flipped key), so no key is needed.
2. Input. For NP and NP+CS shards (schemes ``pixel``, ``icip``) the key-free fold: min(e, 255 - e)
   per channel, channels sorted per pixel under CS. The network then sees the same image for
   Enc(x) under any key and for x. ``--input raw`` feeds the stored pixels. Per-channel
   normalisation from the training shards (the server computes it; no plain statistics).
3. Network and optimiser. SGD, Nesterov momentum 0.9, batch 512, weight decay 5e-4 on the
   weights and none on BatchNorm parameters and biases; label smoothing 0.1.
4. Schedule. One-cycle: linear warm-up over the first 20% of steps to lr 0.4, linear decay to 0.
5. EMA. An exponential moving average of the weights and BatchNorm statistics (decay 0.99 per
   step, applied every 5 steps: ``torch.optim.swa_utils.AveragedModel``) is the model that is
   evaluated and saved. Its decay warms up, min(0.99^5, (1 + u) / (10 + u)) at update u (as
   TensorFlow's and timm's EMAs do), so that in a short run it does not lag behind the weights.
6. Evaluation. Enc(Q) (the folder's test split) and every ``--eval`` folder (plain Q, ...), with
   flip test-time augmentation: the mean of the logits of each image and its mirror.
7. Speed. On CUDA: bf16 autocast, channels_last, the fused SGD step, cuDNN autotuning; optional
   ``--compile``. A few throwaway steps and one evaluation run before the clock starts (the
   model, optimiser and generators are restored after them), so autotuning and compilation are
   not timed; training epochs are timed with CUDA events.

Every setting is a ``Config`` field: ``PROFILE`` below holds the recipe's values and each can be
overridden on the command line (``--epochs``, ``--lr``, ``--ema``, ``--no-tta``, ...). The run
folder is the one every recipe writes (``train.rundir``: log.csv, metrics.json, checkpoint.pt
with the EMA weights, so ``train.classifier.load_model`` returns the evaluated model); ``metrics.json`` adds
``fast.variants``: the final accuracy of the live and the EMA weights, with and without TTA.
One process, one device: under torchrun use the paper recipe (``train.paper``).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from ppdata.errors import PpdataError
from ppdata.shards import open_shards

from . import data as D
from .augment import Augment
from .classifier import make_model, make_optimizer, set_lr, train_step
from .config import Config, lr_at, resolve, train_split_of
from .evaluation import EvalSet, eval_sets, evaluate, scheme_text
from .models import count_parameters
from .preprocess import norm_stats
from .rundir import (CHECKPOINT, LOG, METRICS, atomic_json, atomic_save, check_resume, eval_summary, log_fields,
                     prepare_out, write_log)
from .runtime import Clock, Kernels, describe_device, prewarm, say_fn, setup_process, synthetic_batch, under_torchrun

PROFILE = dict(
    recipe="fast", epochs=40, batch_size=512,                         # 2M training images seen
    lr=0.4, schedule="onecycle", warmup=0.2,                          # one-cycle, peak 0.4 at 20%
    momentum=0.9, nesterov=True, weight_decay=5e-4, norm_bias_decay=False,
    label_smoothing=0.1, ema=0.99, tta=1,
    flip=True, shift=4, fill="reflect", input="auto", norm="train",   # fold for NP / NP+CS shards
    amp="auto", channels_last=None, sgd="auto",                       # bf16, fused on CUDA; NHWC
    data="memory", eval_every=10, checkpoint_every=10, eval_batch_size=2000,
)
EMA_EVERY = 5  # steps between EMA updates


def run(cfg: Config, shards_dir, out, eval_dirs=(), device: str = "auto", resume: bool = False,
        overwrite: bool = False, quiet: bool = False, command: str | None = None) -> dict:
    """Train ``cfg`` (``recipe="fast"``) on ``shards_dir``; write and return the metrics."""
    t_start = time.perf_counter()
    cfg.check()
    if cfg.data == "stream":
        raise PpdataError("--data stream: the fast recipe keeps the data on the device; stream with another "
                          "profile (--profile paper or smoke, or your own options)")
    if under_torchrun():
        raise PpdataError("the fast recipe runs in one process on one device; under torchrun use another "
                          "profile (--profile paper or smoke, or your own options)")
    proc = setup_process(device)
    dev, kern, say, out = proc.device, Kernels.of(cfg, proc.device), say_fn(quiet, proc), Path(out)

    # 1. data: every split on the device, once ------------------------------------------------
    cfg.train_split = train_split_of(cfg, shards_dir, say)
    train = open_shards(shards_dir, cfg.train_split)
    if not train.classes:
        raise PpdataError(f"{shards_dir}: the manifest lists no classes")
    resolve(cfg, train, str(shards_dir))  # --input auto -> fold or raw; --adapt auto -> a network
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
    augment = Augment(cfg.flip, cfg.shift, cfg.fill)  # flip + shift, on the device, per batch

    # 2. input and normalisation ----------------------------------------------------------------
    sort = bool(train.scheme.get("cs")) and cfg.input == "fold"
    mean, std = (ck["norm"]["mean"], ck["norm"]["std"]) if ck else norm_stats(cfg.norm, data.images, cfg.input, sort)
    load_seconds = time.perf_counter() - t0

    # 3. network, EMA, optimiser ----------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    model = make_model(cfg, len(train.classes), mean, std, sort, dev, kern.channels_last)
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema ** EMA_EVERY), use_buffers=True)
           if cfg.ema else None)
    opt = make_optimizer(cfg, model, kern.sgd)  # no weight decay on BatchNorm and biases
    history: list[dict] = []
    start_epoch, prior_seconds = 0, 0.0
    if ck is not None:
        model.load_state_dict(ck["live"])
        opt.load_state_dict(ck["optimizer"])
        if ema is not None:
            ema.load_state_dict(ck["ema"])
        history, start_epoch, prior_seconds = ck["history"], ck["epoch"], ck["seconds"]
    step_model = torch.compile(model) if cfg.compile else model
    steps = len(batches)

    def evaluated() -> torch.nn.Module:
        return ema.module if ema is not None else model

    def step(x, y, lr: float, gen):
        set_lr(opt, lr)
        return train_step(step_model, opt, x, y, augment, gen, kern.amp, cfg.label_smoothing)

    info = {
        "model": cfg.model, "params": count_parameters(model.net), "profile": cfg.profile, "recipe": "fast",
        "command": command, "config": cfg.to_json(), "device": describe_device(proc), "world_size": 1,
        "torch": torch.__version__,
        "effective": {**kern.describe(), "compile": cfg.compile, "data": "memory", "ddp": False,
                      "steps_per_epoch": steps, "global_batch": cfg.batch_size},
        "train": {"dir": str(train.directory), "split": train.split, "count": len(train), "format": train.format,
                  "scheme": train.scheme, "key_mode": train.key_mode, "manifest_id": train.manifest.get("id")},
        "input": {"mode": cfg.input, "sort": sort}, "norm": {"mode": cfg.norm, "mean": mean, "std": std},
        "adapt": ({"name": cfg.adapt, "args": cfg.adapt_args, "params": count_parameters(model.adapt)}
                  if model.adapt is not None else None),
        "augment": augment.describe(), "ema": {"decay_per_step": cfg.ema, "every": EMA_EVERY}, "tta": cfg.tta,
    }
    fields = log_fields(evals, history)
    write_log(out / LOG, fields, history)
    say(f"fast recipe: {cfg.model} ({info['params']:,} parameters), {info['device']}; {len(train):,} "
        f"training images ({scheme_text(train)}), input {cfg.input}, on the device in {load_seconds:.1f}s; "
        f"{kern.describe()}; eval on " + ", ".join(f"{es.name} ({len(es.shards):,})" for es in evals))

    # 4. warm-up outside the clock (cuDNN autotuning, compilation); state restored after -----------
    prewarm_seconds = 0.0
    if start_epoch < cfg.epochs:
        wx, wy = synthetic_batch(train.shape, cfg.batch_size, len(train.classes), dev, cfg.seed)
        wgen = D.generator(dev, cfg.seed, 0xC0FFEE)
        warm_eval = EvalSet("warm-up", train, D.Split(train, wx, wy))
        prewarm_seconds = prewarm(cfg.prewarm, model, opt, lambda: step(wx, wy, cfg.lr, wgen),
                                    lambda: evaluate(model, warm_eval, cfg, proc, kern.amp, cfg.tta))

    def metrics(complete: bool) -> dict:
        train_s = sum(h["train_seconds"] for h in history)
        seen = len(history) * steps * cfg.batch_size
        return {**info, "complete": complete, "epochs_done": len(history),
                "seconds": prior_seconds + time.perf_counter() - t_start, "load_seconds": load_seconds,
                "prewarm_seconds": prewarm_seconds, "train_seconds": train_s,
                "images_per_s": seen / train_s if train_s else None,
                "final_train_loss": history[-1]["train_loss"] if history else None,
                "final_train_acc": history[-1]["train_acc"] if history else None,
                "eval": eval_summary(evals, history)}

    def save_checkpoint(epoch: int) -> None:
        atomic_save({"config": cfg.to_json(), "epoch": epoch, "model": evaluated().state_dict(),
                        "live": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                        "optimizer": opt.state_dict(), "history": history, "norm": {"mean": mean, "std": std},
                        "train": info["train"], "seconds": prior_seconds + time.perf_counter() - t_start},
                       out / CHECKPOINT)

    # 5. train ----------------------------------------------------------------------------------
    clock = Clock(dev)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        clock.start()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        gen = D.generator(dev, cfg.seed, epoch, 0, 7)
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, file=sys.stderr,
                   disable=quiet, mininterval=1.0, unit="batch")
        for i, (x, y) in enumerate(batches.epoch(epoch)):
            n_step = epoch * steps + i
            lr = lr_at(cfg, n_step, steps)
            loss, logits = step(x, y, lr, gen)
            if ema is not None and (n_step + 1) % EMA_EVERY == 0:
                u = (n_step + 1) // EMA_EVERY  # the decay warms up: early weights fade fast in short runs
                ema.multi_avg_fn = get_ema_multi_avg_fn(min(cfg.ema ** EMA_EVERY, (1 + u) / (10 + u)))
                ema.update_parameters(model)
            loss_sum += loss.float() * len(y)
            correct += (logits.argmax(1) == y).sum()
            bar.update(1)
        bar.close()
        train_s = clock.stop()
        n = steps * cfg.batch_size
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum.item() / n, "train_acc": correct.item() / n,
               "train_seconds": train_s, "images_per_s": n / train_s}
        last = epoch + 1 == cfg.epochs
        for es in evals:  # 6. evaluation: the EMA weights, flip TTA
            due = last or (epoch + 1) % max(1, cfg.eval_every) == 0
            row[f"acc_{es.name}"] = evaluate(evaluated(), es, cfg, proc, kern.amp, cfg.tta) if due else ""
        row["elapsed_seconds"] = prior_seconds + time.perf_counter() - t_start
        history.append(row)
        write_log(out / LOG, fields, history)
        if last or (epoch + 1) % max(1, cfg.checkpoint_every) == 0:
            save_checkpoint(epoch + 1)
        atomic_json(out / METRICS, metrics(False))
        accs = "  ".join(f"{es.name} {row[f'acc_{es.name}']:.2%}" for es in evals if row[f"acc_{es.name}"] != "")
        say(f"epoch {epoch + 1:3d}/{cfg.epochs}  loss {row['train_loss']:.4f}  train {row['train_acc']:.2%}  "
            f"{accs}  lr {lr:.4g}  {train_s:.1f}s ({row['images_per_s']:,.0f} img/s)")

    # the final accuracy of the live and the EMA weights, with and without flip TTA
    result = metrics(True)
    nets = {"live": model, **({"ema": ema.module} if ema is not None else {})}
    result["fast"] = {"variants": {es.name: {f"{k}{'+tta' if t else ''}": evaluate(m, es, cfg, proc, kern.amp, t)
                                             for k, m in nets.items() for t in (False, True)} for es in evals}}
    atomic_json(out / METRICS, result)
    say(f"done in {result['seconds']:.1f}s ({result['train_seconds']:.1f}s training): " + ", ".join(
        f"{k} {v['final_acc']:.2%}" for k, v in result["eval"].items() if v["final_acc"] is not None)
        + f"; {out / METRICS}")
    return result
