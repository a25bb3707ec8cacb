"""The pixel-based cipher: exact transforms, inverses, key statistics, the key-free invariant."""
import numpy as np
import pytest

from ppdata.cipher import PERMUTATIONS, PixelKey, PixelScheme, fold, get_scheme, scheme_from_manifest
from ppdata.keys import KeyStream, secret_from_seed


def reference_encrypt(x, key: PixelKey):
    """Direct transcription of the paper: NP by key bit, then out[c] = in[P[k, c]]."""
    y = np.where(key.np_mask, 255 - x, x).astype(np.uint8)
    if key.cs_code is not None:
        y = np.take_along_axis(y, PERMUTATIONS[key.cs_code].astype(np.intp), axis=-1)
    return y


def stream(mode="independent", seed=0):
    return KeyStream(secret_from_seed(seed), mode)


def test_paper_table1_order():
    # 0:(R,G,B) 1:(R,B,G) 2:(G,R,B) 3:(G,B,R) 4:(B,R,G) 5:(B,G,R)
    assert PERMUTATIONS.tolist() == [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]]


def test_np_exact_values():
    x = np.array([[[[0, 100, 255]]]], np.uint8)
    key = PixelKey(np.array([[[[True, False, True]]]]), None)
    assert PixelScheme(cs=False).encrypt(x, key).tolist() == [[[[255, 100, 0]]]]


@pytest.mark.parametrize("code", range(6))
def test_cs_exact_permutation_per_code(code):
    x = np.array([[[[10, 20, 30]]]], np.uint8)
    key = PixelKey(np.zeros((1, 1, 1, 3), bool), np.array([[[code]]], np.uint8))
    y = PixelScheme(cs=True).encrypt(x, key)
    expected = [[10, 20, 30][c] for c in PERMUTATIONS[code]]
    assert y[0, 0, 0].tolist() == expected
    # a true permutation: no channel duplicated (the aliased-view bug would duplicate one)
    assert sorted(y[0, 0, 0].tolist()) == [10, 20, 30]


@pytest.mark.parametrize("shape", [(32, 32), (5, 7), (1, 1), (96, 96), (3, 64)])
@pytest.mark.parametrize("cs", [False, True])
@pytest.mark.parametrize("mode", ["independent", "same"])
def test_matches_reference_and_round_trips(sample_images, shape, cs, mode):
    rng = np.random.default_rng(1)
    h, w = shape
    if (h, w) == (32, 32):
        x = sample_images[:40]
    else:
        x = rng.integers(0, 256, (12, h, w, 3), dtype=np.uint8)
    scheme = PixelScheme(cs=cs)
    key = scheme.derive_keys(stream(mode), "train", np.arange(len(x)), x.shape[1:])
    y = scheme.encrypt(x, key)
    assert y.dtype == np.uint8 and y.shape == x.shape
    np.testing.assert_array_equal(y, reference_encrypt(x, key))
    np.testing.assert_array_equal(scheme.decrypt(y, key), x)
    if x.size > 3000:
        assert (y != x).mean() > 0.4  # it did something


def test_decrypt_with_wrong_key_fails(sample_images):
    x = sample_images[:8]
    s = PixelScheme(cs=True)
    k1 = s.derive_keys(stream(seed=1), "test", np.arange(8), x.shape[1:])
    k2 = s.derive_keys(stream(seed=2), "test", np.arange(8), x.shape[1:])
    wrong = s.decrypt(s.encrypt(x, k1), k2)
    assert (wrong != x).mean() > 0.4


def test_np_flip_rate_and_independence():
    s = PixelScheme(cs=False)
    k = s.derive_keys(stream(), "train", np.arange(200), (32, 32, 3)).np_mask.reshape(200, -1)
    rate = k.mean()
    assert abs(rate - 0.5) < 5 * np.sqrt(0.25 / k.size)
    # independent keys: two different images agree on about half the bits, never identical
    agree = (k[:-1] == k[1:]).mean(axis=1)
    assert np.all(np.abs(agree - 0.5) < 0.05)
    # bits within an image are not correlated with their neighbours
    lag1 = (k[:, :-1] == k[:, 1:]).mean()
    assert abs(lag1 - 0.5) < 0.01


def test_same_key_gives_identical_keys_for_all_images_and_splits():
    s = PixelScheme(cs=True)
    st = stream("same")
    a = s.derive_keys(st, "train", np.arange(5), (8, 8, 3))
    b = s.derive_keys(st, "test", np.array([123456]), (8, 8, 3))
    for i in range(5):
        np.testing.assert_array_equal(a.np_mask[i], b.np_mask[0])
        np.testing.assert_array_equal(a.cs_code[i], b.cs_code[0])


def test_cs_codes_uniform():
    s = PixelScheme(cs=True)
    codes = s.derive_keys(stream(), "train", np.arange(100), (32, 32, 3)).cs_code
    assert codes.min() == 0 and codes.max() == 5
    counts = np.bincount(codes.ravel(), minlength=6)
    expected = codes.size / 6
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 25.7, counts  # p ~ 1e-4 for 5 degrees of freedom; deterministic (seeded)


def test_keys_depend_only_on_index_not_on_batching():
    s = PixelScheme(cs=True)
    st = stream()
    whole = s.derive_keys(st, "train", np.arange(10), (6, 6, 3))
    parts = s.derive_keys(st, "train", np.array([7, 2, 9]), (6, 6, 3))
    for r, i in enumerate([7, 2, 9]):
        np.testing.assert_array_equal(parts.np_mask[r], whole.np_mask[i])
        np.testing.assert_array_equal(parts.cs_code[r], whole.cs_code[i])
    other_split = s.derive_keys(st, "test", np.array([7]), (6, 6, 3))
    assert (other_split.np_mask[0] != whole.np_mask[7]).mean() > 0.3


def test_fold_is_key_free_invariant(sample_images):
    x = sample_images[:20]
    for cs in (False, True):
        s = PixelScheme(cs=cs)
        for seed in (1, 2):
            k = s.derive_keys(stream(seed=seed), "test", np.arange(20), x.shape[1:])
            np.testing.assert_array_equal(fold(s.encrypt(x, k), cs), fold(x, cs))
    f = fold(x, cs=True)
    assert f.max() <= 127 and (np.diff(f.astype(int), axis=-1) >= 0).all()


def test_scheme_registry_and_manifest_round_trip():
    s = get_scheme("pixel", cs=True)
    assert s.describe() == {"name": "pixel", "encrypted": True, "np": True, "cs": True}
    s2 = scheme_from_manifest(s.describe())
    assert isinstance(s2, PixelScheme) and s2.cs and s2.np_transform
    with pytest.raises(ValueError, match="unknown scheme"):
        get_scheme("nope")
    plain = get_scheme("plain")
    assert not plain.encrypted


def test_bad_inputs_rejected():
    s = PixelScheme()
    k = s.derive_keys(stream(), "t", np.arange(2), (4, 4, 3))
    with pytest.raises(TypeError):
        s.encrypt(np.zeros((2, 4, 4, 3), np.float32), k)
    with pytest.raises(ValueError):
        s.encrypt(np.zeros((2, 4, 4), np.uint8), k)
    with pytest.raises(ValueError):
        s.encrypt(np.zeros((2, 5, 4, 3), np.uint8), k)
