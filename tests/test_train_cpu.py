"""train.cpu, the CPU recipe (``--profile cpu``): AirNet's whitening, the schedule, TTA, the
recipe learning on real images, determinism under --seed, fold invariance, resume, refusals."""
# ruff: noqa: F811  (the fixtures of test_train are imported by name, then requested as arguments)
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ppdata.cipher import get_scheme
from ppdata.errors import PpdataError
from ppdata.keys import KeyStream, secret_from_seed
from ppdata.pipeline import encrypt
from ppdata.shards import open_shards
from ppdata.sources import SampleSource
from test_train import folders, read_log, sample_arrays, tiny  # noqa: F401

from train import cpu
from train import data as D
from train.classifier import load_model
from train.cli import run
from train.evaluation import logits_tta
from train.models import AirNet


def cpu_cfg(**kw):
    base = {**cpu.PROFILE, "model_args": {"widths": [8, 16, 16]}, "epochs": 2, "batch_size": 8,
            "eval_batch_size": 16, "amp": "off"}
    return tiny(**{**base, **kw})


@pytest.fixture(scope="module")
def sample_folders(tmp_path_factory):
    """The whole embedded sample (500 + 100 real CIFAR-10 images): plain and NP+CS, independent keys."""
    root = tmp_path_factory.mktemp("sample")
    out = {}
    for name, scheme, keys in (("plain", get_scheme("plain"), None),
                               ("npcs", get_scheme("pixel", cs=True), KeyStream(secret_from_seed(3), "independent"))):
        encrypt(SampleSource(), root / name, scheme=scheme, keys=keys, fmt="hdf5", seeded=keys is not None,
                progress=False)
        out[name] = root / name
    return out


