"""train: models, on-device transforms, loaders, the loop (resume, fold, formats) and DDP on CPU.

Runs are tiny: a few real CIFAR-10 images of the embedded sample, narrow networks, 1-2 epochs.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ppdata.cipher import PixelKey, fold as np_fold, get_scheme
from ppdata.dataset import steps_per_epoch
from ppdata.keys import KeyStream, secret_from_seed
from ppdata.pipeline import encrypt
from ppdata.shards import open_shards
from ppdata.sources import ArraySource, SampleSource

from train import data as D
from train.augment import Augment, flip, translate
from train.classifier import load_model
from train.cli import run
from train.config import Config, lr_at
from train.models import DenseNet, ResNet18, count_parameters
from train.preprocess import Preprocess, channel_stats, fold

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 32, 16


# ---------------------------------------------------------------------------------------------
# fixtures: tiny shard folders of real images


@pytest.fixture(scope="module")
def sample_arrays():
    src = SampleSource()
    out = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        b = next(src.batches(split, 500))
        # a class-balanced slice (the sample is sorted by class)
        pick = np.concatenate([np.flatnonzero(b.labels == c)[: n // 8] for c in range(8)])
        out[split] = (b.images[pick], b.labels[pick])
    return out


def _make(path: Path, arrays, *, cs=True, plain=False, fmt="webdataset", shard_size=10, mode="independent"):
    scheme = get_scheme("plain") if plain else get_scheme("pixel", cs=cs)
    keys = None if plain else KeyStream(secret_from_seed(7), mode)
    encrypt(ArraySource(arrays, classes=[f"c{i}" for i in range(10)]), path, scheme=scheme, keys=keys,
            fmt=fmt, shard_size=shard_size, seeded=not plain, progress=False)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory, sample_arrays):
    root = tmp_path_factory.mktemp("shards")
    return {
        "npcs": _make(root / "npcs", sample_arrays),
        "npcs_h5": _make(root / "npcs_h5", sample_arrays, fmt="hdf5"),
        "np": _make(root / "np", sample_arrays, cs=False),
        "plain": _make(root / "plain", sample_arrays, plain=True),
    }


def tiny(**kw) -> Config:
    base = dict(model="resnet18", model_args={"width": 4}, epochs=1, batch_size=8, lr=0.05, schedule="onecycle",
                warmup=0.2, flip=True, shift=2, workers=0, eval_batch_size=16, data="memory")
    base.update(kw)
    return Config(**base)


def read_log(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# models


def test_resnet18_parameter_count_matches_torchvision_resnet18():
    import torchvision

    with torch.device("meta"):  # shapes only, no initialisation
        ours = count_parameters(ResNet18(num_classes=10))
        tv = count_parameters(torchvision.models.resnet18(num_classes=10))  # 7x7 ImageNet stem
        assert count_parameters(torchvision.models.resnet18()) == 11_689_512  # torchvision's published figure
    assert tv - (7 * 7 - 3 * 3) * 3 * 64 == ours == 11_173_962


def test_densenet40_12_parameter_count():
    # the count by hand: stem 3->16, 3 blocks of 12 BN-ReLU-conv3x3 (k=12), 2 transitions c->c
    k, c, total = 12, 16, 3 * 9 * 16
    for block in range(3):
        for _ in range(12):
            total += 2 * c + 9 * c * k
            c += k
        if block < 2:
            total += 2 * c + c * c
    total += 2 * c + c * 10 + 10
    with torch.device("meta"):
        ours = count_parameters(DenseNet(num_classes=10, depth=40, growth=12))
    assert ours == total == 1_019_722
    assert round(ours / 1e6, 1) == 1.0  # Huang et al., Table 2: DenseNet (L=40, k=12) 1.0M
    with pytest.raises(ValueError):
        DenseNet(depth=41)


def test_models_map_32x32_to_logits():
    x = torch.randn(2, 3, 32, 32)
    assert ResNet18(width=4)(x).shape == (2, 10)
    assert DenseNet(depth=10, growth=4, num_classes=7)(x).shape == (2, 7)


# ---------------------------------------------------------------------------------------------
# on-device transforms


def test_fold_matches_ppdata_and_removes_the_key(sample_images):
    x = sample_images[:16]
    for cs in (False, True):
        scheme = get_scheme("pixel", cs=cs)
        key = scheme.derive_keys(KeyStream(secret_from_seed(3)), "test", np.arange(16), x.shape[1:])
        enc = scheme.encrypt(x, key)
        assert not np.array_equal(enc, x)
        t = torch.from_numpy(enc).permute(0, 3, 1, 2)
        got = fold(t, sort=cs).permute(0, 2, 3, 1).numpy()
        assert np.array_equal(got, np_fold(enc, cs)) and np.array_equal(got, np_fold(x, cs))
        gotf = fold(t.float(), sort=cs).permute(0, 2, 3, 1).numpy()  # the float path the model uses
        assert np.array_equal(gotf, np_fold(x, cs).astype(np.float32))


def test_translate_matches_a_padded_crop(sample_images):
    x = torch.from_numpy(sample_images[:6])
    dy = torch.tensor([0, 4, -4, 2, -3, 31])
    dx = torch.tensor([0, -4, 4, 0, 1, -2])
    out = translate(x, dy, dx, "zero").numpy()
    pad = np.pad(sample_images[:6], ((0, 0), (32, 32), (32, 32), (0, 0)))
    refl = np.pad(sample_images[:6], ((0, 0), (32, 32), (32, 32), (0, 0)), mode="reflect")
    outr = translate(x, dy, dx, "reflect").numpy()
    for b in range(6):
        y0, x0 = 32 - int(dy[b]), 32 - int(dx[b])
        assert np.array_equal(out[b], pad[b, y0 : y0 + 32, x0 : x0 + 32])
        assert np.array_equal(outr[b], refl[b, y0 : y0 + 32, x0 : x0 + 32])


def test_flip_and_reflect_shift_commute_with_the_cipher(sample_images):
    """Enc(x) augmented == Enc'(x augmented) under the augmented key: no key is needed."""
    x = sample_images[:8]
    scheme = get_scheme("pixel", cs=True)
    key = scheme.derive_keys(KeyStream(secret_from_seed(5)), "test", np.arange(8), x.shape[1:])
    enc = torch.from_numpy(scheme.encrypt(x, key))
    g = torch.Generator().manual_seed(0)
    flipped = flip(enc, g).numpy()
    g = torch.Generator().manual_seed(0)
    m = (torch.rand(8, generator=g) < 0.5).numpy()
    assert 0 < m.sum() < 8
    fx = np.where(m[:, None, None, None], x[:, :, ::-1], x)
    fk = PixelKey(np.where(m[:, None, None, None], key.np_mask[:, :, ::-1], key.np_mask),
                  np.where(m[:, None, None], key.cs_code[:, :, ::-1], key.cs_code))
    assert np.array_equal(flipped, scheme.encrypt(np.ascontiguousarray(fx), fk))
    dy, dx = torch.tensor([3] * 8), torch.tensor([-2] * 8)
    shifted = translate(enc, dy, dx, "reflect").numpy()
    sx = translate(torch.from_numpy(x), dy, dx, "reflect").numpy()
    sk = PixelKey(translate(torch.from_numpy(key.np_mask), dy, dx, "reflect").numpy(),
                  translate(torch.from_numpy(key.cs_code)[..., None], dy, dx, "reflect").numpy()[..., 0])
    assert np.array_equal(shifted, scheme.encrypt(sx, sk))


