"""Flip/shift expansion: exact variants, key commutation (NP, NP+CS), folder expansion in both
formats (counts, labels, order, determinism, interruption) and the plain-domain framework."""
import hashlib
import os

import numpy as np
import pytest
from click.testing import CliRunner

from ppdata import augment as A
from ppdata import open_shards, read_manifest
from ppdata.augment import Variant, apply_variant, augment_folder, expand_images, transform_key, variant_set
from ppdata.cipher import get_scheme
from ppdata.cli import cli
from ppdata.errors import PpdataError
from ppdata.keys import Keystore, KeyStream, secret_from_seed
from ppdata.pipeline import encrypt, key_index
from ppdata.sources import SampleSource

SEED = 11


def reference(x: np.ndarray, v: Variant, fill) -> np.ndarray:
    """Independent reference: flip, pad every side by the largest shift, crop the shifted window
    (how torchvision's RandomCrop(padding=...) translates)."""
    f = x[:, :, ::-1] if v.flip else x
    p = max(abs(v.dx), abs(v.dy), 1)
    pad = [(0, 0), (p, p), (p, p)] + [(0, 0)] * (x.ndim - 3)
    big = np.pad(f, pad, constant_values=fill)
    h, w = x.shape[1:3]
    return big[:, p - v.dy : p - v.dy + h, p - v.dx : p - v.dx + w]


@pytest.fixture(scope="module")
def plain():
    """The embedded sample (real CIFAR-10 images) as {split: (images, labels)} in source order."""
    out = {}
    for sp in ("train", "test"):
        bs = list(SampleSource().batches(sp))
        out[sp] = (np.concatenate([b.images for b in bs]), np.concatenate([b.labels for b in bs]))
    return out


def make_encrypted(path, fmt, cs=True):
    stream = KeyStream(secret_from_seed(SEED))
    encrypt(SampleSource(), path, scheme=get_scheme("pixel", cs=cs), keys=stream, fmt=fmt, shard_size=128,
            seeded=True, progress=False)
    return stream


