"""train.adapt: the adaptation networks (shapes, locality, LE nibbles), their choice by scheme,
end-to-end training on CPU, checkpoints and the ``--adapt`` flag. Real images of the embedded sample."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ppdata.cipher import get_scheme
from ppdata.keys import KeyStream, secret_from_seed
from ppdata.pipeline import encrypt
from ppdata.schemes import le_unpack
from ppdata.sources import ArraySource, SampleSource

from train.adapt import ICIPAdapt, TanakaAdapt, build, resolve
from train.classifier import load_model
from train.cli import run
from train.config import Config
from train.models import count_parameters


@pytest.fixture(scope="module")
def arrays():
    src = SampleSource()
    out = {}
    for split, n in (("train", 64), ("test", 16)):
        b = next(src.batches(split, 500))
        pick = np.concatenate([np.flatnonzero(b.labels == c)[: n // 8] for c in range(8)])
        out[split] = (b.images[pick], b.labels[pick])
    return out


def _encrypt(path: Path, arrays, scheme: str, mode: str = "same", **opts) -> Path:
    encrypt(ArraySource(arrays, classes=[f"c{i}" for i in range(10)]), path, scheme=get_scheme(scheme, **opts),
            keys=KeyStream(secret_from_seed(3), mode), fmt="webdataset", seeded=True, progress=False)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory, arrays):
    root = tmp_path_factory.mktemp("adapt")
    return {"icip": _encrypt(root / "icip", arrays, "icip", cs=True),
            "le": _encrypt(root / "le", arrays, "le"),
            "etc": _encrypt(root / "etc", arrays, "etc")}


# ---------------------------------------------------------------------------------------------
# the networks


def test_icip_adaptation_network_shapes():
    net = ICIPAdapt()
    shapes = [tuple(p.shape) for n, p in net.named_parameters() if n.endswith("weight") and p.dim() == 4]
    assert shapes == [(8, 3, 1, 1), (32, 8, 1, 1), (3, 32, 1, 1)]
    assert count_parameters(net) == 24 + 16 + 256 + 64 + 96 + 3 == 459
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    assert net(torch.randn(2, 3, 96, 96)).shape == (2, 3, 96, 96)


def test_tanaka_adaptation_network_shapes():
    net = TanakaAdapt(4)
    assert tuple(net.block.weight.shape) == (48, 3, 4, 4) and net.block.stride == (4, 4)
    assert tuple(net.mix.weight.shape) == (48, 48, 1, 1)
    assert count_parameters(net) == 48 * 3 * 16 + 96 + 48 * 48 + 48 == 4752
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    assert tuple(TanakaAdapt(4, nibbles=True).block.weight.shape) == (48, 6, 4, 4)
    assert tuple(TanakaAdapt(8).block.weight.shape) == (192, 3, 8, 8)
    with pytest.raises(ValueError, match="30x30"):
        net(torch.randn(1, 3, 30, 30))


def test_icip_network_acts_on_each_pixel_alone():
    net = ICIPAdapt().eval()
    x = torch.randn(1, 3, 8, 8)
    y = x.clone()
    y[0, :, 3, 5] += 1.0
    diff = (net(x) - net(y)).abs().sum(1)[0]
    assert diff[3, 5] > 0 and diff.sum() == diff[3, 5]


def test_tanaka_network_maps_each_block_to_its_own_place():
    net = TanakaAdapt(4).eval()
    with torch.no_grad():
        net.bn.running_var.fill_(1.0)
    x = torch.randn(1, 3, 16, 16)
    y = x.clone()
    y[0, :, 5, 9] += 1.0                       # inside block (row 1, column 2)
    changed = (net(x) - net(y)).abs().sum(1)[0] > 0
    block = torch.zeros(16, 16, dtype=torch.bool)
    block[4:8, 8:12] = True
    assert changed[block].any() and not changed[~block].any()


def test_tanaka_nibbles_are_the_le_components(sample_images):
    """The block convolution of ``tanaka-nibbles`` sees exactly ppdata's 6-channel LE view."""
    net = TanakaAdapt(4, nibbles=True)
    seen = {}
    net.block.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
    x = torch.from_numpy(sample_images[:4]).permute(0, 3, 1, 2).float()
    net(x)
    want = torch.from_numpy(le_unpack(sample_images[:4])).permute(0, 3, 1, 2).float() * (2 / 15) - 1
    assert torch.equal(seen["x"], want)


