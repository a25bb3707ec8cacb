"""DenseNet-40-12 on ppdata shards: ``python -m train.densenet SHARDS [--profile paper|fast|smoke]``.

Profiles (every field can be overridden on the command line; see ``docs/train.md``):

- ``paper``: SGD momentum 0.9, batch 64, lr 0.1 divided by 10 at epochs 150 and 225, 300
  epochs, weight decay 1e-4, float32; for the 8x expanded shards (no on-device augmentation).
- ``fast``: the fast recipe, ``train/fast.py`` (one file, one device, data resident on it):
  batch 512, one-cycle to lr 0.4 (20% warm-up, linear decay to 0), Nesterov momentum 0.9,
  weight decay 5e-4 except on BatchNorm and biases, label smoothing 0.1, 40 epochs of on-device
  flip + shift (reflect fill), fold input for NP/NP+CS shards, EMA weights evaluated with flip
  test-time augmentation; bf16, NHWC and the fused SGD step on CUDA.
- ``smoke``: one short epoch to check that everything runs.
"""
import click

from . import fast
from .cli import make_command

PROFILES = {
    "paper": dict(epochs=300, batch_size=64, lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4,
                  schedule="step", milestones=[150, 225], gamma=0.1, amp="off", channels_last=None),
    "fast": dict(fast.PROFILE),  # train/fast.py: the whole recipe in one file
    "smoke": dict(epochs=1, batch_size=64, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4,
                  schedule="onecycle", warmup=0.3, label_smoothing=0.1, amp="auto", channels_last=None,
                  flip=True, shift=4, workers=0),
}

HELP = """Train DenseNet-40-12 on the shard folder SHARDS; evaluate on its test split (Enc(Q)) and on
each --eval folder (e.g. plain shards: plain Q). Writes log.csv, metrics.json, checkpoint.pt.

\b
Profiles (options override single settings):
  paper  SGD momentum 0.9, batch 64, lr 0.1 /10 at epochs 150, 225; 300 epochs; wd 1e-4; float32
  fast   the fast recipe (train/fast.py): batch 512, one-cycle to lr 0.4, Nesterov, label smoothing
         0.1, no weight decay on BatchNorm, 40 epochs of on-device flip + shift, fold input for
         NP/NP+CS, EMA weights, flip TTA; bf16 + fused SGD on CUDA; one device
  smoke  one short epoch, to check that everything runs

\b
Example:
  python -m train.densenet npcs/ --profile fast --eval plain=plain/ --out runs/densenet
"""

main = make_command(
    "densenet40", PROFILES,
    {"depth": click.option("--depth", type=click.IntRange(min=7), help="3n+4 (40 in the paper)."),
     "growth": click.option("--growth", type=click.IntRange(min=1), help="Growth rate k (12 in the paper).")},
    HELP, model_module="train.densenet")

if __name__ == "__main__":
    main()