@pytest.fixture(scope="module", params=["webdataset", "hdf5"])
def enc(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("enc") / "s"
    stream = make_encrypted(path, request.param)
    return path, stream


# ---------------------------------------------------------------------------------------------
# variants


def test_variant_sets_and_names():
    default = variant_set()
    assert len(default) == 8 and len(variant_set(flip=False)) == 4 and len(variant_set(shift=0)) == 2
    # the paper's x8: each factor counts the original (Access 2019: "doubled by horizontal flipping",
    # shifts "by four pixels on both the horizontal and vertical axes" make it "fourfold")
    assert [v.name for v in variant_set(flip=False)] == ["f0_sx+0_sy+0", "f0_sx+4_sy+0", "f0_sx+0_sy+4",
                                                         "f0_sx+4_sy+4"]
    assert [v.name for v in variant_set(shift=0)] == ["f0_sx+0_sy+0", "f1_sx+0_sy+0"]
    assert {(v.dx, v.dy) for v in default} == {(0, 0), (4, 0), (0, 4), (4, 4)}
    assert sum(v.flip for v in default) == 4 and default[0].identity  # the stored image itself is one variant
    # the earlier reading stays available by name
    assert [v.name for v in variant_set(flip=False, shifts="diagonal")] == ["f0_sx+4_sy+4", "f0_sx+4_sy-4",
                                                                            "f0_sx-4_sy+4", "f0_sx-4_sy-4"]
    assert [v.name for v in A.parse_spec("shift,diagonal")[0]] == [v.name for v in variant_set(False, 4, "diagonal")]
    for v in default:
        assert Variant.parse(v.name) == v and "." not in v.name
    assert A.split_variant_key("train_000123_f1_sx+4_sy-4") == ("train_000123", Variant(True, 4, -4))
    assert A.parse_shifts("0:0, 4:0,-4:-2") == [(0, 0), (4, 0), (-4, -2)]
    assert [v.name for v in A.parse_spec("flip,shift")[0]] == [v.name for v in default]
    assert len(A.parse_spec("shift=2")[0]) == 4 and A.parse_spec("flip,fill=9")[1] == 9
    for bad in ("flop", "shift=0", "fill=300", "shift=x"):
        with pytest.raises(ValueError):
            A.parse_spec(bad)
    with pytest.raises(ValueError):
        variant_set(flip=False, shift=0)  # identity only
    with pytest.raises(ValueError):
        variant_set(shifts=[(1, 1), (1, 1)])
    with pytest.raises(ValueError):
        A.check_variants(variant_set(shift=32), (32, 32, 3))


def test_variants_equal_numpy_reference_on_real_images(sample_images):
    x = sample_images
    variants = variant_set() + [Variant(False, 3, -1), Variant(True, -7, 0), Variant(True, 0, 5)]
    for fill in (0, 17):
        for v in variants:
            got = apply_variant(x, v, fill)
            assert np.array_equal(got, reference(x, v, fill)), v.name
            if v.dx == v.dy == 0:
                assert np.array_equal(got, x[:, :, ::-1] if v.flip else x)
            # the translation moves content: the pixel at (y, x) comes from (y - dy, x - dx)
            src = x[:, :, ::-1] if v.flip else x
            assert np.array_equal(got[:, 10, 12], src[:, 10 - v.dy, 12 - v.dx])
    assert int(A.fill_mask((32, 32), Variant(True, 4, -4)).sum()) == 32 * 32 - 28 * 28
    # expand_images: row i * V + v is variant v of image i
    vs = variant_set()
    e = expand_images(x[:10], vs, 5)
    assert e.shape == (80, 32, 32, 3)
    for i in (0, 7):
        for j, v in enumerate(vs):
            assert np.array_equal(e[i * 8 + j], reference(x[i : i + 1], v, 5)[0])
    assert np.array_equal(A.hflip(x), x[:, :, ::-1])
    mask = np.random.default_rng(0).random((3, 8, 8, 3)) < 0.5
    assert np.array_equal(A.hflip(mask), mask[:, :, ::-1])


@pytest.mark.parametrize("cs", [False, True], ids=["NP", "NP+CS"])
def test_key_commutation_encrypted_domain(sample_images, cs):
    """Decrypting augment(Enc_k(x)) under the key moved like the pixels gives augment(x)."""
    x = sample_images
    scheme = get_scheme("pixel", cs=cs)
    key = scheme.derive_keys(KeyStream(secret_from_seed(3)), "test", np.arange(len(x)), x.shape[1:])
    enc = scheme.encrypt(x, key)
    for v in variant_set() + [Variant(True, 0, 0), Variant(False, -2, 6)]:
        aug_enc = apply_variant(enc, v, 0)
        want = apply_variant(x, v, 0)
        got = scheme.decrypt(aug_enc, transform_key(key, v))
        keep = ~A.fill_mask(x.shape[1:], v)
        assert np.array_equal(got[:, keep], want[:, keep]), v.name
        assert np.array_equal(got, want), v.name  # the fill keeps the identity key: exact everywhere
        wrong = scheme.decrypt(aug_enc, key)
        if v.identity:  # the stored image itself: its own key, in place
            assert np.array_equal(wrong, x)
        else:  # the parent's own key does not decrypt a moved image
            assert (wrong[:, keep] != want[:, keep]).any(axis=-1).mean() > 0.4


# ---------------------------------------------------------------------------------------------
# folder expansion (encrypted domain, no key)


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def check_expansion(src, out, variants, fill, plain, stream):
    """Every (parent, variant) exactly once, label preserved, pixels = variant of the parent, and
    decryptable with the moved parent key."""
    parent = open_shards(src, "train").load()
    got = open_shards(out, "train").load()
    V = len(variants)
    assert len(got) == V * len(parent)
    by_key = {k: i for i, k in enumerate(parent.keys.tolist())}
    names = [v.name for v in variants]
    pairs = [A.split_variant_key(k) for k in got.keys.tolist()]
    pidx = np.array([by_key[p] for p, _ in pairs])
    vidx = np.array([names.index(v.name) for _, v in pairs])
    assert len(set(zip(pidx.tolist(), vidx.tolist()))) == len(got)  # a permutation of all pairs
    assert np.array_equal(got.labels, parent.labels[pidx])
    for j, v in enumerate(variants):
        rows = np.flatnonzero(vidx == j)
        assert np.array_equal(got.images[rows], reference(parent.images[pidx[rows]], v, fill)), v.name
    # key commutation on the folder: moved parent keys decrypt to the moved plain images
    scheme = get_scheme("pixel", cs=True)
    pkeys = scheme.derive_keys(stream, "train", key_index(parent.keys[pidx], "train"), got.images.shape[1:])
    x, _ = plain["train"]
    for j, v in enumerate(variants):
        rows = np.flatnonzero(vidx == j)
        dec = scheme.decrypt(got.images[rows], transform_key(pkeys[rows], v))
        assert np.array_equal(dec, reference(x[key_index(parent.keys[pidx[rows]], "train")], v, fill))
    return pidx, vidx, got


def test_expand_folder_default_x8(enc, plain, tmp_path):
    src, stream = enc
    out = tmp_path / "x8"
    m = augment_folder(src, out, progress=False)
    parent = read_manifest(src)
    assert m["splits"]["train"]["count"] == 4000 and m["format"] == parent["format"]
    pidx, vidx, got = check_expansion(src, out, variant_set(), 0, plain, stream)
    # the test split is carried over unchanged (hard links)
    assert m["splits"]["test"] == parent["splits"]["test"]
    for s in parent["splits"]["test"]["shards"]:
        assert os.stat(src / s["name"]).st_ino == os.stat(out / s["name"]).st_ino
    assert np.array_equal(open_shards(out, "test").load().images, open_shards(src, "test").load().images)
    # shuffled: siblings and classes are spread over the whole split
    assert (pidx[1:] == pidx[:-1]).mean() < 0.01
    assert len(set(got.labels[:200].tolist())) == 10
    pos = np.arange(len(pidx))
    assert abs(np.corrcoef(pidx, pos)[0, 1]) < 0.1  # not in input (class-sorted) order
    spans = [np.ptp(pos[pidx == i]) for i in range(0, 500, 25)]
    assert np.mean(spans) > 2500  # 8 uniform draws in 4000 positions span ~3100 on average
    # manifest: variants, fill, seed, parent checksum; no key anywhere
    a = m["augment"]
    assert a["variants"] == [v.name for v in variant_set()] and a["fill"] == 0 and a["seed"] == 0
    assert a["domain"] == "encrypted" and a["order"]["buckets"] == 1 and a["order"]["uniform"]
    assert a["parent"]["id"] == parent["id"]
    assert a["parent"]["manifest_sha256"] == sha(src / "manifest.json")
    assert m["keys"] == parent["keys"] and m["scheme"] == parent["scheme"]
    assert a["per_pixel_scheme"]
    if m["format"] == "webdataset":  # members <key>.npy / <key>.cls, no dot in the key (WebDataset's rule)
        import io
        import tarfile

        with tarfile.open(out / "train-000000.tar") as tf:
            members = tf.getmembers()[:2]
            assert [x.name for x in members] == [f"{got.keys[0]}.npy", f"{got.keys[0]}.cls"]
            assert np.array_equal(np.load(io.BytesIO(tf.extractfile(members[0]).read())), got.images[0])
        assert not any("." in k for k in got.keys.tolist())
    r = CliRunner().invoke(cli, ["info", str(out), "--verify"])
    assert r.exit_code == 0 and "verify    ok" in r.output and "f1_sx+4_sy+4" in r.output


def test_expand_folder_buckets_and_determinism(enc, plain, tmp_path):
    """Inputs larger than the memory budget go through temporary buckets; same seed, same bytes."""
    src, stream = enc
    variants = variant_set(flip=False)
    small = dict(variants=variants, fill=9, seed=5, resident_bytes=150 * 3200, chunk_bytes=50 * 3200,
                 write_batch=300, progress=False)
    m1 = augment_folder(src, tmp_path / "a", **small)
    assert m1["augment"]["order"]["buckets"] > 1 and not m1["augment"]["order"]["uniform"]
    assert m1["splits"]["train"]["count"] == 2000
    assert not [p for p in os.listdir(tmp_path / "a") if p.endswith(".part") or p.startswith(".")]
    pidx, _, _ = check_expansion(src, tmp_path / "a", variants, 9, plain, stream)
    assert (pidx[1:] == pidx[:-1]).mean() < 0.01
    m2 = augment_folder(src, tmp_path / "b", **small)
    m3 = augment_folder(src, tmp_path / "c", **{**small, "seed": 6})
    shas = [[s["sha256"] for s in m["splits"]["train"]["shards"]] for m in (m1, m2, m3)]
    assert shas[0] == shas[1] and shas[0] != shas[2]


def test_cli_conditions_in_place_default_and_refusals(tmp_path):
    src = tmp_path / "shards"
    make_encrypted(src, "webdataset")
    before = {p.name: p.read_bytes() for p in src.iterdir() if p.name != "manifest.json"}
    r = CliRunner()
    res = r.invoke(cli, ["-q", "augment", str(src), "--shift", "0"])  # flip only, added in place
    assert res.exit_code == 0, res.output
    assert len(open_shards(src, "trainx2")) == 1000 and open_shards(src, "trainx2").augment["factor"] == 2
    res = r.invoke(cli, ["augment", str(src), "--no-flip", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert "added split trainx4" in res.output and "500 -> 2000" in res.output
    m = read_manifest(src)
    assert list(m["splits"]) == ["train", "test", "trainx2", "trainx4"] and len(open_shards(src, "trainx4")) == 2000
    # the folder's own files are untouched, byte for byte
    assert all((src / n).read_bytes() == b for n, b in before.items())
    # an explicit set and fill, to a folder of its own
    res = r.invoke(cli, ["-q", "augment", str(src), "--shifts=0:0,2:0", "--fill", "255", "-o", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    assert read_manifest(tmp_path / "e")["augment"]["variants"] == ["f0_sx+0_sy+0", "f0_sx+2_sy+0",
                                                                     "f1_sx+0_sy+0", "f1_sx+2_sy+0"]
    # refusals: an existing expansion, non-empty OUT, OUT == IN, an already expanded split, no expansion at all
    res = r.invoke(cli, ["-q", "augment", str(src), "--no-flip", "--seed", "1"])
    assert res.exit_code == 1 and "already holds split trainx4" in res.output and "--overwrite" in res.output
    res = r.invoke(cli, ["-q", "augment", str(src), "--no-flip", "--overwrite", "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert read_manifest(src)["splits"]["trainx4"]["augment"]["seed"] == 2
    listed = {s["name"] for info in read_manifest(src)["splits"].values() for s in info["shards"]}
    assert sorted(p.name for p in src.iterdir()) == sorted(listed | {"manifest.json"})  # nothing stale left
    res = r.invoke(cli, ["-q", "augment", str(src), "-o", str(tmp_path / "e"), "--no-flip"])
    assert res.exit_code == 1 and "not empty" in res.output
    res = r.invoke(cli, ["-q", "augment", str(src), "-o", str(src), "--overwrite"])
    assert res.exit_code == 1 and "must not be the input folder" in res.output
    assert len(open_shards(src, "train")) == 500
    res = r.invoke(cli, ["-q", "augment", str(src), "--split", "trainx4", "-o", str(tmp_path / "x16")])
    assert res.exit_code == 1 and "already expanded" in res.output
    res = r.invoke(cli, ["-q", "augment", str(src), "--no-flip", "--shift", "0", "-o", str(tmp_path / "n")])
    assert res.exit_code == 2 and "only copy" in res.output
    res = r.invoke(cli, ["-q", "augment", str(src), "--shifts=4", "-o", str(tmp_path / "n")])
    assert res.exit_code == 2 and "dx:dy" in res.output
    res = r.invoke(cli, ["-q", "augment", str(tmp_path / "missing")])
    assert res.exit_code == 1 and "missing" in res.output


def test_in_place_expansion_failing_midway_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    src = tmp_path / "shards"
    make_encrypted(src, "webdataset")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    _disk_full_after(20, monkeypatch)
    with pytest.raises(OSError):
        augment_folder(src, progress=False, write_batch=64)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def _disk_full_after(n: int, monkeypatch) -> dict:
    """Make the expansion fail with ENOSPC after ``n`` shift operations; returns the call counter."""
    calls = {"n": 0}
    real = A._shift

    def failing(*args):
        calls["n"] += 1
        if calls["n"] > n:
            raise OSError(28, "No space left on device")
        return real(*args)

    monkeypatch.setattr(A, "_shift", failing)
    return calls


def test_interrupted_run_leaves_no_complete_output(enc, tmp_path, monkeypatch):
    src, _ = enc
    real = A._shift
    calls = _disk_full_after(20, monkeypatch)
    out = tmp_path / "x"
    for budget in (1 << 30, 150 * 3200):  # resident and bucketed
        calls["n"] = 0
        with pytest.raises(OSError):
            augment_folder(src, out, write_batch=256, resident_bytes=budget, overwrite=True, progress=False)
        # the failed run removed everything it wrote (carried links, buckets, shards) and the folder
        # it created
        assert not out.exists()
        with pytest.raises(PpdataError, match="does not exist"):
            open_shards(out, "train")
    monkeypatch.setattr(A, "_shift", real)
    m = augment_folder(src, out, progress=False)  # a rerun starts again without --overwrite
    assert m["splits"]["train"]["count"] == 4000 and open_shards(out, "train").verify() == []


# ---------------------------------------------------------------------------------------------
# plain-domain framework: Enc(f_d(T)), every copy under its own key


@pytest.mark.parametrize("fmt", ["webdataset", "hdf5"])
def test_encrypt_augment_plain_domain(tmp_path, plain, fmt):
    r = CliRunner()
    out, ks = tmp_path / "p8", tmp_path / "keys.json"
    res = r.invoke(cli, ["-q", "encrypt", "sample", "--cs", "--seed", "4", "--augment", "flip,shift", "--format",
                         fmt, "--out", str(out), "--keep-keys", str(ks)])
    assert res.exit_code == 0, res.output
    m = read_manifest(out)
    assert m["splits"]["train"]["count"] == 4000 and m["splits"]["test"]["count"] == 100
    assert m["augment"]["domain"] == "plain" and m["augment"]["factor"] == 8
    enc = open_shards(out, "train").load()
    assert enc.keys[0] == "train_000000_f0_sx+0_sy+0" and enc.keys[9] == "train_000001_f0_sx+4_sy+0"
    # decrypt goes through key_indexer: copy v of image i under the key of index i * 8 + v
    res = r.invoke(cli, ["-q", "decrypt", str(out), "--keys", str(ks), "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    dec = open_shards(tmp_path / "d", "train").load()
    x, y = plain["train"]
    vs = variant_set()
    for j, v in enumerate(vs):
        rows = np.arange(j, 4000, 8)
        assert np.array_equal(dec.images[rows], reference(x, v, 0)), v.name
        assert np.array_equal(dec.labels[rows], y)
    assert np.array_equal(open_shards(tmp_path / "d", "test").load().images, plain["test"][0])
    # every copy has its own key: copy 1's key does not decrypt copy 0
    stream = Keystore.load(ks).stream()
    scheme = get_scheme("pixel", cs=True)
    k1 = scheme.derive_keys(stream, "train", [1], (32, 32, 3))
    wrong = scheme.decrypt(enc.images[:1], k1)
    assert (wrong != dec.images[:1]).any(axis=-1).mean() > 0.4
    # the server-side expansion of such a folder is refused (it is already expanded)
    res = r.invoke(cli, ["-q", "augment", str(out), "-o", str(tmp_path / "x")])
    assert res.exit_code == 1 and "already expanded" in res.output


def test_decrypt_refuses_encrypted_domain_expansion(enc, tmp_path):
    src, stream = enc
    ks = tmp_path / "k.json"
    Keystore(mode="independent", secret=stream.secret, seeded=True).save(ks)
    augment_folder(src, tmp_path / "x8", progress=False)
    res = CliRunner().invoke(cli, ["-q", "decrypt", str(tmp_path / "x8"), "--keys", str(ks), "--out",
                                   str(tmp_path / "d")])
    assert res.exit_code == 1 and "encrypted domain" in res.output and "parent" in res.output
    assert not (tmp_path / "d" / "manifest.json").exists()


def test_encrypt_augment_bad_spec(tmp_path):
    res = CliRunner().invoke(cli, ["-q", "encrypt", "sample", "--augment", "mirror", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--augment" in res.output
    res = CliRunner().invoke(cli, ["-q", "encrypt", "sample", "--split", "test", "--augment", "flip", "--out",
                                   str(tmp_path / "o")])
    assert res.exit_code == 2 and "train split" in res.output


def test_tar_records_from_arrays_and_write_records(tmp_path):
    """The writer path used here: numpy key arrays into tar_records, records into write_records."""
    import io
    import tarfile

    from ppdata.shards import WebDatasetWriter, tar_records

    keys = np.array(["a", "train_000001_f1_sx+4_sy-4", "k" * 95])
    labels = np.array([0, 12345, -1])
    images = np.random.default_rng(1).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    recs = tar_records(keys, images, labels)
    assert np.array_equal(recs, tar_records(keys.tolist(), images, labels.tolist()))
    w = WebDatasetWriter(tmp_path, "train", (4, 5, 3), shard_size=2)
    w.write_records(recs)
    with pytest.raises(ValueError):
        w.write_records(recs[:, :-512])
    shards = w.close()
    assert [s.count for s in shards] == [2, 1]
    got = []
    for s in shards:
        with tarfile.open(tmp_path / s.name) as tf:
            for m in tf.getmembers():
                got.append((m.name, tf.extractfile(m).read()))
    assert [n for n, _ in got] == [f"{k}.{e}" for k in keys for e in ("npy", "cls")]
    assert [int(d) for n, d in got if n.endswith(".cls")] == [0, 12345, -1]
    assert np.array_equal(np.load(io.BytesIO(got[2][1])), images[1])
    with pytest.raises(ValueError, match="95"):
        tar_records(np.array(["k" * 96]), images[:1], labels[:1])
