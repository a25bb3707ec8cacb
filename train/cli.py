"""The command line shared by ``python -m train.resnet`` and ``python -m train.densenet``.

Each entry point passes its model name, its profiles (sets of ``Config`` overrides) and its
model options; every other option overrides one field of the chosen profile. The profile's
``recipe`` picks the training code, here and only here (``RECIPES``): ``train.paper`` (step or
one-cycle schedule, DDP, streaming), ``train.fast`` (one GPU, data on the device) or
``train.cpu`` (airbench's network and tricks on a CPU).
"""
from __future__ import annotations

import os
import shlex
import sys
import time
from typing import Callable

import click

from ppdata.errors import PpdataError

from . import cpu, fast, paper
from .adapt import ADAPTERS, AUTO
from .augment import FILLS
from .data import DATA_MODES
from .config import AMPS, INPUT_MODES, SCHEDULES, SGDS, Config
from .runtime import under_torchrun
from .preprocess import NORMS

RECIPES: dict[str, Callable[..., dict]] = {"paper": paper.run, "fast": fast.run, "cpu": cpu.run}


def run(cfg: Config, shards_dir, out, eval_dirs=(), **kw) -> dict:
    """Train ``cfg`` with its recipe (``cfg.recipe``); see ``train.paper.run`` for the arguments."""
    if cfg.recipe not in RECIPES:
        raise PpdataError(f"recipe: must be one of {', '.join(RECIPES)}, not {cfg.recipe!r}")
    return RECIPES[cfg.recipe](cfg, shards_dir, out, list(eval_dirs), **kw)


# CLI option -> Config field (None values are "not given": the profile's value stays)
_OVERRIDES = ("train_split", "epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule", "warmup",
              "label_smoothing", "shift", "fill", "input", "norm", "amp", "channels_last", "compile",
              "data", "workers", "seed", "eval_every", "checkpoint_every", "nesterov", "adapt", "sgd", "ema",
              "tta", "lookahead")


