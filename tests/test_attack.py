"""Attacks and metrics: known values, exact invariances, and attacks on small real images."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from attack import metrics, variants
from attack.data import align_by_key, encrypt_as, plain_for_keys
from attack.learn import COANet, LocallyConnected1x1, TrainConfig, UNet, fit, predict, unet_input
from attack.neighbour import neighbour_attack
from ppdata.cipher import fold
from ppdata.keys import KeyStream, secret_from_seed
from ppdata.sources import SampleSource, open_source


def _enc(images, cs, seed=1, mode="independent"):
    return encrypt_as(images, "test", np.arange(len(images)), cs, KeyStream(secret_from_seed(seed), mode))


@pytest.fixture(scope="module")
def scenes(scenes_test_slice):
    src = open_source("folder", str(scenes_test_slice), split="test")
    return np.concatenate([b.images for b in src.batches("test")])


# ------------------------------------------------------------------------------------------------
# metrics


def test_identical_images_ssim_one_psnr_inf_capped(sample_images):
    x = sample_images[:5]
    assert np.allclose(metrics.ssim(x, x), 1.0)
    assert np.allclose(metrics.ssim_colour(x, x), 1.0)
    p = metrics.psnr(x, x)
    assert np.isinf(p).all()
    assert metrics.summary({"psnr": p})["psnr"]["mean"] == metrics.PSNR_CAP


def test_psnr_of_a_known_mse(sample_images):
    x = np.clip(sample_images[:4], 10, 245).astype(np.uint8)
    y = x.copy()
    y[..., 0] += 6  # squared error 36 on a third of the values: MSE 12
    expected = 10 * np.log10(255.0**2 / 12.0)
    assert np.allclose(metrics.psnr(x, y), expected)
    assert expected == pytest.approx(37.3390, abs=1e-4)  # 10 log10(65025 / 12)


def test_luminance_weights():
    red = np.zeros((1, 1, 1, 3), np.uint8)
    red[..., 0] = 255
    assert metrics.luminance(red).item() == pytest.approx(0.299 * 255)
    assert metrics.luminance(np.full((1, 1, 1, 3), 200, np.uint8)).item() == pytest.approx(200.0)


def _ssim_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s SSIM with an explicit 11x11 Gaussian window (sigma 1.5), over the positions
    where the window fits inside the image, in plain numpy."""
    r = np.arange(-5, 6)
    g = np.exp(-(r**2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    h, w = a.shape
    vals = []
    C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    for i in range(5, h - 5):
        for j in range(5, w - 5):
            pa, pb = a[i - 5 : i + 6, j - 5 : j + 6], b[i - 5 : i + 6, j - 5 : j + 6]
            ma, mb = (win * pa).sum(), (win * pb).sum()
            va, vb = (win * pa * pa).sum() - ma**2, (win * pb * pb).sum() - mb**2
            cov = (win * pa * pb).sum() - ma * mb
            vals.append((2 * ma * mb + C1) * (2 * cov + C2) / ((ma**2 + mb**2 + C1) * (va + vb + C2)))
    return float(np.mean(vals))


def test_ssim_matches_a_hand_computation(sample_images):
    x, y = sample_images[:2], sample_images[2:4]
    got = metrics.ssim(x, y)
    for k in range(2):
        want = _ssim_by_hand(metrics.luminance(x[k]), metrics.luminance(y[k]))
        assert got[k] == pytest.approx(want, abs=1e-9)
    assert (got < 0.9).all()


def test_ssim_of_a_negative_is_negative(sample_images):
    x = sample_images[:8]
    assert (metrics.ssim(x, 255 - x) < 0).all()


def test_metrics_reject_bad_shapes(sample_images):
    with pytest.raises(ValueError, match="one shape"):
        metrics.ssim(sample_images[:2], sample_images[:3])
    with pytest.raises(ValueError, match="11x11"):
        metrics.ssim(sample_images[:1, :8, :8], sample_images[:1, :8, :8])


# ------------------------------------------------------------------------------------------------
# global variants


@pytest.mark.parametrize("cs", [False, True])
def test_ssim_all_equals_scikit_image_per_transform(sample_images, cs):
    x = sample_images[:6]
    rec = fold(_enc(x, cs), cs)
    got = variants.ssim_all(rec, x, cs, chunk=4)
    ts = variants.transforms(cs)
    assert got.shape == (6, len(ts)) == (6, 48 if cs else 8)
    want = np.stack([metrics.ssim(x, variants.apply(rec, p, s)) for p, s in ts], axis=1)
    np.testing.assert_allclose(got, want, atol=1e-6)  # float32 per-transform arithmetic


def test_best_undoes_a_global_transform(sample_images):
    x = sample_images[:5]
    perm, neg = np.array([2, 0, 1]), np.array([True, False, True])
    rec = variants.apply(x, perm, neg)
    out, k = variants.best(rec, x, cs=True)
    np.testing.assert_array_equal(out, x)


# ------------------------------------------------------------------------------------------------
# fold and neighbour attacks


@pytest.mark.parametrize("cs", [False, True])
def test_fold_attack_is_exactly_key_invariant(sample_images, cs):
    x = sample_images[:20]
    e1, e2 = _enc(x, cs, seed=1), _enc(x, cs, seed=2, mode="same")
    assert not np.array_equal(e1, e2)
    np.testing.assert_array_equal(fold(e1, cs), fold(e2, cs))
    np.testing.assert_array_equal(fold(e1, cs), fold(x, cs))


@pytest.mark.parametrize("cs", [False, True])
def test_nearest_rule_reduces_to_the_fold(sample_images, cs):
    e = _enc(sample_images[:30], cs)
    np.testing.assert_array_equal(neighbour_attack(e, cs, "nearest"), 255 - fold(e, cs))


@pytest.mark.parametrize("cs", [False, True])
def test_neighbour_attack_is_key_invariant(sample_images, cs):
    x = sample_images[:10]
    r1 = neighbour_attack(_enc(x, cs, seed=1), cs)
    r2 = neighbour_attack(_enc(x, cs, seed=3), cs)
    np.testing.assert_array_equal(r1, r2)
    assert r1.dtype == np.uint8 and r1.shape == x.shape


def test_extrapolation_follows_a_ramp_through_mid_grey():
    # a grey ramp 40 -> 214 along each row: the fold bounces back at 127.5, extrapolation does not
    ramp = np.linspace(40, 214, 48).round().astype(np.uint8)
    x = np.repeat(np.repeat(ramp[None, None, :, None], 24, axis=1), 3, axis=3)
    x = np.ascontiguousarray(x)
    e = _enc(x, False)
    rec, _ = variants.best(neighbour_attack(e, False, "extrapolate"), x, False)
    np.testing.assert_array_equal(rec, x)
    folded, _ = variants.best(fold(e, False), x, False)
    assert not np.array_equal(folded, x)


def test_neighbour_attack_on_odd_shapes(sample_images):
    x = np.ascontiguousarray(sample_images[:3, :17, :29])
    for cs in (False, True):
        r = neighbour_attack(_enc(x, cs), cs)
        assert r.shape == x.shape
        # every output value is one of the two readings of the fold
        f = fold(_enc(x, cs), cs)
        if not cs:
            assert ((r == f) | (r == 255 - f)).all()
    with pytest.raises(ValueError, match="rule"):
        neighbour_attack(x, False, "magic")


@pytest.mark.parametrize("cs", [False, True])
def test_training_free_attacks_beat_the_encrypted_baseline_on_real_photos(scenes, cs):
    from attack import suite

    e = _enc(scenes, cs)
    res = suite.training_free(e, scenes, cs, colour=False)
    base = res["encrypted"]["summary"]["ssim"]["mean"]
    assert base < 0.1
    ssim = {k: r["summary"]["ssim"]["mean"] for k, r in res.items()}
    # measured on this slice: fold about 0.55, neighbour (extrapolation) about 0.33
    assert ssim["fold"] > base + 0.4
    assert ssim["neighbour"] > base + 0.2
    assert ssim["fold"] >= ssim["fold-raw"]


# ------------------------------------------------------------------------------------------------
# learned attacks


def test_pixel_linear_backward_matches_autograd():
    torch.manual_seed(0)
    layer = LocallyConnected1x1(3, 4, 3, 5).double()
    x = torch.randn(2, 3, 3, 4, dtype=torch.double, requires_grad=True)
    torch.autograd.gradcheck(lambda t: layer(t), (x,))
    # reference: the same map with einsum and autograd
    y = layer(x)
    ref = torch.einsum("nchw,hwcd->ndhw", x, layer.weight.reshape(3, 4, 3, 5)) + \
        layer.bias.reshape(3, 4, 5).permute(2, 0, 1)[None]
    torch.testing.assert_close(y, ref)


def test_locally_connected_weights_are_not_shared():
    torch.manual_seed(0)
    net = COANet(4, 4)
    x = torch.rand(2, 3, 4, 4)
    y0 = net(x)
    with torch.no_grad():
        net.layers[0].weight[5] += 1.0  # position 5 = row 1, column 1
    diff = (net(x) - y0).detach().abs().sum(dim=(0, 1))
    assert diff[1, 1] > 0
    diff[1, 1] = 0
    assert float(diff.detach().sum()) == 0.0


def test_coa_trains_a_few_steps_and_aligns_by_key(sample_images):
    x = sample_images[:64]
    e = _enc(x, True)
    cfg = TrainConfig(epochs=1, batch_size=16, max_steps=2, loss_scale=32 * 32)
    model = fit(COANet(32, 32), e, x, cfg)
    assert len(cfg.log) == 1 and np.isfinite(cfg.log[0]["loss"])
    rec = predict(model, e[:10])
    assert rec.shape == (10, 32, 32, 3) and rec.dtype == np.uint8
    # alignment: shuffled sample keys pick the matching originals
    keys = np.array([f"test_{i:06d}" for i in (7, 2, 9)])
    np.testing.assert_array_equal(align_by_key(keys, "test", x, np.arange(64)), x[[7, 2, 9]])
    src = SampleSource(split="test")
    np.testing.assert_array_equal(plain_for_keys(src, "test", keys), sample_images[[7, 2, 9]])


def test_lr_milestones_scale_with_epochs():
    assert TrainConfig().schedule() == [40, 60]
    assert TrainConfig(epochs=7).schedule() == [4, 6]
    assert TrainConfig(epochs=7, milestones=[2]).schedule() == [2]


@pytest.mark.parametrize("cs", [False, True])
def test_unet_candidate_head_stays_between_the_readings(sample_images, cs):
    torch.manual_seed(0)
    x = sample_images[:4]
    f = unet_input(_enc(x, cs), cs)
    net = UNet(8, cs).eval()
    with torch.no_grad():
        inp = torch.from_numpy(f).permute(0, 3, 1, 2).float() / 255
        out = net(inp).permute(0, 2, 3, 1).numpy() * 255
    lo = f.min(axis=-1, keepdims=True) if cs else f
    assert (out >= lo - 1e-3).all() and (out <= 255 - lo + 1e-3).all()
    cfg = TrainConfig(epochs=1, batch_size=4, max_steps=1, optimizer="adam", lr=1e-3, weight_decay=0.0)
    fit(UNet(8, cs), f, x, cfg)
    assert np.isfinite(cfg.log[0]["loss"])


@pytest.mark.slow
def test_coa_experiment_writes_table2_layout(tmp_path):
    from attack.coa import main

    out = tmp_path / "coa"
    rc = main(["--source", "sample", "--out", str(out), "--epochs", "1", "--unet-epochs", "1", "--train-limit", "64",
               "--test-limit", "24", "--batch-size", "32", "--attacks", "encrypted,fold,neighbour,coa-1x1,unet",
               "--grid", "4"])
    assert rc == 0
    rec = json.loads((out / "metrics.json").read_text())
    assert set(rec["conditions"]) == {"np-same", "np-independent", "npcs-same", "npcs-independent"}
    for cond in rec["conditions"].values():
        assert cond["attacks"]["coa-1x1"]["summary"]["n"] == 24
        # key-free attacks give the same numbers under both key modes
    for s in ("np", "npcs"):
        a, b = rec["conditions"][f"{s}-same"]["attacks"], rec["conditions"][f"{s}-independent"]["attacks"]
        assert a["fold"]["summary"] == b["fold"]["summary"]
        assert a["unet"]["summary"] == b["unet"]["summary"]
    table = (out / "table.md").read_text()
    assert "| NP | " in table and "| NP+CS | " in table and "## coa-1x1" in table
    assert (out / "grid-npcs-independent.png").stat().st_size > 0
