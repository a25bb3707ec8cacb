"""Key expansion, rejection sampling and the keystore."""
import json
import os
import stat

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from ppdata.errors import PpdataError
from ppdata.keys import (KeyStream, Keystore, check_writable, code_bytes_needed, is_inside, new_secret,
                         secret_from_seed, uniform_codes)


@pytest.mark.parametrize("derivation", [1, 2])
def test_material_is_chacha20_at_the_documented_position(derivation):
    import hashlib

    secret = secret_from_seed(5)
    context = b'{"scheme":{"name":"pixel"},"shape":[32,32,3]}'
    ks = KeyStream(secret, derivation=derivation).bind(context)
    nbytes = 100  # -> 2 blocks per image
    rows = ks.material("train", [0, 1, 3], nbytes)
    if derivation == 1:  # ppdata 0.1 folders: no context
        label = hashlib.sha256(b"ppdata/key/independent/train").digest()[:8]
    else:
        label = hashlib.sha256(b"ppdata/v2/key/independent/train/" + context).digest()[:8]
    for r, i in enumerate([0, 1, 3]):
        nonce = (i * 2).to_bytes(4, "little") + label + (0).to_bytes(4, "little")
        enc = Cipher(algorithms.ChaCha20(secret, nonce), None).encryptor()
        expected = np.frombuffer(enc.update(bytes(128)), np.uint8)[:nbytes]
        np.testing.assert_array_equal(rows[r], expected)


def test_one_secret_gives_separate_keys_per_scheme_options_and_shape():
    """A --seed or --key-file reused across schemes, options or sizes never repeats key bytes."""
    from ppdata.cipher import get_scheme

    stream = KeyStream(secret_from_seed(1), "same")
    keys = {}
    for name, opts, shape in [("pixel", {}, (8, 8, 3)), ("pixel", {"cs": True}, (8, 8, 3)),
                              ("icip", {}, (8, 8, 3)), ("pixel", {}, (8, 16, 3))]:
        k = get_scheme(name, **opts).derive_keys(stream, "train", [0], shape)
        keys[(name, str(opts), shape)] = np.packbits(k.np_mask[0, :8, :8]).tobytes()
    assert len(set(keys.values())) == len(keys)
    # and the same purpose gives the same key every time
    again = get_scheme("pixel").derive_keys(KeyStream(secret_from_seed(1), "same"), "test", [5], (8, 8, 3))
    assert np.packbits(again.np_mask[0]).tobytes()[:8] == keys[("pixel", "{}", (8, 8, 3))][:8]


def test_secrets_are_fresh_and_seeds_reproducible():
    assert new_secret() != new_secret()
    assert len(new_secret()) == 32
    assert secret_from_seed(1) == secret_from_seed(1) != secret_from_seed(2)


def test_uniform_codes_rule_and_shortfall_path():
    # bytes >= 216 are skipped; digits are taken as documented
    mat = np.array([[250, 0, 215, 7, 255, 100]], np.uint8)
    codes = uniform_codes(mat, 9)
    accepted = [0, 215, 7, 100]
    need = 3
    first = [b // 36 for b in accepted[:need]]
    second = [(b // 6) % 6 for b in accepted[:need]]
    third = [b % 6 for b in accepted[:need]]
    assert codes[0].tolist() == first + second + third
    # too few accepted bytes: taken from `more`, deterministically
    short = np.array([[255, 255, 1]], np.uint8)
    calls = []

    def more(row, nbytes):
        calls.append((row, nbytes))
        return np.array([2, 254, 3] + [0] * (nbytes - 3), np.uint8)

    c = uniform_codes(short, 9, more)
    assert calls and c[0, :3].tolist() == [0, 0, 0] and c[0, 3:6].tolist() == [0, 0, 0]
    assert c[0, 6:9].tolist() == [1, 2, 3]
    with pytest.raises(ValueError):
        uniform_codes(short, 9)


def test_code_bytes_needed_leaves_a_wide_margin():
    for n in (1, 7, 1024, 9216):
        m = code_bytes_needed(n)
        need = -(-n // 3)
        p = 216 / 256
        assert m * p - 10 * np.sqrt(m * p * (1 - p)) >= need


def test_extension_stream_differs_from_main():
    ks = KeyStream(secret_from_seed(3))
    a = ks.material("train", [4], 64)[0]
    b = ks.extension("train", 4, 64)
    assert (a != b).any()


def test_keystore_round_trip_mode_0600(tmp_path):
    st = Keystore(mode="independent", secret=new_secret(), seeded=False, scheme={"name": "pixel"}, dataset="abc")
    path = st.save(tmp_path / "k.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    back = Keystore.load(path)
    assert back.secret == st.secret and back.mode == "independent" and back.dataset == "abc"
    assert json.loads(path.read_text())["key_id"] == st.key_id
    assert [p.name for p in tmp_path.iterdir()] == ["k.json"]  # no temporary left


def test_keystore_errors(tmp_path):
    with pytest.raises(PpdataError, match="does not exist"):
        Keystore.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"format": "something"}')
    with pytest.raises(PpdataError, match="not a ppdata keystore"):
        Keystore.load(tmp_path / "bad.json")
    (tmp_path / "dmg.json").write_text('{"format": "ppdata-keystore", "mode": "same", "secret": "zz"}')
    with pytest.raises(PpdataError, match="damaged"):
        Keystore.load(tmp_path / "dmg.json")
    with pytest.raises(PpdataError, match="not writable"):
        check_writable(tmp_path / "no-such-dir" / "k.json")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(PpdataError, match="not writable"):
        check_writable(tmp_path / "afile" / "k.json")


def test_is_inside_follows_symlinks(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    link = tmp_path / "link"
    link.symlink_to(out)
    assert is_inside(link / "keys.json", out)
    assert is_inside(out / "a" / "b", out)
    assert not is_inside(tmp_path / "keys.json", out)


def test_loose_keystore_permissions_warned(tmp_path, caplog, monkeypatch):
    import logging

    monkeypatch.setattr(logging.getLogger("ppdata"), "propagate", True)  # the CLI turns it off
    path = Keystore(mode="same", secret=new_secret()).save(tmp_path / "k.json")
    os.chmod(path, 0o644)
    with caplog.at_level("WARNING", logger="ppdata"):
        Keystore.load(path)
    assert "chmod 600" in caplog.text