def test_resolve_picks_the_schemes_network():
    assert resolve("auto", {"name": "icip", "encrypted": True, "np": True, "cs": True}) == ("icip", {})
    assert resolve("auto", {"name": "pixel", "encrypted": True}) == ("icip", {})
    assert resolve("auto", {"name": "le", "encrypted": True, "block_size": 8}) == ("tanaka", {"block_size": 8})
    assert resolve("tanaka-nibbles", {"name": "le", "encrypted": True, "block_size": 4}) == \
        ("tanaka-nibbles", {"block_size": 4})
    assert resolve(None, {"name": "le"}) == (None, {}) and resolve("none", {"name": "le"}) == (None, {})
    for scheme in ({"name": "etc", "encrypted": True}, {"name": "plain", "encrypted": False}):
        with pytest.raises(ValueError, match="--adapt"):
            resolve("auto", scheme)
    with pytest.raises(ValueError, match="unknown"):
        resolve("bogus", {})
    assert isinstance(build("tanaka", {"block_size": 4}), TanakaAdapt)


# ---------------------------------------------------------------------------------------------
# training end to end


def _cfg(**kw) -> Config:
    base = dict(model="resnet18", model_args={"width": 4}, epochs=1, batch_size=16, lr=0.05, schedule="onecycle",
                warmup=0.2, workers=0, eval_batch_size=16, data="memory", adapt="auto")
    base.update(kw)
    return Config(**base)


@pytest.mark.parametrize("scheme,name,params", [("icip", "icip", 459), ("le", "tanaka", 4752)])
def test_adaptation_network_trains_end_to_end(tmp_path, folders, scheme, name, params):
    torch.manual_seed(0)
    m = run(_cfg(), folders[scheme], tmp_path / "run", device="cpu", quiet=True)
    assert m["complete"] and m["adapt"] == {"name": name, "args": {} if name == "icip" else {"block_size": 4},
                                            "params": params}
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["adapt"]["name"] == name and saved["config"]["adapt"] == name
    model = load_model(tmp_path / "run")
    assert model.adapt is not None and count_parameters(model.adapt) == params
    # the adaptation network's weights moved with the classifier's (trained end to end): rebuild the
    # initial weights as run() draws them (seed, then the classifier, then the adaptation network)
    from train.models import ResNet18

    torch.manual_seed(0)
    ResNet18(num_classes=10, width=4)
    fresh = build(name, m["adapt"]["args"])
    first = next(p for n, p in model.adapt.named_parameters() if n.endswith("weight") and p.dim() == 4)
    first0 = next(p for n, p in fresh.named_parameters() if n.endswith("weight") and p.dim() == 4)
    assert first.shape == first0.shape and not torch.equal(first, first0)
    # the checkpointed model reproduces the run's final test accuracy
    from ppdata.shards import open_shards

    test = open_shards(folders[scheme], "test").load()
    with torch.no_grad():
        pred = model(torch.from_numpy(test.images).permute(0, 3, 1, 2)).argmax(1).numpy()
    assert (pred == test.labels).mean() == pytest.approx(m["eval"]["test"]["final_acc"])


def test_resume_refuses_another_adaptation_network(tmp_path, folders):
    from ppdata.errors import PpdataError

    run(_cfg(adapt="tanaka", epochs=2, checkpoint_every=1), folders["le"], tmp_path / "r", device="cpu", quiet=True)
    with pytest.raises(PpdataError, match="adapt"):
        run(_cfg(adapt="tanaka-nibbles", epochs=2), folders["le"], tmp_path / "r", device="cpu", quiet=True,
            resume=True)


def test_adapt_flag(tmp_path, folders):
    from train.resnet import main as resnet

    common = ["--profile", "smoke", "--width", "4", "--batch-size", "16", "--device", "cpu", "-q"]
    r = CliRunner().invoke(resnet, [str(folders["icip"]), "--adapt", *common, "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["adapt"]["name"] == "icip" and m["config"]["adapt"] == "icip"
    r = CliRunner().invoke(resnet, [str(folders["le"]), "--adapt", "tanaka-nibbles", *common,
                                    "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["adapt"]["params"] == 7056
    r = CliRunner().invoke(resnet, [str(folders["icip"]), *common, "--out", str(tmp_path / "c")])
    assert r.exit_code == 0 and json.loads((tmp_path / "c" / "metrics.json").read_text())["adapt"] is None
    r = CliRunner().invoke(resnet, [str(folders["etc"]), "--adapt", *common, "--out", str(tmp_path / "d")])
    assert r.exit_code == 1 and "--adapt" in r.output and "etc" in r.output
    assert not (tmp_path / "d" / "metrics.json").exists()
    r = CliRunner().invoke(resnet, [str(folders["etc"]), "--adapt", "bogus", *common, "--out", str(tmp_path / "e")])
    assert r.exit_code == 2
