"""Adaptation networks: a small network placed before the classifier, trained end to end with it.

The compared methods of the paper train their classifier behind such a network; it maps the
encrypted image to a 3-channel, image-sized map, so the classifier (ResNet-18, DenseNet) is
unchanged. ``--adapt`` (``python -m train.resnet|densenet``) picks one by the training
manifest's scheme; ``--adapt NAME`` names one.

==================  =========  ==================================================================
name                default    network (input NCHW float, output (B, 3, H, W))
                    for
==================  =========  ==================================================================
``icip``            ``icip``,  The ICIP 2019 paper's (Sirichotedumrong et al., arXiv 1905.01827)
                    ``pixel``  "1x1 adaptation network with 8 and 32 feature maps", read as
                               conv1x1(3->8)-BN-ReLU, conv1x1(8->32)-BN-ReLU, conv1x1(32->3)
                               (with bias), on the normalised input. Every layer is 1x1, so it
                               acts on each pixel alone, like the cipher. 459 parameters.
``tanaka``          ``le``     Tanaka's (ICCE-TW 2018) block-wise network, as in the author's
                               code: an M x M convolution with stride M (one output vector per
                               block: M x M x 3 values -> M*M*3 feature maps), BN, ReLU, a 1x1
                               convolution M*M*3 -> M*M*3 (with bias), then a sub-pixel layer
                               (``PixelShuffle(M)``) that puts each block's M*M*3 features back
                               as an M x M x 3 patch at the block's place. Input: the stored
                               bytes, normalised (what the author's network consumes). M = the
                               manifest's ``block_size``. 4,752 parameters at M = 4.
``tanaka-nibbles``  -          The same network on the method's 6-channel view: the stored bytes
                               split into low and high 4-bit values (``ppdata.schemes.le_unpack``
                               order: R, G, B low nibbles, then high), scaled to [-1, 1]. Each
                               LE component is then one input of the block convolution, so a
                               linear layer can undo the key's shuffle and reversals; on bytes it
                               cannot (a byte mixes two components from different places).
                               7,056 parameters at M = 4.
==================  =========  ==================================================================

Our readings, where the papers leave room: the ICIP paper names the feature map counts (8, 32)
and the 1x1 kernels; the last layer back to 3 maps, the BN/ReLU placement and the bias are ours.
Tanaka's paper describes the block-wise layer and the sub-pixel reshaping; the second (1x1)
layer, BN and ReLU are ours (the author's code defines BN after the block convolution and
further 1x1 layers). Why a 1x1 network helps the pixel scheme: per value it can compute
``|x - 127.5|`` (two ReLUs), the key-free fold (see ``train.preprocess``), which no per-image key
changes.

``tanaka-nibbles`` reads the bytes *before* normalisation (``Adapter.raw_input``), so the
classifier's ``Preprocess`` normalisation is not applied to its input.
"""
from __future__ import annotations

import torch
from torch import nn

ADAPTERS = ("icip", "tanaka", "tanaka-nibbles")
AUTO = "auto"
# manifest scheme name -> default adaptation network
DEFAULT_FOR_SCHEME = {"icip": "icip", "pixel": "icip", "le": "tanaka"}


class ICIPAdapt(nn.Module):
    """1x1 convolutions 3 -> 8 -> 32 -> 3 (BN + ReLU after the first two)."""

    raw_input = False

    def __init__(self, channels: tuple[int, ...] = (8, 32), in_channels: int = 3, out_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for f in channels:
            layers += [nn.Conv2d(c, f, 1, bias=False), nn.BatchNorm2d(f), nn.ReLU(inplace=True)]
            c = f
        layers.append(nn.Conv2d(c, out_channels, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TanakaAdapt(nn.Module):
    """Block-wise: conv MxM stride M (C -> 3M^2), BN, ReLU, conv1x1 (3M^2 -> 3M^2), PixelShuffle(M).

    ``nibbles``: the input is the stored bytes (0..255 floats), split here into the 6 LE
    components (low then high 4 bits per channel) scaled to [-1, 1]; else the normalised
    3-channel input."""

    def __init__(self, block_size: int = 4, nibbles: bool = False, out_channels: int = 3):
        super().__init__()
        m = int(block_size)
        if m < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size, self.nibbles = m, bool(nibbles)
        self.raw_input = self.nibbles
        width = out_channels * m * m
        self.block = nn.Conv2d(6 if nibbles else 3, width, m, stride=m, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.mix = nn.Conv2d(width, width, 1)
        self.shuffle = nn.PixelShuffle(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.block_size or w % self.block_size:
            raise ValueError(f"tanaka adaptation: {h}x{w} images cannot be divided into "
                             f"{self.block_size}x{self.block_size} blocks")
        if self.nibbles:
            high = torch.floor(x / 16)
            x = torch.cat([x - 16 * high, high], 1) * (2 / 15) - 1
        return self.shuffle(self.mix(torch.relu(self.bn(self.block(x)))))


def resolve(name: str | None, scheme: dict | None) -> tuple[str | None, dict]:
    """The adaptation network (name, constructor arguments) for ``--adapt NAME`` given the
    training manifest's ``scheme``; ``auto`` picks by the scheme's name. ``None``/"none": none.

    Raises ``ValueError`` naming the option when there is no network for the scheme."""
    scheme = scheme or {}
    if name in (None, "none"):
        return None, {}
    if name == AUTO:
        sname = scheme.get("name", "plain") if scheme.get("encrypted") else "plain"
        if sname not in DEFAULT_FOR_SCHEME:
            raise ValueError(f"--adapt: no adaptation network belongs to scheme {sname!r} "
                             f"(defaults: {', '.join(f'{k} -> {v}' for k, v in DEFAULT_FOR_SCHEME.items())}); "
                             f"name one: --adapt {'|'.join(ADAPTERS)}")
        name = DEFAULT_FOR_SCHEME[sname]
    if name not in ADAPTERS:
        raise ValueError(f"--adapt: unknown adaptation network {name!r} (choose from {', '.join(ADAPTERS)}, auto)")
    if name == "icip":
        return name, {}
    return name, {"block_size": int(scheme.get("block_size", 4))}


def build(name: str, args: dict) -> nn.Module:
    """The network ``name`` (see ``ADAPTERS``) with the arguments from ``resolve``."""
    if name == "icip":
        return ICIPAdapt(**args)
    if name == "tanaka":
        return TanakaAdapt(nibbles=False, **args)
    if name == "tanaka-nibbles":
        return TanakaAdapt(nibbles=True, **args)
    raise ValueError(f"unknown adaptation network {name!r}")
