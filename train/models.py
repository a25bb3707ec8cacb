"""The two networks of the paper, built for 32x32 inputs from torch.nn.

========================  ==========  ===================================================
model                     parameters  structure
========================  ==========  ===================================================
``resnet18`` (He et al.)  11,173,962  3x3 stem (no max-pool), BasicBlocks [2, 2, 2, 2] at
                                      widths 64/128/256/512, strides 1/2/2/2, 1x1 conv
                                      projection shortcuts, global average pool, linear
``densenet40`` (Huang et  1,019,722   DenseNet L=40, k=12 *without* bottleneck or
al., Table 2: "1.0M")                 compression: 3x3 stem to 16 channels, three dense
                                      blocks of 12 BN-ReLU-Conv3x3 layers, transitions
                                      BN-ReLU-Conv1x1-AvgPool2, BN-ReLU, global pool, linear
``airnet`` (airbench94)    1,972,792   2x2 whitening conv (fixed filters, learned bias), three
                                      groups conv3x3-maxpool-BN-GELU-conv3x3-BN-GELU at
                                      widths 64/256/256, global max-pool, linear / 9
========================  ==========  ===================================================

Counts are for 10 classes at the default width. The ResNet-18 count equals torchvision's
ImageNet ``resnet18`` (11,689,512 with 1000 classes) with its 7x7 stem replaced by a 3x3 one
and a 10-way head; ``tests/test_train.py`` checks both counts.

Inputs are float (B, 3, H, W) tensors, already normalised (see ``train.preprocess``).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------
# ResNet-18 (CIFAR variant)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU (He et al., 2016)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18; ``width`` is the stem width (64 in the paper; smaller for tests)."""

    def __init__(self, num_classes: int = 10, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------------------------------------
# DenseNet-40-12 (Huang et al., 2017), the basic (non-bottleneck, non-compressed) variant


class DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3 producing ``growth`` new channels, concatenated to the input."""

    def __init__(self, cin: int, growth: int, dropout: float = 0.0):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, 1, 1, bias=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(F.relu(self.bn(x)))
        if self.dropout:
            out = F.dropout(out, self.dropout, self.training)
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    """BN-ReLU-Conv1x1 (channels kept: no compression) then 2x2 average pooling."""

    def __init__(self, cin: int, cout: int, dropout: float = 0.0):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(F.relu(self.bn(x)))
        if self.dropout:
            out = F.dropout(out, self.dropout, self.training)
        return F.avg_pool2d(out, 2)


class DenseNet(nn.Module):
    """DenseNet for CIFAR: depth ``L`` = 3 * n + 4 (n layers per block), growth rate ``k``.

    ``dropout`` is 0 by default (Huang et al. use 0.2 only when training without augmentation).
    """

    def __init__(self, num_classes: int = 10, depth: int = 40, growth: int = 12, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 3:
            raise ValueError(f"DenseNet depth must be 3n + 4, got {depth}")
        n = (depth - 4) // 3
        c = 16  # the basic DenseNet's stem (DenseNet-BC would use 2k)
        feats: list[nn.Module] = [nn.Conv2d(3, c, 3, 1, 1, bias=False)]
        for block in range(3):
            for _ in range(n):
                feats.append(DenseLayer(c, growth, dropout))
                c += growth
            if block < 2:
                feats.append(Transition(c, c, dropout))
        feats += [nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*feats)
        self.fc = nn.Linear(c, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# AirNet: the airbench94 network (Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024)


class _FrozenScaleBN(nn.BatchNorm2d):
    """BatchNorm with a fixed scale of 1 (only the bias learns), eps 1e-12; ``momentum`` is
    airbench's (the weight of the running statistics), torch's is 1 - momentum."""

    def __init__(self, channels: int, momentum: float = 0.6):
        super().__init__(channels, eps=1e-12, momentum=1 - momentum)
        self.weight.requires_grad = False


def conv3x3_weight_grad(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The weight gradient of a 3x3, stride-1, padding-1 convolution: ``dw[o, c, i, j] =
    sum_{b,h,w} g[b, o, h, w] * x[b, c, h + i - 1, w + j - 1]`` for input ``x`` (B, C, H, W) and
    output gradient ``g`` (B, O, H, W), both in NHWC memory; returned (O, C, 3, 3) in ``x``'s dtype.

    Nine GEMMs, one per kernel offset, each over plain row slices: ``x`` is padded and, per row
    offset i, its rows i..i+H-1 are flattened to (B*H*(W+2), C); ``g`` padded with two zero
    columns is flattened alike, so the column offset j is a shift by j rows of that matrix (the
    zero columns absorb what would cross into the next row or image). Three copies of ``x``,
    no im2col of nine."""
    B, C, H, W = x.shape
    O = g.shape[1]
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))            # (B, H+2, W+2, C)
    gp = F.pad(g.permute(0, 2, 3, 1), (0, 0, 0, 2)).reshape(-1, O)   # (B*H*(W+2), O), zero where w >= W
    m = gp.shape[0]
    out = torch.empty(O, 3, 3, C, dtype=x.dtype, device=x.device)
    for i in range(3):
        xi = xp[:, i:i + H].reshape(m, C)
        for j in range(3):
            out[:, i, j] = gp[: m - j].t() @ xi[j:]
    return out.permute(0, 3, 1, 2)