def test_augment_is_seeded_and_varies():
    x = torch.randint(0, 256, (64, 8, 8, 3), dtype=torch.uint8)
    a = Augment(flip=True, shift=2)
    one = a(x, torch.Generator().manual_seed(1))
    assert torch.equal(one, a(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(one, a(x, torch.Generator().manual_seed(2)))
    assert not Augment(False, 0).active


def test_channel_stats_and_preprocess(sample_images):
    x = torch.from_numpy(sample_images)
    for inp, cs in (("raw", False), ("fold", True)):
        mean, std = channel_stats(x, inp, cs, values=7 * 32 * 32 * 3)  # chunks of 7 images
        ref = np_fold(sample_images, cs) if inp == "fold" else sample_images
        assert np.allclose(mean, ref.reshape(-1, 3).mean(0), atol=1e-6)
        assert np.allclose(std, ref.reshape(-1, 3).std(0), atol=1e-6)
        out = Preprocess(mean, std, inp, cs)(x.permute(0, 3, 1, 2))
        assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
        assert torch.allclose(out.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-2)


def test_lr_schedules():
    paper = Config(schedule="step", lr=0.1, milestones=[60, 120, 160], gamma=0.2, epochs=200)
    assert [round(lr_at(paper, e * 10, 10), 8) for e in (0, 59, 60, 120, 199)] == [0.1, 0.1, 0.02, 0.004, 0.0008]
    cyc = Config(schedule="onecycle", lr=0.4, warmup=0.2, epochs=10)
    lrs = [lr_at(cyc, s, 10) for s in range(100)]
    assert max(lrs) == pytest.approx(0.4) and lrs.index(max(lrs)) == 19
    assert lrs[0] == pytest.approx(0.02) and lrs[-1] == pytest.approx(0.4 / 80)


# ---------------------------------------------------------------------------------------------
# loaders


def test_device_loader_splits_a_common_permutation(folders):
    split = D.load_split(open_shards(folders["npcs"], "train"))
    ranks = [D.DeviceLoader(split, 5, seed=3, rank=r, world=2) for r in range(2)]
    assert len(ranks[0]) == (N_TRAIN // 2) // 5
    a, b = (r.indices(0) for r in ranks)
    assert len(set(a.tolist()) | set(b.tolist())) == len(a) + len(b)  # disjoint
    assert torch.equal(a, ranks[0].indices(0)) and not torch.equal(a, ranks[0].indices(1))
    x, y = next(ranks[0].epoch(0))
    assert x.shape == (5, 32, 32, 3) and x.dtype == torch.uint8 and torch.equal(y, split.labels[a[:5]])


def test_steps_per_epoch_matches_round_robin_dealing():
    assert steps_per_epoch([10, 10, 10, 3], 4, world=1, workers=2) == 5 + 3  # worker 0: 10 + 10, worker 1: 10 + 3
    assert steps_per_epoch([10, 10, 10, 3], 4, world=2, workers=1) == 3  # rank 1 holds 13 samples
    assert steps_per_epoch([10], 4, world=2, workers=1) == 0


@pytest.mark.parametrize("fmt", ["npcs", "npcs_h5"])
@pytest.mark.parametrize("workers", [0, 2])
def test_stream_loader_yields_each_sample_once(folders, fmt, workers):
    shards = open_shards(folders[fmt], "train")
    whole = shards.load()
    loader = D.StreamLoader(shards, 4, torch.device("cpu"), seed=1, workers=workers, group=2)
    seen = []
    for x, y in loader.epoch(0):
        assert x.shape == (4, 32, 32, 3) and x.dtype == torch.uint8
        for img, lab in zip(x.numpy(), y.numpy()):
            i = int(np.flatnonzero((whole.images == img).all(axis=(1, 2, 3)))[0])
            assert whole.labels[i] == lab
            seen.append(i)
    assert len(seen) == len(loader) * 4 and len(set(seen)) == len(seen)
    assert len(seen) >= N_TRAIN - 4 * max(1, workers) * 4  # at most a partial batch lost per worker
    order2 = [int(np.flatnonzero((whole.images == img).all(axis=(1, 2, 3)))[0])
              for x, _ in loader.epoch(1) for img in x.numpy()]
    assert order2 != seen  # a new shuffle every epoch


# ---------------------------------------------------------------------------------------------
# runs


@pytest.mark.parametrize("fmt,data", [("npcs", "memory"), ("npcs_h5", "memory"), ("npcs", "stream"),
                                      ("npcs_h5", "stream")])
def test_run_writes_metrics_and_log(tmp_path, folders, fmt, data):
    out = tmp_path / "run"
    m = run(tiny(data=data, workers=0, epochs=2, eval_every=2), folders[fmt], out,
            [f"plain={folders['plain']}"], device="cpu", quiet=True)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["complete"] and saved["epochs_done"] == 2 and saved["effective"]["data"] == data
    assert saved["train"]["scheme"] == {"name": "pixel", "encrypted": True, "np": True, "cs": True}
    assert saved["train"]["format"] == ("hdf5" if fmt == "npcs_h5" else "webdataset")
    assert saved["eval"]["plain"]["scheme"]["encrypted"] is False
    for name in ("test", "plain"):
        e = saved["eval"][name]
        assert 0 <= e["final_acc"] <= 1 and e["best_acc"] >= e["final_acc"] and e["final_epoch"] == 2
    assert saved["images_per_s"] > 0 and saved["seconds"] >= saved["train_seconds"] > 0
    rows = read_log(out)
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[0]["acc_test"] == "" and rows[1]["acc_plain"] != ""
    assert m["eval"]["test"]["final_acc"] == saved["eval"]["test"]["final_acc"]


def test_training_learns_on_plain_sample(tmp_path, folders):
    """A few epochs on 32 plain images: the training loss must fall (the loop really optimises)."""
    run(tiny(epochs=8, flip=False, shift=0, lr=0.05, warmup=0.0, schedule="step", label_smoothing=0.0,
             model_args={"width": 8}),
        folders["plain"], tmp_path / "r", device="cpu", quiet=True)
    losses = [float(r["train_loss"]) for r in read_log(tmp_path / "r")]
    assert losses[-1] < 0.6 * losses[0]


def test_fold_gives_identical_predictions_on_plain_and_encrypted(tmp_path, folders):
    for enc in ("npcs", "np"):
        out = tmp_path / enc
        m = run(tiny(input="fold"), folders[enc], out, [f"plain={folders['plain']}"], device="cpu", quiet=True)
        assert m["input"] == {"mode": "fold", "sort": enc == "npcs"}
        assert m["eval"]["test"]["final_acc"] == m["eval"]["plain"]["final_acc"]
        model = load_model(out)
        q = torch.from_numpy(open_shards(folders["plain"], "test").load().images).permute(0, 3, 1, 2)
        eq = torch.from_numpy(open_shards(folders[enc], "test").load().images).permute(0, 3, 1, 2)
        with torch.no_grad():
            assert torch.equal(model(q), model(eq))
    # without fold the network sees different inputs
    m = run(tiny(), folders["npcs"], tmp_path / "raw", device="cpu", quiet=True)
    model = load_model(tmp_path / "raw")
    with torch.no_grad():
        assert not torch.equal(model(q), model(eq))


def _interrupt_after(monkeypatch, epochs_done: int):
    real = D.DeviceLoader.epoch

    def epoch(self, e):
        if e == epochs_done:
            raise KeyboardInterrupt
        return real(self, e)

    monkeypatch.setattr(D.DeviceLoader, "epoch", epoch)


def test_resume_continues_exactly(tmp_path, folders, monkeypatch):
    cfg = tiny(epochs=3, eval_every=1)
    run(cfg, folders["npcs"], tmp_path / "straight", device="cpu", quiet=True)
    with monkeypatch.context() as mp:
        _interrupt_after(mp, 2)
        with pytest.raises(KeyboardInterrupt):
            run(tiny(epochs=3), folders["npcs"], tmp_path / "cut", device="cpu", quiet=True)
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["complete"] is False
    from ppdata.errors import PpdataError

    with pytest.raises(PpdataError, match="--resume"):
        run(tiny(epochs=3), folders["npcs"], tmp_path / "cut", device="cpu", quiet=True)
    with pytest.raises(PpdataError, match="lr"):
        run(tiny(epochs=3, lr=0.1), folders["npcs"], tmp_path / "cut", device="cpu", quiet=True, resume=True)
    run(tiny(epochs=3), folders["npcs"], tmp_path / "cut", device="cpu", quiet=True, resume=True)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    la, lb = read_log(tmp_path / "straight"), read_log(tmp_path / "cut")
    assert [r["train_loss"] for r in la] == [r["train_loss"] for r in lb]
    assert [r["acc_test"] for r in la] == [r["acc_test"] for r in lb]


def test_cli_smoke_and_errors(tmp_path, folders):
    from train.densenet import main as densenet
    from train.resnet import main as resnet

    out = tmp_path / "cli"
    r = CliRunner().invoke(resnet, [str(folders["npcs"]), "--profile", "smoke", "--width", "4", "--batch-size", "8",
                                    "--eval", str(folders["plain"]), "--device", "cpu", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["profile"] == "smoke" and m["config"]["model_args"] == {"width": 4} and set(m["eval"]) == {"test", "plain"}
    assert m["config"]["flip"] and m["config"]["shift"] == 4
    r = CliRunner().invoke(resnet, [str(folders["npcs"]), "--profile", "smoke", "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 1 and "--resume" in r.output
    r = CliRunner().invoke(resnet, [str(folders["npcs"]), "--eval", str(tmp_path / "nope"), "--out",
                                    str(tmp_path / "x"), "--device", "cpu"])
    assert r.exit_code == 1 and "nope" in r.output
    r = CliRunner().invoke(densenet, [str(folders["npcs_h5"]), "--profile", "smoke", "--depth", "10", "--growth", "4",
                                      "--batch-size", "8", "--no-augment", "--input", "fold", "--device", "cpu",
                                      "--out", str(tmp_path / "dn"), "-q"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "dn" / "metrics.json").read_text())
    assert m["model"] == "densenet40" and m["config"]["model_args"] == {"depth": 10, "growth": 4}
    assert m["config"]["flip"] is False and m["config"]["shift"] == 0 and m["input"]["sort"] is True


def test_unexpanded_folder_points_to_its_expansion(tmp_path):
    """Training on un-expanded shards without on-device augmentation names the sibling expansion."""
    from click.testing import CliRunner

    from ppdata.cli import cli
    from train.config import expansion_next_to

    r = CliRunner()
    assert r.invoke(cli, ["-q", "encrypt", "sample", "--split", "train", "--out", str(tmp_path / "s")]).exit_code == 0
    assert expansion_next_to(tmp_path / "s") is None
    assert r.invoke(cli, ["-q", "augment", str(tmp_path / "s"), "--shift", "0", "--out", str(tmp_path / "s-x2")]).exit_code == 0
    assert expansion_next_to(tmp_path / "s") == tmp_path / "s-x2"


def test_narrow_strided_1x1_turns_onednn_off_only_when_needed():
    """oneDNN's AVX2 weight gradient of a stride-2 1x1 convolution with < 8 input channels
    (ResNet-18 at --width 4) crashes the process; wide models keep oneDNN."""
    import torch

    from train.classifier import avoid_onednn_narrow_strided_1x1

    before = torch.backends.mkldnn.enabled
    try:
        torch.backends.mkldnn.enabled = True
        assert not avoid_onednn_narrow_strided_1x1(ResNet18(width=8))
        assert torch.backends.mkldnn.enabled
        assert avoid_onednn_narrow_strided_1x1(ResNet18(width=4))
        assert not torch.backends.mkldnn.enabled
    finally:
        torch.backends.mkldnn.enabled = before


def test_the_promised_chain_trains_on_the_in_place_expansion(tmp_path, monkeypatch):
    """encrypt -> `ppdata augment shards/` -> `python -m train.resnet shards/`: the paper's profile
    (no on-device augmentation) trains on trainx8, the 8x expansion augment added to the folder."""
    from ppdata.cli import cli
    from train.resnet import main as resnet

    monkeypatch.chdir(tmp_path)
    r = CliRunner()
    assert r.invoke(cli, ["-q", "encrypt", "sample", "--keys", "independent", "--cs"]).exit_code == 0
    assert r.invoke(cli, ["-q", "augment", "shards/"]).exit_code == 0
    res = r.invoke(resnet, ["shards/", "--profile", "paper", "--epochs", "1", "--width", "4", "--batch-size", "64",
                            "--device", "cpu", "--out", "run", "-q"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["train"]["split"] == "trainx8" and m["train"]["count"] == 4000
    assert not m["config"]["flip"] and m["eval"]["test"]["final_acc"] >= 0
    # with on-device flip/shift (the smoke and fast profiles) the unexpanded split is the input
    res = r.invoke(resnet, ["shards/", "--profile", "smoke", "--width", "4", "--device", "cpu", "--out", "s", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["train"]["split"] == "train"
    # two expansions: the user chooses
    assert r.invoke(cli, ["-q", "augment", "shards/", "--shift", "0"]).exit_code == 0
    res = r.invoke(resnet, ["shards/", "--epochs", "1", "--width", "4", "--device", "cpu", "--out", "t", "-q"])
    assert res.exit_code == 1 and "--train-split" in res.output


def test_training_reads_check_every_shard_in_both_data_modes(tmp_path):
    """A byte changed inside an image of one shard: memory loading and streaming both fail naming it."""
    from ppdata.cli import cli

    d = tmp_path / "s"
    assert CliRunner().invoke(cli, ["-q", "encrypt", "sample", "--split", "train", "--shard-size", "100",
                                    "--out", str(d)]).exit_code == 0
    shard = d / "train-000002.tar"
    data = bytearray(shard.read_bytes())
    data[5120 * 3 + 1000] ^= 0xFF  # pixel bytes: only the hash sees it
    shard.write_bytes(bytes(data))
    shards = open_shards(d, "train")
    with pytest.raises(Exception, match="train-000002.tar"):
        D.load_split(shards)
    loader = D.StreamLoader(shards, 50, torch.device("cpu"), seed=1, workers=0, group=2)
    with pytest.raises(Exception, match="train-000002.tar"):
        for _ in loader.epoch(0):
            pass


def test_a_cpu_run_says_how_long_it_will_take(tmp_path, folders, monkeypatch):
    """After its first steps on the CPU the paper recipe estimates the run and, when that is long,
    points at the CPU recipe (and at --device cuda when torch was built for a GPU it cannot see)."""
    from train import paper, runtime

    said = []
    monkeypatch.setattr(paper, "ESTIMATE_AFTER", 2)
    monkeypatch.setattr(paper, "say_fn", lambda quiet, proc: said.append)
    run(tiny(epochs=2, batch_size=4), folders["npcs"], tmp_path / "r", device="cpu")
    est = [m for m in said if m.startswith("on this CPU")]
    assert len(est) == 1 and "per epoch" in est[0] and "for the 2 epochs of profile custom" in est[0]
    cfg = tiny(profile="paper")
    assert "--profile cpu" in runtime.cpu_estimate(cfg, 0.5, 390, 200)  # 200 epochs of 390 steps: 11 h
    assert "--profile cpu" not in runtime.cpu_estimate(cfg, 0.01, 10, 2)
