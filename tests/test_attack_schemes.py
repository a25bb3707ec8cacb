"""Attacks on every scheme, the attacker's choice of transform, exact scoring, the candidate classifier."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from attack import candidates, chooser, jigsaw, known_plaintext, le, metrics, variants
from ppdata.cipher import fold, get_scheme
from ppdata.keys import KeyStream, secret_from_seed
from ppdata.sources import open_source

SCHEMES = [("pixel", {"cs": False}), ("pixel", {"cs": True}), ("icip", {"cs": True}), ("etc", {}),
           ("etc", {"cs": False, "block_size": 8}), ("le", {}), ("chaos", {})]


def _encrypt(x, name, opts, mode, seed=3):
    s = get_scheme(name, **opts)
    keys = s.derive_keys(KeyStream(secret_from_seed(seed), mode), "test", np.arange(len(x)), x.shape[1:])
    return s, s.encrypt(x, keys)


@pytest.fixture(scope="module")
def scenes(scenes_test_slice):
    src = open_source("folder", str(scenes_test_slice), split="test")
    return np.concatenate([b.images for b in src.batches("test")])


# ------------------------------------------------------------------------------------------------
# exact scoring


def test_batched_metrics_equal_scikit_image_per_image(sample_images):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    x, y = sample_images[:6], fold(sample_images[:6], True)
    lum = [structural_similarity(a, b, **metrics.SSIM_SETTINGS)
           for a, b in zip(metrics.luminance(x), metrics.luminance(y))]
    col = [np.mean([structural_similarity(a[..., c].astype(float), b[..., c].astype(float), **metrics.SSIM_SETTINGS)
                    for c in range(3)]) for a, b in zip(x, y)]
    np.testing.assert_allclose(metrics.ssim(x, y), lum, rtol=0, atol=1e-12)
    np.testing.assert_allclose(metrics.ssim_colour(x, y), col, rtol=0, atol=1e-12)
    want = [peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(x, y)]
    np.testing.assert_allclose(metrics.psnr(x, y), want, rtol=1e-12)


@pytest.mark.parametrize("cs", [False, True])
def test_variant_scores_equal_scoring_the_transformed_images(sample_images, cs):
    x = sample_images[:12]
    rec = fold(_encrypt(x, "pixel", {"cs": cs}, "independent")[1], cs)
    ts = variants.transforms(cs)
    rng = np.random.default_rng(0)
    picks = {"oracle": "oracle", "raw": np.zeros(12, np.int64), "random": rng.integers(0, len(ts), 12),
             "callable": lambda r: np.full(len(r), len(ts) - 1)}
    res = variants.score(x, {"f": (rec, ts, picks)}, chunk=5)["f"]
    assert res["every"].shape == (12, len(ts))
    for label, p in res["picks"].items():
        img = variants.apply_index(rec, p["choice"], cs)
        want = metrics.evaluate(x, img)
        for k in ("ssim", "ssim_colour", "psnr"):
            np.testing.assert_allclose(p[k], want[k], rtol=0, atol=1e-9, err_msg=f"{label} {k}")
    np.testing.assert_array_equal(res["picks"]["oracle"]["choice"], res["every"].argmax(axis=1))
    assert (res["picks"]["oracle"]["ssim"] >= res["picks"]["random"]["ssim"] - 1e-6).all()


# ------------------------------------------------------------------------------------------------
# known plaintext


@pytest.mark.parametrize("name,opts", SCHEMES)
def test_one_known_pair_recovers_a_common_key(sample_images, name, opts):
    x = sample_images[:20]
    s, e = _encrypt(x, name, opts, "same")
    rec = known_plaintext.attack(s, x[:1], e[:1], e[1:])
    exact = (rec == x[1:]).mean()
    if name in ("pixel", "icip") and opts.get("cs"):
        assert exact > 0.97  # a pixel with two equal values leaves its colour order open
        rec3 = known_plaintext.attack(s, x[:3], e[:3], e[3:])  # more pairs narrow it
        assert (rec3 == x[3:]).mean() > exact
    else:
        assert exact == 1.0


def test_known_plaintext_does_not_apply_to_independent_keys(sample_images):
    x = sample_images[:10]
    s, e = _encrypt(x, "chaos", {}, "independent")
    rec = known_plaintext.attack(s, x[:1], e[:1], e[1:])
    assert (rec == x[1:]).mean() < 0.05  # a fresh keystream per image: the first key decrypts nothing else


# ------------------------------------------------------------------------------------------------
# LE and EtC


def test_le_components_reconstruct_images_under_their_own_keys(scenes):
    x = scenes[:12]
    _, e = _encrypt(x, "le", {}, "independent")
    rec = le.attack(e, 4)
    best = variants.ssim_all(rec, x, True).max(axis=1)
    base = metrics.ssim(x, e)
    # measured on these photos: about 0.8 (oracle over the 48 global transforms); encrypted about 0.02
    assert best.mean() > 0.6 and base.mean() < 0.1


def test_le_key_estimate_under_one_key_is_nearly_exact(scenes):
    x = scenes[:24]
    _, e = _encrypt(x, "le", {}, "same")
    rec = le.attack(e, 4, shared=True)
    assert variants.ssim_all(rec, x, True).max(axis=1).mean() > 0.9


def test_jigsaw_variants_contain_the_plain_block():
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    v = jigsaw.variants(blocks)
    assert v.shape == (5, 96, 4, 4, 3)
    np.testing.assert_array_equal(v[:, 0], blocks)
    assert len({v[0, i].tobytes() for i in range(96)}) == 96


def test_jigsaw_solves_a_puzzle_under_one_key(sample_images):
    """Pieces of 8x8 blocks of 32x32 images under one EtC key: the summed evidence of 16 images
    reassembles them (right up to a global transform)."""
    x = sample_images[:16]
    _, e = _encrypt(x, "etc", {"block_size": 8}, "same")
    rec = jigsaw.attack(e, 8, shared=True, pool=16)
    best = np.max([variants.ssim_all(np.ascontiguousarray(jigsaw.geometry(rec, g)), x, True).max(axis=1)
                   for g in range(8)], axis=0)
    assert best.mean() > 0.9


# ------------------------------------------------------------------------------------------------
# the attacker's choice


def test_chooser_learns_to_pick_the_natural_variant(sample_images):
    """Trained on plain images against their own transforms, the chooser picks the plain image
    more often than chance among the 8 sign patterns."""
    ts = variants.transforms(False)
    x = sample_images
    q = np.zeros((len(x), len(ts)))
    q[:, 0] = 1.0
    p = chooser.train(chooser.features(x[:80], ts), q[:80], fixed=False)
    picks = p.pick(chooser.features(x[80:], ts))
    assert (picks == 0).mean() > 3 / 8
    assert p.pick_common(chooser.features(x[80:], ts)) == 0


def test_picker_falls_back_to_a_fixed_transform_with_few_images():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(30, 8, 57)).astype(np.float32)
    q = rng.random((30, 8))
    q[:, 3] += 1
    p = chooser.train(f, q)
    assert p.model is None and p.constant == 3 and "fixed" in p.report["rule"]


# ------------------------------------------------------------------------------------------------
# the candidate classifier


@pytest.mark.parametrize("cs", [False, True])
def test_candidates_contain_the_plain_pixel_and_reconstruct_exactly(scenes, cs):
    x = scenes[:3]
    f = torch.from_numpy(fold(x, cs)).permute(0, 3, 1, 2).float()
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    right = candidates.right_candidates(f, t, cs)
    assert right.shape == (3, 48 if cs else 8, 96, 96) and right.any(dim=1).all()
    if not cs:
        assert (right.sum(dim=1) == 1).all()  # NP: p and 255 - p never coincide
    rec = candidates.reconstruct(right.float() * 20, f, cs)
    assert torch.equal(rec.round().to(torch.uint8), t)
    assert float(candidates.set_cross_entropy(right.float() * 20, right)) < 1e-3


def test_candidate_net_is_key_invariant_and_trains(sample_images):
    x = sample_images[:32]
    net = candidates.CandidateUNet(True, width=4, levels=3)
    e1 = fold(_encrypt(x, "pixel", {"cs": True}, "independent", seed=1)[1], True)
    e2 = fold(_encrypt(x, "pixel", {"cs": True}, "same", seed=2)[1], True)
    np.testing.assert_array_equal(e1, e2)  # its input, the fold, is the same under any key
    cfg = candidates.BudgetConfig(minutes=1.0, batch=4, crop=16, max_steps=3)
    candidates.fit(net, e1, x, cfg)
    assert cfg.log[-1]["step"] == 3 and np.isfinite(cfg.log[-1]["loss"])
    out = candidates.predict(net, e1[:5, :30, :30])  # sides not a multiple of 4: padded and cropped back
    assert out.shape == (5, 30, 30, 3) and out.dtype == np.uint8
    f = e1[:5, :30, :30]
    readings = np.concatenate([f, 255 - f], axis=-1)  # (..., 6): every output value is one of its pixel's
    assert (out[..., :, None] == readings[..., None, :]).any(axis=-1).all()
