"""Photo collections on one machine: decode settings (resize, crop, decoder) and their record in
the manifest, ImageFolder at any depth, plain tars listed by seeking, worker processes that give
the same shards as one process, and the originals rebuilt as the manifest says (issue 15)."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ppdata.archive import index_tar
from ppdata.cli import cli
from ppdata.errors import PpdataError
from ppdata.keys import Keystore
from ppdata.shards import ShardSet, read_manifest
from ppdata.sources import Decode, FolderSource, open_source_as, originals
from ppdata.sources.decode import centre_crop, jpeg_header, shorter_side_size


def ppdata(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=False)


def photo(h, w, seed=0) -> np.ndarray:
    """A smooth random picture (JPEG-friendly), (h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))


def tree(root: Path, sizes=((60, 90), (90, 61), (47, 47), (120, 75), (64, 100)), classes=("cat", "dog"),
         split="train") -> Path:
    """<split>/<class>/[deep/]<i>.jpg, mixed sizes, some images two folders down."""
    k = 0
    for c in classes:
        for i, (h, w) in enumerate(sizes):
            p = root / split / c / ("deep/er" if i % 2 else "") / f"{i}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo(h, w, k)).save(p, quality=90)
            k += 1
    return root


def collect(src, split="train"):
    b = list(src.batches(split, 4))
    return np.concatenate([x.images for x in b]), np.concatenate([x.labels for x in b]), np.concatenate([x.index for x in b])


# ---------------------------------------------------------------------------------------------
# decode settings


def test_resize_shorter_side_and_centre_crop_match_torchvision():
    tv = pytest.importorskip("torchvision.transforms")
    for (h, w), s, crop in [((75, 120), 50, (40, 48)), ((121, 64), 33, (32, 31)), ((50, 50), 50, (49, 49)),
                            ((31, 97), 40, (40, 40))]:
        img = Image.fromarray(photo(h, w, h * w))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        ours = Decode(resize=s, crop=crop).shape, None
        a = __import__("ppdata.sources.decode", fromlist=["x"]).pillow_decode(buf.getvalue(), Decode(resize=s, crop=crop))
        ref = np.asarray(tv.CenterCrop(crop)(tv.Resize(s)(img)))
        assert ours[0] == (*crop, 3)
        np.testing.assert_array_equal(a, ref)
        assert shorter_side_size(h, w, s) == tv.Resize(s)(img).size[::-1]


def test_centre_crop_pads_like_torchvision_when_larger():
    tv = pytest.importorskip("torchvision.transforms")
    a = photo(20, 13, 1)
    np.testing.assert_array_equal(centre_crop(a, 25, 16), np.asarray(tv.CenterCrop((25, 16))(Image.fromarray(a))))


def test_decode_settings_round_trip_and_old_manifests():
    d = Decode(resize=256, crop=(224, 224), decoder="pillow", max_pixels=10**8)
    back = Decode.from_json(json.loads(json.dumps(d.to_json())))
    assert back == d and back.resample == "bilinear" and back.shape == (224, 224, 3)
    assert Decode(resize=(32, 48)).resample == "lanczos"
    old = {"options": {"resize": [32, 32], "max_pixels": 1000}}  # a folder of ppdata before the decode entry
    assert Decode.from_manifest(old) == Decode(resize=(32, 32), max_pixels=1000)
    for bad in ({"resize": "x"}, {"resize": [0, 3]}, {"crop": [5]}, {"interpolation": "sinc"}, {"decoder": "gpu"}):
        with pytest.raises(PpdataError):
            Decode(**bad)


def test_jpeg_header_classes():
    def jpg(a, **kw):
        b = io.BytesIO()
        Image.fromarray(a).save(b, "JPEG", **kw)
        return b.getvalue()

    a = photo(30, 40)
    assert jpeg_header(jpg(a)) == (30, 40, 3)
    assert jpeg_header(jpg(a, progressive=True)) == (30, 40, 3)
    assert jpeg_header(jpg(a[..., 0])) == (30, 40, 1)
    exif = Image.Exif()
    exif[0x0112] = 6
    assert jpeg_header(jpg(a, exif=exif.tobytes())) is None  # orientation: Pillow's job
    assert jpeg_header(jpg(a)[:-40]) is None  # cut short
    b = io.BytesIO()
    Image.fromarray(a).save(b, "PNG")
    assert jpeg_header(b.getvalue()) is None


