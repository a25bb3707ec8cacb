"""The comparison schemes (etc, le, icip, chaos): exact steps, round trips, keys, CLI."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from ppdata import open_shards
from ppdata.cipher import PERMUTATIONS, SCHEMES, get_scheme, scheme_from_manifest
from ppdata.cli import cli
from ppdata.errors import PpdataError
from ppdata.keys import KeyStream, secret_from_seed
from ppdata.pipeline import encrypt as run_encrypt
from ppdata.schemes import (ChaosScheme, EtcKey, EtcScheme, KeyExtension, LeKey, LeScheme, _geometry_table,
                            _rc4_numpy, le_pack, le_unpack, logistic_rc4_key, rc4_keystream,
                            uniform_permutations)
from ppdata.sources import ArraySource, FolderSource, SampleSource

CASES = [("etc", {}), ("etc", {"block_size": 2, "cs": False}), ("le", {}), ("le", {"block_size": 2}),
         ("icip", {}), ("icip", {"cs": True}), ("chaos", {}), ("chaos", {"rc4_key_bytes": 256})]
IDS = [n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o in CASES]


def stream(mode="independent", seed=1):
    return KeyStream(secret_from_seed(seed), mode)


def flipped_stream(seed=1, bit=0, mode="independent"):
    s = bytearray(secret_from_seed(seed))
    s[bit // 8] ^= 1 << (bit % 8)
    return KeyStream(bytes(s), mode)


def keys_for(scheme, images, st, split="test"):
    return scheme.derive_keys(st, split, np.arange(len(images)), images.shape[1:])


def random_images(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# registry, round trips, key modes


def test_registered_and_rebuilt_from_manifest():
    assert {"pixel", "etc", "le", "icip", "chaos"} <= set(SCHEMES)
    for name, opts in CASES:
        s = get_scheme(name, **opts)
        again = scheme_from_manifest(json.loads(json.dumps(s.describe())))
        assert type(again) is type(s) and again.describe() == s.describe() and s.describe()["encrypted"]
    assert get_scheme("etc").describe() == {"name": "etc", "encrypted": True, "block_size": 4, "cs": True}
    with pytest.raises(TypeError):
        get_scheme("le", cs=True)
    for bad in (0, -4, 2.5, True):
        with pytest.raises(ValueError):
            get_scheme("etc", block_size=bad)


@pytest.mark.parametrize("mode", ["independent", "same"])
@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_round_trip_on_real_images(sample_images, name, opts, mode):
    s = get_scheme(name, **opts)
    x = sample_images
    k = keys_for(s, x, stream(mode))
    e = s.encrypt(x, k)
    assert e.dtype == np.uint8 and e.shape == x.shape and e.flags.c_contiguous
    assert np.mean(e != x) > 0.4  # icip NP alone negates half of the values, the others nearly all
    np.testing.assert_array_equal(s.decrypt(e, k), x)
    # the keys depend only on (secret, mode, split, index): derive them again for decryption
    np.testing.assert_array_equal(s.decrypt(e, keys_for(s, x, stream(mode))), x)


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_same_mode_is_one_key_independent_is_not(sample_images, name, opts):
    s = get_scheme(name, **opts)
    x = np.concatenate([sample_images[:4], sample_images[:4]])  # images 0..3 again as 4..7
    same = s.encrypt(x, keys_for(s, x, stream("same")))
    np.testing.assert_array_equal(same[:4], same[4:])
    # one key for every split as well
    other = s.encrypt(x[:4], keys_for(s, x[:4], stream("same"), split="train"))
    np.testing.assert_array_equal(other, same[:4])
    ind = s.encrypt(x, keys_for(s, x, stream("independent")))
    assert all(np.mean(ind[i] != ind[i + 4]) > 0.3 for i in range(4))


@pytest.mark.parametrize("name,opts,h,w", [
    ("etc", {"block_size": 2}, 6, 10), ("etc", {"block_size": 3}, 9, 6), ("le", {"block_size": 2}, 10, 6),
    ("le", {"block_size": 3}, 3, 12), ("icip", {"cs": True}, 7, 5), ("chaos", {}, 7, 5), ("chaos", {}, 1, 1),
])
def test_round_trip_odd_and_rectangular_sizes(name, opts, h, w):
    s = get_scheme(name, **opts)
    x = random_images(6, h, w)
    for mode in ("independent", "same"):
        k = keys_for(s, x, stream(mode))
        np.testing.assert_array_equal(s.decrypt(s.encrypt(x, k), k), x)


@pytest.mark.parametrize("name", ["etc", "le"])
def test_block_sizes(sample_images, name):
    x = sample_images[:8]
    for b in (1, 2, 4, 8, 16, 32):
        s = get_scheme(name, block_size=b)
        k = keys_for(s, x, stream())
        e = s.encrypt(x, k)
        np.testing.assert_array_equal(s.decrypt(e, k), x)
        assert np.mean(e != x) > 0.5


@pytest.mark.parametrize("name", ["etc", "le"])
def test_indivisible_sizes_are_refused(name, tmp_path):
    s = get_scheme(name, block_size=4)
    for shape in ((30, 32, 3), (32, 6, 3), (3, 3, 3)):
        with pytest.raises(ValueError, match="4x4 blocks"):
            s.check_shape(shape)
        with pytest.raises(ValueError, match="4x4 blocks"):
            s.key_nbytes(shape)
    x = random_images(2, 30, 32)
    good = keys_for(s, random_images(2, 32, 32), stream())
    with pytest.raises(ValueError, match="blocks"):
        s.encrypt(x, good)
    # through the pipeline: a one-line error naming the scheme, nothing marked complete
    src = ArraySource({"test": (x, np.zeros(2, np.int64))}, ["a"])
    with pytest.raises(PpdataError, match=f"{name}: images of 30x32 pixels"):
        run_encrypt(src, tmp_path / "out", scheme=s, keys=stream(), progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_empty_batches(sample_images):
    for name, opts in CASES:
        s = get_scheme(name, **opts)
        x = sample_images[:0]
        for mode in ("independent", "same"):
            k = keys_for(s, x, stream(mode))
            assert s.encrypt(x, k).shape == x.shape and s.decrypt(x, k).shape == x.shape


def test_key_that_does_not_fit_is_refused(sample_images):
    x = sample_images[:4]
    for name, opts in CASES:
        s = get_scheme(name, **opts)
        k = keys_for(s, x[:3], stream())
        with pytest.raises(ValueError):
            s.encrypt(x, k)


# ---------------------------------------------------------------------------------------------
# key sensitivity: the secret is the key


@pytest.mark.parametrize("name,opts,min_changed", [
    ("etc", {}, 0.9), ("le", {}, 0.9), ("icip", {}, 0.4), ("icip", {"cs": True}, 0.6), ("chaos", {}, 0.98),
])
def test_one_bit_of_the_secret_changes_everything(sample_images, name, opts, min_changed):
    s = get_scheme(name, **opts)
    x = sample_images[:20]
    k = keys_for(s, x, stream())
    e = s.encrypt(x, k)
    for bit in (0, 131, 255):
        k2 = keys_for(s, x, flipped_stream(bit=bit))
        assert np.mean(s.encrypt(x, k2) != e) > min_changed
        wrong = s.decrypt(e, k2)  # a wrong key does not decrypt
        assert np.mean(wrong == x) < 0.6
        assert np.abs(wrong.astype(int) - x).mean() > 25


def test_chaos_every_bit_of_key_material_matters():
    s = ChaosScheme()
    base = np.random.default_rng(3).integers(0, 256, 12, dtype=np.uint8)
    rows = np.tile(base, (97, 1))
    for bit in range(96):
        rows[bit + 1, bit // 8] ^= 0x80 >> (bit % 8)
    k = s.keys_from_material(rows, (8, 8, 3))
    assert len(set(zip(k.x0.tolist(), k.r.tolist()))) == 97  # 97 distinct (x0, r)
    changed = (k.keystream[1:] != k.keystream[0]).mean(axis=1)
    assert changed.min() > 0.9


def test_block_scheme_keys_use_their_material():
    """Each field of the material layout reaches the ciphertext (no dead key bytes in front)."""
    x = random_images(1, 8, 8)
    for s in (EtcScheme(block_size=4, cs=True), LeScheme(block_size=2)):
        n = s.key_nbytes(x.shape[1:])
        mat = np.random.default_rng(5).integers(0, 256, (1, n), dtype=np.uint8)
        e = s.encrypt(x, s.keys_from_material(mat, x.shape[1:]))
        if isinstance(s, EtcScheme):
            _, off = s._layout(x.shape[1:])
            probes = [off[0] + 7, off[1], off[2], off[3]]  # top byte of a word, geometry, NP, first code byte
        else:
            probes = [7, 8 * s.components()]  # top byte of the first word, first flip byte
        for p in probes:
            m2 = mat.copy()
            m2[0, p] ^= 0xFF
            assert not np.array_equal(s.encrypt(x, s.keys_from_material(m2, x.shape[1:])), e), p


# ---------------------------------------------------------------------------------------------
# exact values of every step


def test_etc_steps_by_hand():
    x = (np.arange(24, dtype=np.uint8) + 10).reshape(1, 2, 4, 3)  # two 2x2 blocks side by side
    key = EtcKey(perm=np.array([[1, 0]]), geometry=np.array([[1, 4]], np.uint8),
                 negate=np.array([[True, False]]), cs_code=np.array([[0, 5]], np.uint8))
    s = EtcScheme(block_size=2, cs=True)
    e = s.encrypt(x, key)
    # output block 0 = input block 1 (columns 2-3) turned 90 degrees counter-clockwise, negated
    b1 = x[0, :, 2:4]
    np.testing.assert_array_equal(e[0, :, 0:2], 255 - np.rot90(b1, 1, axes=(0, 1)))
    np.testing.assert_array_equal(e[0, 0, 0], [236, 235, 234])  # 255 - pixel (0, 3) = 255 - (19, 20, 21)
    # output block 1 = input block 0 mirrored left-right, colour order 5 = (B, G, R)
    np.testing.assert_array_equal(e[0, :, 2:4], np.fliplr(x[0, :, 0:2])[..., ::-1])
    np.testing.assert_array_equal(e[0, 0, 2], [15, 14, 13])  # pixel (0, 1) = (13, 14, 15) reversed
    np.testing.assert_array_equal(s.decrypt(e, key), x)


def test_etc_geometry_codes_are_the_eight_symmetries():
    block = np.arange(9).reshape(3, 3)
    t = _geometry_table(3)
    seen = set()
    for g in range(8):
        want = np.rot90(block, g & 3)
        if g & 4:
            want = np.fliplr(want)
        np.testing.assert_array_equal(block.reshape(-1)[t[g]].reshape(3, 3), want)
        seen.add(want.tobytes())
    assert len(seen) == 8


def test_etc_colour_shuffle_follows_table_1_and_np_covers_the_block():
    x = random_images(6, 2, 2)
    s = EtcScheme(block_size=2, cs=True)
    key = EtcKey(perm=np.zeros((6, 1), np.int64), geometry=np.zeros((6, 1), np.uint8),
                 negate=np.zeros((6, 1), bool), cs_code=np.arange(6, dtype=np.uint8)[:, None])
    e = s.encrypt(x, key)
    for k in range(6):
        np.testing.assert_array_equal(e[k], x[k][..., PERMUTATIONS[k]])
    key = EtcKey(key.perm, key.geometry, np.ones((6, 1), bool), np.zeros((6, 1), np.uint8))
    np.testing.assert_array_equal(s.encrypt(x, key), 255 - x)


def test_le_nibbles_by_hand():
    x = np.array([[[[0xA7, 0x3C, 0xF0]]]], np.uint8)  # one pixel, M = 1: components 7 C 0 | A 3 F
    s = LeScheme(block_size=1)
    ident = np.arange(6)[None]
    none = np.zeros((1, 6), bool)
    np.testing.assert_array_equal(s.encrypt(x, LeKey(ident, none)), x)
    flip0 = none.copy()
    flip0[0, 0] = True  # low nibble of R: 7 -> 8
    np.testing.assert_array_equal(s.encrypt(x, LeKey(ident, flip0))[0, 0, 0], [0xA8, 0x3C, 0xF0])
    swap = np.array([[3, 4, 5, 0, 1, 2]])  # low <-> high nibbles
    np.testing.assert_array_equal(s.encrypt(x, LeKey(swap, none))[0, 0, 0], [0x7A, 0xC3, 0x0F])
    allflip = np.ones((1, 6), bool)
    np.testing.assert_array_equal(s.encrypt(x, LeKey(ident, allflip)), 255 - x)
    np.testing.assert_array_equal(le_unpack(x)[0, 0, 0], [7, 0xC, 0, 0xA, 3, 0xF])
    np.testing.assert_array_equal(le_pack(le_unpack(x)), x)


def _reference_le(x, key, rev, m):
    """The author's algorithm, written out block by block: components (low nibbles, then high
    nibbles of the block's bytes in row/column/channel order), reverse where ``rev``, take
    component ``key[j]`` for output j, reverse where ``rev`` again, merge."""
    out = np.empty_like(x)
    d = m * m * 3
    for n in range(x.shape[0]):
        for by in range(0, x.shape[1], m):
            for bx in range(0, x.shape[2], m):
                v = x[n, by:by + m, bx:bx + m].reshape(-1).astype(int)
                c = np.concatenate([v & 15, v >> 4])
                c = np.where(rev, 15 - c, c)
                c = c[key]
                c = np.where(rev, 15 - c, c)
                out[n, by:by + m, bx:bx + m] = ((c[d:] << 4) | c[:d]).reshape(m, m, 3)
    return out


def test_le_matches_the_authors_key_convention(sample_images):
    x = sample_images[:3, :8, :12]
    key = np.random.default_rng(11).permutation(96)  # the author's key: a shuffled arange(2d)
    rev = key > 48  # his rule: reversal positions follow from the key
    s = LeScheme(block_size=4)
    k = LeKey(np.tile(key, (3, 1)), np.tile(rev ^ rev[key], (3, 1)))
    e = s.encrypt(x, k)
    np.testing.assert_array_equal(e, _reference_le(x, key, rev, 4))
    np.testing.assert_array_equal(s.decrypt(e, k), x)
    np.testing.assert_array_equal(_reference_le(e, np.argsort(key), rev, 4), x)  # his inverse


def test_le_same_shuffle_in_every_block():
    s = LeScheme(block_size=4)
    tile = random_images(1, 4, 4)
    x = np.tile(tile, (1, 3, 5, 1))  # 15 identical blocks
    e = s.encrypt(x, keys_for(s, x, stream()))
    blocks = e.reshape(3, 4, 5, 4, 3).transpose(0, 2, 1, 3, 4).reshape(15, -1)
    assert (blocks == blocks[0]).all() and not np.array_equal(blocks[0], tile.reshape(-1))


RFC6229 = {  # RFC 6229 test vectors: key -> keystream bytes 0..31
    bytes(range(1, 6)): "b2396305f03dc027ccc3524a0a1118a86982944f18fc82d589c403a47a0d0919",
    bytes(range(1, 17)): "9ac7cc9a609d1ef7b2932899cde41b975248c4959014126a6e8a84f11d1a9e1c",
    bytes(range(1, 33)): "eaa6bd25880bf93d3f5d1e4ca2611d91cfa45c9f7e714b54bdfa80027cb14380",
}


def _textbook_rc4(key: bytes, n: int) -> bytes:
    s, j = list(range(256)), 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    i = j = 0
    out = []
    for _ in range(n):
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(s[(s[i] + s[j]) % 256])
    return bytes(out)


def test_rc4_test_vectors_both_implementations():
    for key, hexstream in RFC6229.items():
        k = np.frombuffer(key, np.uint8)[None]
        assert _rc4_numpy(k, 32)[0].tobytes().hex() == hexstream
        assert rc4_keystream(k, 32)[0].tobytes().hex() == hexstream
    keys = np.random.default_rng(2).integers(0, 256, (3, 256), dtype=np.uint8)  # 2048-bit keys: numpy only
    got = rc4_keystream(keys, 300)
    for r in range(3):
        assert got[r].tobytes() == _textbook_rc4(keys[r].tobytes(), 300)
    keys32 = keys[:, :32]
    np.testing.assert_array_equal(rc4_keystream(keys32, 500, impl="openssl"), _rc4_numpy(keys32, 500))


def test_chaos_parameters_and_logistic_key_exact():
    x0, r = ChaosScheme.parameters(np.array([[0] * 12, [255] * 12], np.uint8))
    assert x0[0] == 2.0 ** -53 and r[0] == 4 - 2.0 ** -51
    assert x0[1] == 1 - 2.0 ** -53 and r[1] == 4 - 2.0 ** -7
    for a, b in ((0.3, 3.99), (2.0 ** -53, 4 - 2.0 ** -51), (0.7123456789, 3.995)):
        x, want = a, []
        for t in range(1000 + 32):
            x = b * x * (1.0 - x)  # Python floats are IEEE doubles, evaluated left to right
            if t >= 1000:
                want.append(int(x * 1e14) % 256)
        assert logistic_rc4_key(np.array([a]), np.array([b]))[0].tolist() == want


def test_chaos_is_an_xor_with_the_keystream(sample_images):
    s = ChaosScheme()
    x = sample_images[:6]
    k = keys_for(s, x, stream("same"))
    e = s.encrypt(x, k)
    np.testing.assert_array_equal((e ^ x).reshape(6, -1), k.keystream)
    # the price of one key for all images: c1 XOR c2 = x1 XOR x2 (a two-time pad)
    np.testing.assert_array_equal(e[0] ^ e[1], x[0] ^ x[1])
    want = rc4_keystream(logistic_rc4_key(k.x0[:1], k.r[:1]), x[0].size)
    np.testing.assert_array_equal(k.keystream[:1], want)


def test_icip_is_the_pixel_transform(sample_images):
    """The same transform under the same key; but its keys are its own (key separation)."""
    x = sample_images[:10]
    for cs in (False, True):
        a, b = get_scheme("icip", cs=cs), get_scheme("pixel", cs=cs)
        st = stream("same")
        k = keys_for(b, x, st)
        np.testing.assert_array_equal(a.encrypt(x, k), b.encrypt(x, k))
        np.testing.assert_array_equal(a.decrypt(a.encrypt(x, k), k), x)
        assert not np.array_equal(keys_for(a, x, st).np_mask, k.np_mask)


# ---------------------------------------------------------------------------------------------
# permutations and key statistics


def test_uniform_permutations_are_permutations_and_uniform():
    rng = np.random.default_rng(7)
    p = uniform_permutations(rng.integers(0, 2 ** 64, (500, 50), dtype=np.uint64))
    assert (np.sort(p, axis=1) == np.arange(50)).all()
    p3 = uniform_permutations(rng.integers(0, 2 ** 64, (60000, 3), dtype=np.uint64))
    _, counts = np.unique(p3 @ np.array([9, 3, 1]), return_counts=True)
    assert len(counts) == 6
    chi2 = ((counts - 10000) ** 2 / 10000).sum()
    assert chi2 < 25, counts  # df 5: p < 2e-4 for a uniform law


def test_permutation_ties_are_redrawn_exactly():
    words = np.array([[5, 5, 1], [3, 1, 2]], np.uint64)
    with pytest.raises(ValueError, match="equal"):
        uniform_permutations(words)
    fresh = np.array([9, 2, 4], "<u8").view(np.uint8)
    calls = []

    def more(row, nbytes):
        calls.append((row, nbytes))
        return fresh

    p = uniform_permutations(words, more)
    assert calls == [(0, 24)]
    np.testing.assert_array_equal(p, [[1, 2, 0], [1, 2, 0]])


def test_key_extension_hands_out_disjoint_slices():
    st = stream()
    ext = KeyExtension(st, "test", [4, 9], pool=100)
    a, b = ext(0, 60), ext(0, 40)
    np.testing.assert_array_equal(np.concatenate([a, b]), st.extension("test", 4, 100))
    assert not np.array_equal(ext(1, 60), a)
    with pytest.raises(ValueError, match="exhausted"):
        ext(0, 1)


def test_etc_and_le_keys_are_permutations_with_uniform_codes():
    s = EtcScheme(block_size=4)
    k = s.derive_keys(stream(), "train", np.arange(2000), (32, 32, 3))
    assert (np.sort(k.perm, axis=1) == np.arange(64)).all()
    for codes, m in ((k.geometry, 8), (k.cs_code, 6), (k.negate.astype(np.uint8), 2)):
        counts = np.bincount(codes.reshape(-1), minlength=m)
        e = codes.size / m
        assert len(counts) == m and ((counts - e) ** 2 / e).sum() < 40, counts
    first = np.bincount(k.perm[:, 0], minlength=64)  # which block lands first: uniform over 64
    assert ((first - 2000 / 64) ** 2 / (2000 / 64)).sum() < 130
    le = LeScheme().derive_keys(stream(), "train", np.arange(300), (32, 32, 3))
    assert (np.sort(le.perm, axis=1) == np.arange(96)).all() and abs(le.flip.mean() - 0.5) < 0.02


# ---------------------------------------------------------------------------------------------
# the command line, end to end on the embedded sample


@pytest.mark.parametrize("mode", ["independent", "same"])
@pytest.mark.parametrize("scheme,extra", [("etc", ["--block-size", "2"]), ("le", []), ("icip", ["--cs"]),
                                          ("chaos", [])])
def test_cli_round_trip(tmp_path, scheme, extra, mode):
    runner = CliRunner()
    out, back, keyfile = tmp_path / "enc", tmp_path / "dec", tmp_path / "k.json"
    keyopt = ["--keep-keys", keyfile] if mode == "independent" else ["--key-file", keyfile]
    args = ["-q", "encrypt", "sample", "--split", "test", "--scheme", scheme, *extra, "--keys", mode, *keyopt,
            "--out", out]
    r = runner.invoke(cli, list(map(str, args)), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    enc = open_shards(out, "test")
    assert enc.scheme["name"] == scheme and enc.key_mode == mode
    orig = np.concatenate([b.images for b in SampleSource(split="test").batches("test")])
    assert np.mean(enc.load().images != orig) > 0.5
    secret = json.loads(keyfile.read_text())["secret"]
    assert secret not in (out / "manifest.json").read_text()
    r = runner.invoke(cli, list(map(str, ["-q", "decrypt", out, "--keys", keyfile, "--out", back])),
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    dec = open_shards(back, "test").load()
    np.testing.assert_array_equal(dec.images, orig)


def test_cli_scheme_options(tmp_path):
    runner = CliRunner()

    def run(*args):
        return runner.invoke(cli, ["-q", "encrypt", "sample", "--split", "test", *map(str, args)])

    r = run("--scheme", "etc", "--no-cs", "--block-size", "8", "--out", tmp_path / "a")
    assert r.exit_code == 0, r.output
    assert open_shards(tmp_path / "a", "test").scheme == {"name": "etc", "encrypted": True, "block_size": 8,
                                                          "cs": False}
    r = run("--scheme", "etc", "--block-size", "5", "--out", tmp_path / "b")
    assert r.exit_code == 1 and "5x5 blocks" in r.output
    r = run("--scheme", "le", "--cs", "--out", tmp_path / "c")
    assert r.exit_code == 2 and "--cs does not apply to --scheme le" in r.output
    r = run("--scheme", "pixel", "--block-size", "4", "--out", tmp_path / "d")
    assert r.exit_code == 2 and "--block-size does not apply" in r.output
    r = run("--scheme", "rot13", "--out", tmp_path / "e")
    assert r.exit_code == 2 and "known: chaos, etc, icip, le, pixel" in r.output
    r = run("--plain", "--block-size", "4", "--out", tmp_path / "f")
    assert r.exit_code == 2
    r = run("--out", tmp_path / "g")  # the default is still the paper's NP
    assert r.exit_code == 0 and open_shards(tmp_path / "g", "test").scheme["cs"] is False


def test_real_96x96_photos(scenes_test_slice):
    x = np.concatenate([b.images for b in FolderSource(scenes_test_slice).batches("test", 64)])[:16]
    assert x.shape[1:] == (96, 96, 3)
    for name, opts in CASES:
        s = get_scheme(name, **opts)
        k = keys_for(s, x, stream())
        e = s.encrypt(x, k)
        np.testing.assert_array_equal(s.decrypt(e, k), x)


# ---------------------------------------------------------------------------------------------
# what the schemes leak (measured, see docs/schemes.md)


def test_etc_keeps_every_block_up_to_a_key_free_invariant(sample_images):
    """EtC moves blocks but keeps their content: the sorted values of min(p, 255 - p) of a block
    are the same before and after (rotation, flip, block NP and CS do not change them)."""
    s = EtcScheme(block_size=4)
    x = sample_images[:10]
    k = keys_for(s, x, stream())
    e = s.encrypt(x, k)

    def block_signatures(img):
        f = np.minimum(img, 255 - img)
        blocks = f.reshape(len(img), 8, 4, 8, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(len(img), 64, -1)
        return np.sort(blocks, axis=2)

    plain, enc = block_signatures(x), block_signatures(e)
    np.testing.assert_array_equal(enc, np.take_along_axis(plain, k.perm[:, :, None], axis=1))


def _le_components(images, m=4):
    n, h, w, _ = images.shape
    xs = images.reshape(n, h // m, m, w // m, m, 3).transpose(0, 2, 4, 5, 1, 3).reshape(n, 3 * m * m, -1)
    comp = np.concatenate([xs & 15, xs >> 4], axis=1)  # (n, 2d, blocks)
    return comp.transpose(1, 0, 2).reshape(6 * m * m, -1).astype(np.int16)


def test_le_one_known_image_reveals_a_common_key(sample_images):
    """Under one key (the setting of the paper), a single known plain/encrypted pair gives the
    whole LE key: every output component matches exactly one input component, up to reversal."""
    s = LeScheme()
    x = sample_images
    e = s.encrypt(x, keys_for(s, x, stream("same")))
    ci, co = _le_components(x[:1]), _le_components(e[:1])
    same = (co[:, None, :] == ci[None, :, :]).all(axis=2)  # (out j, in i)
    rev = (co[:, None, :] == 15 - ci[None, :, :]).all(axis=2)
    assert ((same | rev).sum(axis=1) == 1).all()  # no ambiguity on a real 32x32 image
    perm = np.argmax(same | rev, axis=1)
    flip = rev[np.arange(96), perm]
    recovered = LeKey(np.tile(perm, (len(x), 1)), np.tile(flip, (len(x), 1)))
    np.testing.assert_array_equal(s.decrypt(e[1:], recovered[1:]), x[1:])  # all 99 other images
