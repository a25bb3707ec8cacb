"""train.fast, the fast recipe (``--profile fast``): fold input by default, no weight decay on
BatchNorm and biases, EMA weights evaluated with flip TTA, resume, refusals. Tiny CPU runs."""
# ruff: noqa: F811  (the fixtures of test_train are imported by name, then requested as arguments)
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from ppdata.errors import PpdataError
from ppdata.shards import open_shards
from test_train import _interrupt_after, folders, read_log, sample_arrays, tiny  # noqa: F401

from train import data as D
from train import classifier, config, evaluation, preprocess, runtime
from train.fast import PROFILE
from train.classifier import load_model
from train.cli import run
from train.models import ResNet18


def fast(**kw) -> config.Config:
    return tiny(**{**PROFILE, "epochs": 2, "batch_size": 8, "eval_batch_size": 16, "eval_every": 1, **kw})


def test_profile_fast_runs_the_fast_recipe_with_fold_input(tmp_path, folders):
    from train.resnet import main

    out = tmp_path / "r"
    r = CliRunner().invoke(main, [str(folders["npcs"]), "--profile", "fast", "--width", "4", "--batch-size", "8",
                                  "--epochs", "2", "--eval", f"plain={folders['plain']}", "--device", "cpu",
                                  "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["recipe"] == "fast" and m["profile"] == "fast" and m["complete"] and m["epochs_done"] == 2
    assert m["input"] == {"mode": "fold", "sort": True}  # auto: NP+CS shards -> fold, channels sorted
    assert m["augment"] == {"flip": True, "shift": 4, "fill": "reflect"} and m["tta"] == 1
    assert m["config"]["norm_bias_decay"] is False and m["ema"]["decay_per_step"] == PROFILE["ema"]
    v = m["fast"]["variants"]
    assert set(v["test"]) == {"live", "live+tta", "ema", "ema+tta"}
    assert v["test"] == v["plain"]  # fold: Enc(Q) and plain Q give identical predictions
    assert m["eval"]["test"]["final_acc"] == v["test"]["ema+tta"]  # the recipe's number: EMA + TTA
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    ema = {k[len("module."):]: t for k, t in ck["ema"].items() if k.startswith("module.")}
    assert ema.keys() == ck["model"].keys() and all(torch.equal(ema[k], ck["model"][k]) for k in ema)
    assert any(not torch.equal(ck["live"][k], ck["model"][k]) for k in ck["live"])  # EMA != live weights
    model = load_model(out)  # the evaluated (EMA) weights
    q = torch.from_numpy(open_shards(folders["plain"], "test").load().images).permute(0, 3, 1, 2)
    eq = torch.from_numpy(open_shards(folders["npcs"], "test").load().images).permute(0, 3, 1, 2)
    with torch.no_grad():
        assert torch.equal(model(q), model(eq))


def test_input_raw_stays_available_and_plain_shards_get_raw(tmp_path, folders):
    m = run(fast(input="raw"), folders["npcs"], tmp_path / "raw", device="cpu", quiet=True)
    assert m["input"]["mode"] == "raw" and m["config"]["input"] == "raw"
    m = run(fast(), folders["plain"], tmp_path / "plain", device="cpu", quiet=True)
    assert m["input"]["mode"] == "raw"  # auto: fold only for the pixel schemes
    m = run(fast(), folders["np"], tmp_path / "np", device="cpu", quiet=True)
    assert m["input"] == {"mode": "fold", "sort": False}


def test_no_weight_decay_on_batchnorm_and_biases():
    model = classifier.Classifier(preprocess.Preprocess([0] * 3, [1] * 3), ResNet18(width=4))
    decay, free = classifier.param_groups(model, 5e-4, norm_bias_decay=False)
    bn = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    assert decay["weight_decay"] == 5e-4 and free["weight_decay"] == 0.0
    assert {id(p) for p in free["params"]} == bn | {id(model.net.fc.bias)}
    assert all(p.ndim == 4 for p in decay["params"] if p is not model.net.fc.weight)
    assert len(decay["params"]) + len(free["params"]) == len(list(model.parameters()))
    # a step with zero gradients: weight decay shrinks conv weights, leaves BatchNorm alone
    opt = classifier.make_optimizer(fast(), model, "foreach")
    conv, gamma = model.net.stem[0].weight.detach().clone(), model.net.stem[1].weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(model.net.stem[1].weight, gamma) and not torch.equal(model.net.stem[0].weight, conv)


def test_flip_tta_is_the_mean_of_the_image_and_mirror_logits(folders):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))  # not mirror-symmetric
    model = classifier.Classifier(preprocess.Preprocess([127.5] * 3, [64] * 3), net).eval()
    shards = open_shards(folders["npcs"], "test")
    es = evaluation.EvalSet("test", shards, D.load_split(shards))
    x = es.split.images.permute(0, 3, 1, 2)
    with torch.no_grad():
        mean_logits = model(x) + model(x.flip(3))
        plain = model(x)
    want = (mean_logits.argmax(1) == es.split.labels).float().mean().item()
    assert evaluation.evaluate(model, es, fast(), runtime.Proc(), False, tta=True) == pytest.approx(want)
    assert evaluation.evaluate(model, es, fast(), runtime.Proc(), False) == pytest.approx(
        (plain.argmax(1) == es.split.labels).float().mean().item())
    assert not torch.equal(mean_logits.argmax(1), plain.argmax(1))  # TTA changes some predictions


def test_fast_resume_continues_exactly(tmp_path, folders, monkeypatch):
    cfg = dict(epochs=3, checkpoint_every=1)
    run(fast(**cfg), folders["npcs"], tmp_path / "straight", device="cpu", quiet=True)
    with monkeypatch.context() as mp:
        _interrupt_after(mp, 2)
        with pytest.raises(KeyboardInterrupt):
            run(fast(**cfg), folders["npcs"], tmp_path / "cut", device="cpu", quiet=True)
    run(fast(**cfg), folders["npcs"], tmp_path / "cut", device="cpu", quiet=True, resume=True)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    for part in ("model", "live", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert [r["train_loss"] for r in read_log(tmp_path / "straight")] == \
           [r["train_loss"] for r in read_log(tmp_path / "cut")]


def test_without_ema_the_live_weights_are_evaluated(tmp_path, folders):
    m = run(fast(ema=0.0, tta=False), folders["npcs"], tmp_path / "r", device="cpu", quiet=True)
    assert set(m["fast"]["variants"]["test"]) == {"live", "live+tta"}
    assert m["eval"]["test"]["final_acc"] == m["fast"]["variants"]["test"]["live"]
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    assert ck["ema"] is None and all(torch.equal(ck["live"][k], ck["model"][k]) for k in ck["live"])


def test_fast_recipe_refusals(tmp_path, folders, monkeypatch):
    with pytest.raises(PpdataError, match="--data stream"):
        run(fast(data="stream"), folders["npcs"], tmp_path / "a", device="cpu", quiet=True)
    with pytest.raises(PpdataError, match="--ema"):
        run(tiny(ema=0.9), folders["npcs"], tmp_path / "b", device="cpu", quiet=True)  # the loop has no EMA
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "localhost"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(PpdataError, match="torchrun"):
        run(fast(), folders["npcs"], tmp_path / "c", device="cpu", quiet=True)