def test_torchvision_decoder_gives_pillows_pixels_and_is_recorded(tmp_path):
    pytest.importorskip("torchvision")
    src = tree(tmp_path / "t")
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(photo(40, 60, 9)).save(src / "train" / "cat" / "rot.jpg", exif=exif.tobytes())
    Image.fromarray(photo(40, 60, 10)).save(src / "train" / "dog" / "p.png")
    out = {}
    for dec in ("pillow", "torchvision"):
        r = ppdata("encrypt", "folder", src, "--resize", "48", "--crop", "40x40", "--decoder", dec, "--seed", "1",
                   "--cs", "--out", tmp_path / dec, "--workers", "2")
        assert r.exit_code == 0, r.output
        out[dec] = read_manifest(tmp_path / dec)
    a, b = out["pillow"], out["torchvision"]
    assert [s["sha256"] for s in a["splits"]["train"]["shards"]] == [s["sha256"] for s in b["splits"]["train"]["shards"]]
    assert a["decode"]["decoder"] == "pillow" and b["decode"]["decoder"] == "torchvision"
    # the EXIF-rotated JPEG and the PNG went through Pillow, the ten plain JPEGs through torchvision
    assert b["splits"]["train"]["decoded"] == {"torchvision": 10, "pillow": 2}


# ---------------------------------------------------------------------------------------------
# layout and archives


def test_any_depth_in_imagefolder_order(tmp_path):
    root = tree(tmp_path / "t")
    (root / "train" / "cat" / "a b").mkdir()
    Image.fromarray(photo(47, 47, 3)).save(root / "train" / "cat" / "a b" / "z.jpg")
    src = FolderSource(root, decode=Decode(resize=(16, 16)))
    assert src.classes == ["cat", "dog"] and src.count("train") == 11
    tvd = pytest.importorskip("torchvision.datasets")
    ref = tvd.ImageFolder(root / "train")
    assert [os.path.relpath(p, root) for p, _ in ref.samples] == src.names("train")
    _, labels, _ = collect(src)
    assert labels.tolist() == [t for _, t in ref.samples]


def test_image_in_a_split_folder_is_an_error(tmp_path):
    tree(tmp_path / "t")
    Image.fromarray(photo(8, 8)).save(tmp_path / "t" / "train" / "loose.jpg")
    (tmp_path / "t" / "test" / "cat").mkdir(parents=True)
    Image.fromarray(photo(8, 8)).save(tmp_path / "t" / "test" / "cat" / "x.jpg")
    with pytest.raises(PpdataError, match="loose.jpg.*directly in a split folder"):
        FolderSource(tmp_path / "t")


class _Counting(io.RawIOBase):
    def __init__(self, f):
        self.f, self.read_bytes = f, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, *a):
        return self.f.seek(*a)

    def tell(self):
        return self.f.tell()

    def readinto(self, b):
        n = self.f.readinto(b)
        self.read_bytes += n
        return n


def test_plain_tar_is_listed_by_seeking_headers(tmp_path):
    big = [(f"train/c{i % 2}/{i}.jpg", os.urandom(300_000)) for i in range(20)]
    p = tmp_path / "big.tar"
    with tarfile.open(p, "w") as tf:
        for name, data in big:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with open(p, "rb", buffering=0) as raw:
        f = _Counting(raw)
        members = index_tar(f, str(p), p.stat().st_size)
    assert [m.name for m in members] == [n for n, _ in big]
    assert f.read_bytes < p.stat().st_size / 10  # headers (and read-ahead), not the members' data
    with open(p, "rb") as f:
        m = members[7]
        f.seek(m.offset)
        assert f.read(m.size) == big[7][1]


# ---------------------------------------------------------------------------------------------
# worker processes


def _shas(folder):
    m = read_manifest(folder)
    return {sp: [s["sha256"] for s in v["shards"]] for sp, v in m["splits"].items()}, m


