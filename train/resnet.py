"""CIFAR ResNet-18 on ppdata shards: ``python -m train.resnet SHARDS [--profile paper|fast|smoke]``.

Profiles (every field can be overridden on the command line; see ``docs/train.md``):

- ``paper``: the paper's schedule. SGD momentum 0.9, batch 128, lr 0.1 divided by 5 at epochs
  60, 120 and 160, 200 epochs, weight decay 5e-4, float32. Meant for the 8x expanded shards
  written by ``ppdata augment`` (no on-device augmentation).
- ``fast``: the fast recipe, ``train/fast.py`` (one file, one device, data resident on it):
  batch 512, one-cycle to lr 0.4 (20% warm-up, linear decay to 0), Nesterov momentum 0.9,
  weight decay 5e-4 except on BatchNorm and biases, label smoothing 0.1, 40 epochs of on-device
  flip + shift (reflect fill), fold input for NP/NP+CS shards, EMA weights evaluated with flip
  test-time augmentation; bf16, NHWC and the fused SGD step on CUDA.
- ``smoke``: one short epoch to check that everything runs (CPU, embedded sample).
"""
import click

from . import cpu, fast
from .cli import make_command

PROFILES = {
    "paper": dict(epochs=200, batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
                  schedule="step", milestones=[60, 120, 160], gamma=0.2, amp="off", channels_last=None),
    "fast": dict(fast.PROFILE),  # train/fast.py: the whole recipe in one file
    "cpu": dict(cpu.PROFILE),  # train/cpu.py: airbench's network and tricks, for a CPU
    "smoke": dict(epochs=1, batch_size=64, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
                  schedule="onecycle", warmup=0.3, label_smoothing=0.1, amp="auto", channels_last=None,
                  flip=True, shift=4, workers=0),
}

HELP = """Train ResNet-18 on the shard folder SHARDS; evaluate on its test split (Enc(Q)) and on
each --eval folder (e.g. plain shards: plain Q). Writes log.csv, metrics.json, checkpoint.pt.

\b
Profiles (options override single settings):
  paper  SGD momentum 0.9, batch 128, lr 0.1 /5 at epochs 60, 120, 160; 200 epochs; wd 5e-4; float32
  fast   the fast recipe (train/fast.py): batch 512, one-cycle to lr 0.4, Nesterov, label smoothing
         0.1, no weight decay on BatchNorm, 40 epochs of on-device flip + shift, fold input for
         NP/NP+CS, EMA weights, flip TTA; bf16 + fused SGD on CUDA; one device
  smoke  one short epoch, to check that everything runs

\b
Example:
  python -m train.resnet npcs/ --profile fast --eval plain=plain/ --input fold --out runs/npcs-fold
"""

def _widths(text: str) -> list[int]:
    try:
        w = [int(v) for v in text.split(",")]
    except ValueError:
        w = []
    if len(w) != 3 or min(w) < 1:
        raise click.BadParameter(f"{text!r}: three positive integers, e.g. 64,256,256")
    return w


main = make_command(
    "resnet18", PROFILES,
    {"width": click.option("--width", type=click.IntRange(min=1),
                           help="Stem width (64 = ResNet-18; smaller for quick experiments)."),
     "widths": click.option("--widths", type=_widths, metavar="W1,W2,W3",
                            help="--profile cpu: the widths of AirNet's three conv groups (default 64,256,256).")},
    HELP, model_module="train.resnet")

if __name__ == "__main__":
    main()