def make_command(model: str, profiles: dict[str, dict], model_options: dict[str, Callable], doc: str,
                 default_profile: str = "paper", model_module: str | None = None) -> click.Command:
    """A Click command training ``model``. ``model_options`` maps a keyword of the model's
    constructor to the click option setting it (given values go into ``Config.model_args``)."""

    @click.command(help=doc, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
    @click.argument("shards", type=click.Path(file_okay=False))
    @click.option("--profile", type=click.Choice(list(profiles)), default=default_profile, show_default=True,
                  help="A set of settings; the options below override single ones.")
    @click.option("--out", "-o", type=click.Path(file_okay=False),
                  help="Run folder (log.csv, metrics.json, checkpoint.pt). Default runs/<model>-<profile>-<time>.")
    @click.option("--eval", "eval_dirs", multiple=True, metavar="[NAME=]DIR",
                  help="Also evaluate on the test split of DIR (e.g. plain shards for plain Q). Repeatable.")
    @click.option("--train-split", metavar="SPLIT",
                  help="Split to train on. Default: the expansion of train that `ppdata augment SHARDS` added "
                       "(e.g. trainx8) when this profile does no flip/shift on the device, else train.")
    @click.option("--epochs", type=click.IntRange(min=1))
    @click.option("--batch-size", type=click.IntRange(min=1), help="Per process.")
    @click.option("--lr", type=float, help="Initial lr (step) or peak lr (onecycle).")
    @click.option("--momentum", type=float)
    @click.option("--nesterov/--no-nesterov", default=None)
    @click.option("--weight-decay", type=float)
    @click.option("--schedule", type=click.Choice(SCHEDULES))
    @click.option("--warmup", type=float, help="onecycle: fraction of steps of linear warm-up.")
    @click.option("--label-smoothing", type=float)
    @click.option("--augment/--no-augment", default=None,
                  help="On-device random flip + shift (--shift pixels) of the encrypted images.")
    @click.option("--shift", type=click.IntRange(min=0), help="Largest random shift in pixels (0: none).")
    @click.option("--fill", type=click.Choice(FILLS), help="What fills pixels vacated by a shift.")
    @click.option("--input", type=click.Choice(INPUT_MODES),
                  help="raw: stored pixels; fold: min(e,255-e) per channel, sorted per pixel under CS; "
                  "auto: fold for NP/NP+CS shards, raw otherwise.")
    @click.option("--norm", type=click.Choice(NORMS), help="train: mean/std of the training shards; half: 127.5/127.5.")
    @click.option("--adapt", type=click.Choice([AUTO, "none", *ADAPTERS]), is_flag=False, flag_value=AUTO,
                  metavar="[NAME]", help="Train an adaptation network before the classifier, end to end: the "
                  "scheme's own (--adapt: icip for icip/pixel, tanaka for le) or NAME (icip, tanaka, "
                  "tanaka-nibbles, none). See docs/train.md.")
    @click.option("--amp", type=click.Choice(AMPS), help="bf16 autocast on any device; auto: on CUDA only.")
    @click.option("--channels-last/--no-channels-last", default=None,
                  help="NHWC (default) or NCHW memory layout of the network.")
    @click.option("--sgd", type=click.Choice(SGDS), help="SGD step: fused, foreach, plain; auto: fused on CUDA.")
    @click.option("--compile/--no-compile", default=None, help="torch.compile the model (not timed: warm-up).")
    @click.option("--ema", type=click.FloatRange(0, 1, max_open=True),
                  help="Fast recipe: EMA decay per step of the evaluated weights (0: none).")
    @click.option("--tta", type=click.IntRange(0, 2), is_flag=False, flag_value=1, metavar="[LEVEL]",
                  help="Test-time augmentation: 1 (--tta) the mean of the logits of each image and its mirror; "
                       "2 also one-pixel shifts (cpu recipe); 0 (--no-tta) none.")
    @click.option("--no-tta", "tta", flag_value=0, help="No test-time augmentation.")
    @click.option("--lookahead/--no-lookahead", default=None, help="CPU recipe: lookahead to a slow copy of the weights.")
    @click.option("--data", type=click.Choice(DATA_MODES), help="memory: whole split on the device; stream: webdataset/HDF5 workers.")
    @click.option("--workers", type=click.IntRange(min=0), help="DataLoader workers for --data stream.")
    @click.option("--seed", type=int)
    @click.option("--eval-every", type=click.IntRange(min=1), help="Evaluate every N epochs (and after the last).")
    @click.option("--checkpoint-every", type=click.IntRange(min=1), help="Checkpoint every N epochs (and after the last).")
    @click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
    @click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
    @click.option("--overwrite", is_flag=True, help="Start again in a --out that holds a run.")
    @click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
    def command(shards, profile, out, eval_dirs, augment, device, resume, overwrite, quiet, **opts):
        model_args = {k: v for k in model_options if (v := opts.pop(k)) is not None}
        cfg = Config(**{"model": model, **profiles[profile], "profile": profile})
        cfg.model_args = {**cfg.model_args, **model_args}
        for k in _OVERRIDES:
            if opts.get(k) is not None:
                setattr(cfg, k, opts[k])
        if augment is not None:
            cfg.flip = augment
            if augment and opts.get("shift") is None and cfg.shift == 0:
                cfg.shift = 4
            if not augment and opts.get("shift") is None:
                cfg.shift = 0
        if out is None:
            if under_torchrun():
                raise click.UsageError("--out is required under torchrun")
            out = os.path.join("runs", f"{model}-{profile}-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            cmd = f"python -m {model_module} {shlex.join(sys.argv[1:])}" if model_module else None
            run(cfg, shards, out, list(eval_dirs), device=device, resume=resume, overwrite=overwrite, quiet=quiet,
                command=cmd)
        except PpdataError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo(f"Interrupted; continue with --resume --out {out}", err=True)
            sys.exit(130)

    for o in reversed(list(model_options.values())):
        command = o(command)
    return command