@pytest.mark.parametrize("archive", ["dir", "tar", "tar.gz"])
def test_any_number_of_workers_writes_the_same_shards(tmp_path, archive):
    root = tree(tmp_path / "t", sizes=((40, 40), (41, 60), (70, 44)) * 4)
    (root / "train" / "dog" / "9.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    src = root
    if archive != "dir":
        src = tmp_path / f"t.{archive}"
        with tarfile.open(src, "w:gz" if archive == "tar.gz" else "w") as tf:
            tf.add(root / "train", arcname="train")
    runs = {}
    for w in (1, 2, 3):
        r = ppdata("encrypt", "folder", src, "--resize", "36", "--crop", "32x32", "--cs", "--seed", "7",
                   "--shard-size", "5", "--workers", w, "--out", tmp_path / f"w{w}")
        assert r.exit_code == 0, r.output
        runs[w] = _shas(tmp_path / f"w{w}")
    assert runs[1][0] == runs[2][0] == runs[3][0]
    m = runs[3][1]
    assert m["engine"] == {"name": "local", "workers": 3}
    assert m["splits"]["train"]["count"] == 24 and m["splits"]["train"]["skipped"]["count"] == 1


def test_strict_with_workers_names_the_file_and_writes_nothing(tmp_path):
    root = tree(tmp_path / "t", sizes=((40, 40),) * 8)
    (root / "train" / "cat" / "deep" / "er" / "5.jpg").write_bytes(b"broken")
    r = ppdata("encrypt", "folder", root, "--strict", "--workers", "2", "--shard-size", "2", "--out", tmp_path / "o")
    assert r.exit_code == 1 and "5.jpg" in r.output
    assert not (tmp_path / "o").exists()


def test_mixed_sizes_without_resize_name_both_images(tmp_path):
    root = tree(tmp_path / "t")
    r = ppdata("encrypt", "folder", root, "--workers", "2", "--out", tmp_path / "o")
    assert r.exit_code == 1 and "0.jpg is 90x60" in r.output and "--resize S --crop HxW" in r.output
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# issue 15: the originals as they were encrypted


def test_encrypt_with_resize_then_preview_and_originals_against_the_original_folder(tmp_path):
    """A mixed-size photo folder encrypted with --resize S --crop HxW; preview --plain and
    open_source_as rebuild the originals from the manifest, and they are exactly the decrypted
    images."""
    root = tree(tmp_path / "photos", split="test")
    ks = tmp_path / "k.json"
    r = ppdata("encrypt", "folder", root, "--resize", "48", "--crop", "40x44", "--cs", "--out", tmp_path / "v",
               "--keep-keys", ks)
    assert r.exit_code == 0, r.output
    m = read_manifest(tmp_path / "v")
    assert m["decode"]["resize"] == 48 and m["decode"]["crop"] == [40, 44] and m["decode"]["exif_orientation"] == "applied"
    r = ppdata("preview", tmp_path / "v", "--plain", "folder", root, "-o", tmp_path / "p.png")
    assert r.exit_code == 0, r.output
    sheet = np.asarray(Image.open(tmp_path / "p.png"))
    assert sheet.shape[0] > 40
    # the originals, rebuilt from the manifest, are the decrypted images
    src = open_source_as(m, "folder", root, split="test")
    ss = ShardSet(tmp_path / "v", "test")
    enc = ss.load()
    plain = originals(src, "test", enc.keys)
    from ppdata.cipher import scheme_from_manifest
    from ppdata.sources import key_index

    scheme = scheme_from_manifest(m["scheme"])
    stream = Keystore.load(ks).stream(m["keys"]["derivation"])
    dec = scheme.decrypt(enc.images, scheme.derive_keys(stream, "test", key_index(enc.keys, "test"), ss.shape))
    np.testing.assert_array_equal(dec, plain)
    # and the audit compares against those same originals, settings read from the manifest
    r = ppdata("audit", tmp_path / "v", "--plain", "folder", root, "--out", tmp_path / "report")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert rec["images"] == 10 and (tmp_path / "report" / "report.md").is_file()
    assert rec["per_image"]["encrypted"]["keys"] == enc.keys.tolist()
    # aligned originals: the key-free fold already recovers structure the ciphertext does not show
    att = rec["attacks"]
    assert att["fold (oracle)"]["summary"]["ssim"]["mean"] > 3 * att["encrypted"]["summary"]["ssim"]["mean"]


def test_a_changed_source_is_an_error_naming_the_image(tmp_path):
    root = tree(tmp_path / "photos", sizes=((40, 40),) * 5)
    assert ppdata("encrypt", "folder", root, "--out", tmp_path / "v").exit_code == 0
    m = read_manifest(tmp_path / "v")
    # the same names, but one image now decodes to another size: named when the originals are read
    Image.fromarray(photo(50, 40, 1)).save(root / "train" / "dog" / "3.jpg" if False else
                                           root / "train" / "dog" / "deep" / "er" / "3.jpg")
    src = open_source_as(m, "folder", root)
    with pytest.raises(PpdataError, match=r"dog/deep/er/3\.jpg is 40x50"):
        originals(src, "train", [f"train_{i:06d}" for i in range(10)])
    # an image removed: the listing recorded in the manifest no longer matches
    (root / "train" / "cat" / "2.jpg").unlink()
    with pytest.raises(PpdataError, match="not what the shard folder was made from"):
        open_source_as(m, "folder", root)
    r = ppdata("preview", tmp_path / "v", "--plain", "folder", root, "-o", tmp_path / "p.png")
    assert r.exit_code == 1 and "image names differ" in r.output
    r = ppdata("audit", tmp_path / "v", "--plain", "folder", root, "--out", tmp_path / "report")
    assert r.exit_code == 1 and "image names differ" in r.output and not (tmp_path / "report").exists()


# ---------------------------------------------------------------------------------------------
# the fast tar stream reader against tarfile


def _odd_tar(fmt) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        def add(name, data=b"", kind=None, link=None):
            ti = tarfile.TarInfo(name)
            ti.size = 0 if kind else len(data)
            if kind:
                ti.type = kind
            if link:
                ti.linkname = link
            tf.addfile(ti, None if kind else io.BytesIO(data))

        add("top/", kind=tarfile.DIRTYPE)
        add("top/a.jpg", b"x" * 1000)
        add("top/" + "long" * 40 + "/b.png", b"y" * 513)
        add("top/ünïcode/é.png", b"z" * 512)
        add("top/empty.png")
        add("top/link.png", kind=tarfile.SYMTYPE, link="a.jpg")
        add("top/hard.png", kind=tarfile.LNKTYPE, link="top/a.jpg")
        add("top/fifo", kind=tarfile.FIFOTYPE)
        add("p" * 90 + "/" + "q" * 60 + ".jpg", b"w" * 7)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_iter_tar_reads_what_tarfile_reads(fmt):
    import bz2
    import gzip
    import lzma

    from ppdata.archive import ArchiveError, checked_members, iter_tar, member_kind

    data = _odd_tar(fmt)
    want = [(m.name, member_kind(m), f.read() if f else None) for m, f in checked_members(io.BytesIO(data), "x")]
    for kind, pack in ((None, bytes), ("gzip", gzip.compress), ("bzip2", bz2.compress), ("xz", lzma.compress)):
        got = [(e.name, e.kind, e.data) for e in iter_tar(io.BytesIO(pack(data)), "x", compressed=kind, chunk=700)]
        assert got == want, kind
    # gzip as gzip reads it: several members, zero padding at the end
    multi = gzip.compress(data[:5000]) + gzip.compress(data[5000:]) + bytes(100)
    assert [e.name for e in iter_tar(io.BytesIO(multi), "x", compressed="gzip")] == [w[0] for w in want]
    # every cut that loses data is an error, in both readers alike
    end = max(m.offset_data + m.size for m, _ in checked_members(io.BytesIO(data), "x"))
    complete = -(-end // 512) * 512 + 1024
    for cut in list(range(1, complete, 211)) + [complete - 1]:
        with pytest.raises(ArchiveError):
            list(iter_tar(io.BytesIO(data[:cut]), "x"))
    gz = gzip.compress(data)
    for cut in range(1, len(gz), 37):
        with pytest.raises(ArchiveError):
            list(iter_tar(io.BytesIO(gz[:cut]), "x", compressed="gzip"))
    bad = bytearray(data)
    bad[512 * 4 + 100] ^= 1  # inside a header: its checksum no longer matches
    with pytest.raises(ArchiveError, match="damaged header"):
        list(iter_tar(io.BytesIO(bytes(bad)), "x"))
    with pytest.raises(ArchiveError, match="after its end-of-archive marker"):
        list(iter_tar(io.BytesIO(data[:complete] + b"\0" * 512 + b"junk"), "x"))