def test_whitening_filters_whiten_the_patches():
    """The 2x2 whitening filters, applied to the patches they were computed from, give outputs
    whose covariance is the identity (up to eps) in the first 12 channels; the other 12 are
    their negatives."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 3, 8, 8, generator=g)
    images = base + 0.8 * base.roll(1, dims=3) + 0.5 * base[:, :1]  # correlated pixels and channels
    net = AirNet(widths=(8, 8, 8))
    net.init_whiten(images, eps=0.0)
    out = torch.nn.functional.conv2d(images.double(), net.whiten.weight.double())  # no bias
    half = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    cov = half.T @ half / len(half)
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=1e-3)
    assert torch.equal(net.whiten.weight[12:], -net.whiten.weight[:12])
    assert not net.whiten.weight.requires_grad and net.whiten.bias.requires_grad


def test_schedule_and_lookahead_decay():
    total = 1000
    assert cpu.lr_factor(0, total, 0.23) == pytest.approx(cpu.LR_START)
    assert cpu.lr_factor(230, total, 0.23) == pytest.approx(1.0)
    assert cpu.lr_factor(115, total, 0.23) == pytest.approx((cpu.LR_START + 1) / 2)
    assert cpu.lr_factor(total, total, 0.23) == pytest.approx(cpu.LR_END)
    assert cpu.lookahead_decay(0, total) == 0 and cpu.lookahead_decay(total, total) == pytest.approx(0.95 ** 5)


def test_lookahead_pulls_the_weights_to_the_slow_copy():
    net = torch.nn.Linear(3, 2)
    look = cpu.Lookahead(net)
    slow = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    look.update(net, 0.75)  # slow = 0.75 slow + 0.25 fast; fast = slow
    assert torch.allclose(net.weight, slow + 0.25) and torch.allclose(look.slow["weight"], slow + 0.25)


def test_tta_level_2_is_the_weighted_mean_of_six_views():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=g)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 5))

    def f(v):
        return model(v.float())

    pad = torch.nn.functional.pad(x.float(), (1, 1, 1, 1), mode="reflect")
    views = [pad[:, :, :8, :8], pad[:, :, 2:, 2:]]
    want = (f(x) + f(x.flip(3))) / 4 + sum(f(v) + f(v.flip(3)) for v in views) / 8
    assert torch.allclose(logits_tta(lambda v: model(v.float()), x, 2), want, atol=1e-5)
    assert torch.allclose(logits_tta(lambda v: model(v.float()), x, 1), (f(x) + f(x.flip(3))) / 2, atol=1e-6)


def test_alternating_flip_mirrors_every_image_each_other_epoch():
    base = cpu.flip_masks(1000, seed=0)
    assert 400 < int(base.sum()) < 600
    assert torch.equal(cpu.flip_masks(1000, seed=0), base)
    assert torch.equal(base ^ True, ~base)  # epoch 1: the opposite mirror of epoch 0 for every image


def test_profile_cpu_learns_on_the_embedded_sample(tmp_path, sample_folders):
    """Eight short epochs on 500 real CIFAR-10 images (31% here): the training loss falls and the
    100 test images score well above chance (10%: 20 or more right by chance has p < 0.001);
    plain Q and Enc(Q) are scored alike."""
    from train.resnet import main

    out = tmp_path / "r"
    r = CliRunner().invoke(main, [str(sample_folders["npcs"]), "--profile", "cpu", "--widths", "32,64,64",
                                  "--batch-size", "50", "--epochs", "8", "--eval", f"plain={sample_folders['plain']}",
                                  "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["recipe"] == "cpu" and m["model"] == "airnet" and m["complete"] and m["epochs_done"] == 8
    assert m["input"] == {"mode": "fold", "sort": True} and m["tta"] == 2 and m["lookahead"] is True
    assert m["augment"] == {"flip": "alternating", "shift": 2, "fill": "reflect"}
    losses = [float(row["train_loss"]) for row in read_log(out)]
    assert losses[-1] < 0.75 * losses[0] and losses[-1] == min(losses), losses
    acc = m["eval"]["test"]["final_acc"]
    assert acc >= 0.2, acc
    assert m["eval"]["plain"]["final_acc"] == acc  # fold: Enc(Q) and plain Q alike
    assert m["seconds"] >= m["train_seconds"] > 0 and m["cpu_seconds"] > 0


def test_seed_makes_runs_identical_and_fold_models_key_blind(tmp_path, folders):
    a = run(cpu_cfg(seed=5), folders["npcs"], tmp_path / "a", device="cpu", quiet=True)
    b = run(cpu_cfg(seed=5), folders["npcs"], tmp_path / "b", device="cpu", quiet=True)
    c = run(cpu_cfg(seed=6), folders["npcs"], tmp_path / "c", device="cpu", quiet=True)
    wa, wb, wc = (torch.load(tmp_path / n / "checkpoint.pt", weights_only=False)["model"] for n in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa if wa[k].is_floating_point())
    assert a["final_train_loss"] == b["final_train_loss"]
    model = load_model(tmp_path / "a")
    q = torch.from_numpy(open_shards(folders["plain"], "test").load().images).permute(0, 3, 1, 2)
    eq = torch.from_numpy(open_shards(folders["npcs"], "test").load().images).permute(0, 3, 1, 2)
    with torch.no_grad():
        assert torch.equal(model(q), model(eq))  # fold: the key does not reach the network
        assert not torch.equal(model(q), model(q.flip(2)))  # ... while the image does


def test_resume_continues_exactly(tmp_path, folders, monkeypatch):
    cfg = cpu_cfg(epochs=3)
    run(cfg, folders["npcs"], tmp_path / "straight", device="cpu", quiet=True)
    real = D.DeviceLoader.indices

    def indices(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(self, epoch)

    with monkeypatch.context() as mp:
        mp.setattr(D.DeviceLoader, "indices", indices)
        with pytest.raises(KeyboardInterrupt):
            run(cpu_cfg(epochs=3), folders["npcs"], tmp_path / "r", device="cpu", quiet=True)
    assert len(read_log(tmp_path / "r")) == 2
    m = run(cpu_cfg(epochs=3), folders["npcs"], tmp_path / "r", device="cpu", quiet=True, resume=True)
    assert m["complete"] and m["epochs_done"] == 3
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_on_request(tmp_path, folders):
    m = run(cpu_cfg(amp="bf16", epochs=1), folders["npcs"], tmp_path / "r", device="cpu", quiet=True)
    assert m["effective"]["amp"] == "bf16" and np.isfinite(m["final_train_loss"])


def test_refusals(tmp_path, folders, monkeypatch):
    if not torch.cuda.is_available():
        with pytest.raises(PpdataError, match="no CUDA device"):
            run(cpu_cfg(), folders["npcs"], tmp_path / "a", device="cuda", quiet=True)
    with pytest.raises(PpdataError, match="airnet"):
        run(cpu_cfg(model="resnet18", model_args={"width": 4}), folders["npcs"], tmp_path / "b", device="cpu",
            quiet=True)
    with pytest.raises(PpdataError, match="stream"):
        run(cpu_cfg(data="stream"), folders["npcs"], tmp_path / "c", device="cpu", quiet=True)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(PpdataError, match="torchrun"):
        run(cpu_cfg(), folders["npcs"], tmp_path / "d", device="cpu", quiet=True)


def test_gemm_weight_gradient_equals_the_convolutions():
    """conv3x3_weight_grad (nine GEMMs over row-shifted views) is the weight gradient of a 3x3
    padding-1 convolution, odd sizes and batch edges included; AirNet gives the same gradients
    with it as with the library's kernel."""
    from train.models import conv3x3_weight_grad

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, 6, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(3, 4, 7, 6, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w = torch.zeros(4, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.conv2d(x, w, padding=1).backward(dy)
    assert torch.allclose(conv3x3_weight_grad(x, dy), w.grad, atol=1e-10)
    grads = {}
    for how in ("library", "gemm"):
        torch.manual_seed(1)
        net = AirNet(widths=(8, 16, 16)).to(memory_format=torch.channels_last)
        net.set_weight_grad(how)
        xi = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
        net(xi.contiguous(memory_format=torch.channels_last)).square().sum().backward()
        grads[how] = [p.grad for p in net.parameters() if p.grad is not None]
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(grads["library"], grads["gemm"]))


def test_kernels_are_measured_and_a_resumed_run_keeps_them(tmp_path, folders, monkeypatch):
    monkeypatch.setattr(cpu, "cpu_has_bf16", lambda: True)
    m = run(cpu_cfg(amp="auto", epochs=1), folders["npcs"], tmp_path / "a", device="cpu", quiet=True)
    probe = m["effective"]["kernel_probe"]
    assert set(probe) == {"float32", "bf16", "bf16+gemm"} and all(v > 0 for v in probe.values())
    assert m["effective"]["kernels"] in probe
    m = run(cpu_cfg(amp="off", epochs=1), folders["npcs"], tmp_path / "b", device="cpu", quiet=True)
    assert m["effective"]["kernels"] == "float32" and m["effective"]["kernel_probe"] == {}
    # the probe leaves no trace: measuring all three, then training in float32, equals no probe
    real = cpu.choose_kernels
    monkeypatch.setattr(cpu, "choose_kernels", lambda *a, **k: ("float32", real(*a, **k)[1]))
    m = run(cpu_cfg(amp="auto", epochs=1), folders["npcs"], tmp_path / "c", device="cpu", quiet=True)
    assert len(m["effective"]["kernel_probe"]) == 3
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    c = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(b[k], c[k]) for k in b)


def test_the_probe_prefers_the_library_unless_the_gemms_are_clearly_faster():
    prefer = cpu.pick_kernels
    assert prefer({"float32": 360, "bf16+gemm": 1245, "bf16": 1226}) == "bf16"  # a tie: the library
    assert prefer({"float32": 170, "bf16+gemm": 340, "bf16": 30}) == "bf16+gemm"  # the stalled library kernel
    assert prefer({"float32": 170}) == "float32"