class _GemmWeightGradConv3x3(torch.autograd.Function):
    """A 3x3 padding-1 convolution whose weight gradient is ``conv3x3_weight_grad`` (GEMMs), not
    the convolution library's backward-weights kernel; forward and input gradient as usual.
    Under autocast it computes in the autocast dtype, like ``F.conv2d``."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, x, w):
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        x, wc = x.to(dtype).contiguous(memory_format=torch.channels_last), w.to(dtype)
        ctx.save_for_backward(x, wc)
        ctx.w_dtype = w.dtype
        return F.conv2d(x, wc, padding=1)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        g = g.to(x.dtype).contiguous(memory_format=torch.channels_last)
        gx = torch.nn.grad.conv2d_input(x.shape, w, g, padding=1) if ctx.needs_input_grad[0] else None
        gw = conv3x3_weight_grad(x, g).to(ctx.w_dtype) if ctx.needs_input_grad[1] else None
        return gx, gw


class _Conv3x3(nn.Conv2d):
    """3x3, padding 1, no bias. ``weight_grad``: "library" (the convolution library's kernel) or
    "gemm" (``conv3x3_weight_grad``; on some CPUs the library's bf16 backward-weights kernel is
    tens of times slower than a GEMM: ``train.cpu`` measures and chooses)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3, padding=1, bias=False)
        self.weight_grad = "library"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_grad == "gemm" and self.training and x.device.type == "cpu":
            return _GemmWeightGradConv3x3.apply(x, self.weight)
        return super().forward(x)


class _ConvGroup(nn.Module):
    """conv3x3 - maxpool2 - BN - GELU - conv3x3 - BN - GELU; the convolutions start as identities
    on their first ``cin`` output channels (Dirac init)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = _Conv3x3(cin, cout)
        self.norm1 = _FrozenScaleBN(cout)
        self.conv2 = _Conv3x3(cout, cout)
        self.norm2 = _FrozenScaleBN(cout)
        for c in (self.conv1, self.conv2):
            nn.init.dirac_(c.weight.data[: c.in_channels])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class AirNet(nn.Module):
    """The airbench94 network for 32x32 inputs (any size divisible by 8 works; the head pools).

    A 2x2 whitening convolution (24 filters: the eigenvectors of the training patches'
    covariance and their negatives, fixed; only its bias learns, for the first epochs), GELU,
    three conv groups at ``widths`` (airbench94: 64/256/256), a global max-pool, a linear head
    without bias scaled by 1/9. BatchNorm has no learned scale. ``init_whiten`` must be called
    with normalised training images before training (until then the whitening is random).
    Inputs are normalised float (B, 3, H, W) tensors (see ``train.preprocess``)."""

    WHITEN_KERNEL = 2

    def __init__(self, num_classes: int = 10, widths: tuple | list = (64, 256, 256), scale: float = 1 / 9):
        super().__init__()
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"AirNet widths must be three positive integers, got {widths!r}")
        k = self.WHITEN_KERNEL
        self.whiten = nn.Conv2d(3, 2 * 3 * k * k, k, padding=0, bias=True)
        self.whiten.weight.requires_grad = False
        self.whiten_bias_grad = True  # the recipe freezes the bias after its first epochs
        w1, w2, w3 = (int(w) for w in widths)
        self.layers = nn.Sequential(_ConvGroup(2 * 3 * k * k, w1), _ConvGroup(w1, w2), _ConvGroup(w2, w3))
        self.head = nn.Linear(w3, num_classes, bias=False)
        self.scale = scale
        with torch.no_grad():
            self.head.weight.mul_(1 / self.head.weight.std())

    @torch.no_grad()
    def init_whiten(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening filters from normalised float images (B, 3, H, W): the
        eigenvectors of the covariance of their 2x2 patches, scaled by 1/sqrt(eigenvalue + eps),
        and their negatives."""
        k = self.WHITEN_KERNEL
        c, h, w = images.shape[1:]
        cov = torch.zeros(c * k * k, c * k * k, dtype=torch.float64, device=images.device)
        n = 0
        step = max(1, (1 << 22) // ((h - k + 1) * (w - k + 1)))  # ~4M patches at a time, whatever the size
        for a in range(0, len(images), step):
            x = images[a:a + step].float()
            flat = x.unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c * k * k)
            cov += (flat.T @ flat).double()
            n += len(flat)
        cov /= max(1, n)
        evals, evecs = torch.linalg.eigh(cov)
        filters = (evecs.T.reshape(-1, c, k, k) / torch.sqrt(evals.view(-1, 1, 1, 1) + eps)).float()
        self.whiten.weight.copy_(torch.cat((filters, -filters)))

    def set_weight_grad(self, how: str) -> None:
        """How the 3x3 convolutions compute their weight gradient: "library" or "gemm"."""
        if how not in ("library", "gemm"):
            raise ValueError(f"weight_grad must be library or gemm, not {how!r}")
        for m in self.modules():
            if isinstance(m, _Conv3x3):
                m.weight_grad = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.whiten.bias if self.whiten_bias_grad else self.whiten.bias.detach()
        x = F.gelu(F.conv2d(x, self.whiten.weight, b))
        x = self.layers(x)
        x = torch.flatten(F.adaptive_max_pool2d(x, 1), 1)
        return self.head(x) * self.scale


# the networks by name (``Config.model``); each takes ``num_classes`` and its ``model_args``
MODELS = {"resnet18": ResNet18, "densenet40": DenseNet, "airnet": AirNet}
