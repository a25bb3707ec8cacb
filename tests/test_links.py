"""An output folder never follows a link, and a journal proves nothing by itself.

Links are planted at every position of an output folder: the folder itself, names an earlier run
left (journal, manifest, parts), and every name a run creates, planted the moment the run claims
it (as a hostile process racing the run would). For encrypt, decrypt (shards and PNG trees) and
augment (in place and into a new folder): the run refuses, the link is left alone, every file
outside the folder is byte-identical and the parent folder's listing unchanged. Forged journals
(generated) delete nothing. The same policy holds on object storage (moto S3)."""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppdata.cli import cli
from ppdata.errors import PpdataError
from ppdata.shards import OutputFolder
from ppdata.shards import folder as folder_module

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def ppdata(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=False)


def state(folder: Path) -> dict:
    """Every entry under ``folder`` without following links: file bytes' sha256, link targets."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for n in dirs + files:
            p = Path(root) / n
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                out[rel] = "link -> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "folder"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    d = tmp_path_factory.mktemp("enc")
    r = ppdata("encrypt", "sample", "--cs", "--out", d / "s", "--keep-keys", d / "k.json", "--shard-size", "200")
    assert r.exit_code == 0, r.output
    return d / "s", d / "k.json"


@pytest.fixture
def outside(tmp_path):
    """Files a hostile folder points at: they must stay byte-identical."""
    o = tmp_path / "outside"
    (o / "dir").mkdir(parents=True)
    (o / "victim.txt").write_text("the user's own file\n")
    (o / "dir" / "inner.txt").write_text("another\n")
    return o


def copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _command(kind: str, out: Path, enc) -> list:
    src, ks = enc
    return {
        "encrypt": ["encrypt", "sample", "--split", "test", "--out", out, "--shard-size", "60"],
        "encrypt-hdf5": ["encrypt", "sample", "--split", "test", "--out", out, "--format", "hdf5"],
        "decrypt": ["decrypt", src, "--keys", ks, "--out", out],
        "decrypt-png": ["decrypt", src, "--keys", ks, "--out", out, "--format", "png"],
        "augment-out": ["augment", src, "--out", out, "--shift", "0"],
        "augment": ["augment", out, "--shift", "0"],
    }[kind]


def _pattern(name: str) -> str:
    """Names of one kind share a pattern: train-000001.tar -> S-N.tar, test/cat/test_000001.png -> S/C/K.png."""
    parts = name.split("/")
    if len(parts) > 1:
        return "/".join(["S", "C", "K.png"][: len(parts)])
    return re.sub(r"\d+", "N", name).replace("train", "S").replace("test", "S")


COMMANDS = ["encrypt", "encrypt-hdf5", "decrypt", "decrypt-png", "augment-out", "augment"]


@pytest.mark.parametrize("kind", COMMANDS)
def test_a_link_planted_at_any_name_a_run_writes_is_never_written_through(tmp_path, enc, outside, kind, monkeypatch):
    """Plant a link at each kind of name the run claims, right after it claims it (a racing
    process); the run must stop, naming it, and leave the link and everything outside alone."""
    # which names does this run write? (one run, recorded)
    seen: list[str] = []
    real_claim = OutputFolder.claim

    def recording(self, *names):
        seen.extend(n for n in names if n not in seen)
        return real_claim(self, *names)

    probe = tmp_path / "probe" / "out"
    probe.parent.mkdir()
    if kind == "augment":
        copy_folder(enc[0], probe)
    monkeypatch.setattr(OutputFolder, "claim", recording)
    assert ppdata(*_command(kind, probe, enc)).exit_code == 0
    monkeypatch.setattr(OutputFolder, "claim", real_claim)
    reps: dict[str, str] = {}
    for n in seen:
        reps.setdefault(_pattern(n), n)
    assert len(reps) >= 2
    targets = [outside / "victim.txt", outside / "missing.tar", outside / "dir"]
    for i, target_name in enumerate(sorted(reps.values())):
        target = targets[i % len(targets)]
        parent = tmp_path / f"p{i}"
        parent.mkdir()
        out = parent / "out"
        if kind == "augment":
            copy_folder(enc[0], out)
        else:
            out.mkdir()
        before_out = state(out) if out.exists() else {}
        before_outside = state(outside)
        listing = sorted(os.listdir(parent))

        def planting(self, *names, _t=target_name, _target=target):
            paths = real_claim(self, *names)
            if _t in names and not os.path.lexists(Path(self.path) / _t):
                os.symlink(_target, Path(self.path) / _t)
            return paths

        monkeypatch.setattr(OutputFolder, "claim", planting)
        r = ppdata(*_command(kind, out, enc))
        monkeypatch.setattr(OutputFolder, "claim", real_claim)
        assert r.exit_code == 1, (target_name, r.output)
        assert target_name.rsplit("/", 1)[-1] in r.output, r.output
        assert state(outside) == before_outside, target_name
        assert not (outside / "missing.tar").exists()
        assert sorted(os.listdir(parent)) == listing
        assert os.readlink(out / target_name) == str(target)  # the link itself is left alone
        after = state(out)
        after.pop(target_name)
        if kind == "augment":  # the folder as it was: the failed extension removed only its own files
            assert after == before_out, target_name
        else:
            assert set(after) <= {n for n in after if after[n] == "folder"}, after  # nothing of the run is left


@pytest.mark.parametrize("kind", ["encrypt", "decrypt", "augment"])
def test_the_output_folder_itself_as_a_link_is_refused(tmp_path, enc, outside, kind):
    target = tmp_path / "real"
    if kind == "augment":
        copy_folder(enc[0], target)
    else:
        target.mkdir()
    before = state(target)
    link = tmp_path / "out"
    link.symlink_to(target)
    r = ppdata(*_command(kind, link, enc))
    assert r.exit_code == 1 and "symbolic link" in r.output, r.output
    assert state(target) == before


@pytest.mark.parametrize("name", ["manifest.json.part", "trainx2-000000.tar.part", "trainx2-000000.tar",
                                  ".ppdata-incomplete"])
def test_in_place_augment_never_writes_through_planted_links(tmp_path, enc, outside, name):
    """The reported cases: augment DIR over an uploaded folder holding links at the names it
    writes (pointing outside, or dangling into the outside folder)."""
    d = copy_folder(enc[0], tmp_path / "up")
    target = outside / "victim.txt" if name.startswith("manifest") else outside / "new-shard.tar"
    os.symlink(target, d / name)
    before, before_outside = state(d), state(outside)
    r = ppdata("augment", d, "--shift", "0")
    assert r.exit_code == 1 and name in r.output, r.output
    assert state(d) == before and state(outside) == before_outside
    assert not (outside / "new-shard.tar").exists()


# ---------------------------------------------------------------------------------------------
# journals prove nothing by themselves


def _journal(header, claims, extra: list[bytes] = ()) -> bytes:
    lines = [json.dumps(header).encode()] + [json.dumps({"claim": c}).encode() for c in claims] + list(extra)
    return b"".join(line + b"\n" for line in lines)


@pytest.mark.parametrize("kind", ["encrypt", "decrypt", "augment"])
@pytest.mark.parametrize("claim", ["link/victim.txt", "README.txt", "../outside/victim.txt"])
def test_a_forged_journal_deletes_nothing(tmp_path, enc, outside, kind, claim):
    """The reported cases: a journal claiming ``link/victim.txt`` (``link`` a link to another
    folder) or the owner's ``README.txt``: an error naming the journal, nothing deleted."""
    out = tmp_path / "out"
    if kind == "augment":
        copy_folder(enc[0], out)
    else:
        out.mkdir()
    os.symlink(outside, out / "link")
    (out / "README.txt").write_text("mine\n")
    (out / ".ppdata-incomplete").write_bytes(_journal({"run": "0123456789abcdef", "pid": 1}, [claim]))
    before, before_outside = state(out), state(outside)
    r = ppdata(*_command(kind, out, enc))
    assert r.exit_code == 1 and ".ppdata-incomplete" in r.output, r.output
    assert "nothing was deleted" in r.output
    assert state(out) == before and state(outside) == before_outside


_POOL = ["train-000000.tar", "train-000000.tar.part", "test-000000.tar.part", "manifest.json.part", ".shuffle-0000.part",
         "test.h5", "test", "test/cat", "test/cat/test_000001.png", "README.txt", "link/victim.txt", "link",
         "../x", "/etc/passwd", "a\x1b[31m", "", "sub/../../x", "test/cat/../../../outside/victim.txt"]
_HEADERS = [{"run": "0123456789abcdef", "pid": 1}, {"run": "x"}, {"pid": 1}, {"run": 5}, {"run": ""},
            {"run": "x", "writes": "png"}, {"run": "x", "writes": "shards"}, {"run": "x", "writes": "other"}, [], "run"]


@st.composite
def journals(draw):
    header = draw(st.sampled_from(_HEADERS))
    claims = draw(st.lists(st.sampled_from(_POOL), max_size=5))
    extra = draw(st.lists(st.sampled_from([b"", b"not json", b'{"claim": 3}', b'{"claim": "x", "more": 1}',
                                           b"[" * 200 + b"]" * 200, b'{"claim": "test-000000.tar.part"}']),
                          max_size=2))
    torn = draw(st.sampled_from([b"", b'{"claim": "README.t']))
    return header, claims, extra, torn


def _valid(header, claims, extra, folder: Path) -> bool:
    """Would ppdata accept this journal? (the rule of the docstring, written out independently)"""
    from ppdata.names import own_name

    if not (isinstance(header, dict) and isinstance(header.get("run"), str) and header["run"]):
        return False
    if header.get("writes") not in (None, "shards", "png"):
        return False
    for line in extra:
        if line != b'{"claim": "test-000000.tar.part"}':
            return False
        claims = [*claims, "test-000000.tar.part"]
    for c in claims:
        want = own_name(c, header.get("writes"))
        if want is None:
            return False
        p = folder / c
        if os.path.lexists(p) and (p.is_symlink() or (want == "file") != p.is_file()):
            return False
    return True


@SETTINGS
@given(journals())
def test_generated_journals_never_delete_what_ppdata_did_not_write(tmp_path_factory, enc, journal):
    """Whatever a journal says, a user's files, links and everything outside survive; a journal
    ppdata would not have written is an error naming it."""
    header, claims, extra, torn = journal
    base = tmp_path_factory.mktemp("j")
    outside = base / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("victim\n")
    out = base / "out"
    out.mkdir()
    os.symlink(outside, out / "link")
    os.symlink(outside / "victim.txt", out / "train-000000.tar.part")
    (out / "README.txt").write_text("mine\n")
    (out / "test-000000.tar.part").write_bytes(b"half a shard")
    raw = _journal(header, claims, extra) + torn
    (out / ".ppdata-incomplete").write_bytes(raw)
    before, before_outside = state(out), state(outside)
    valid = _valid(header, claims, extra, out)
    r = ppdata("encrypt", "sample", "--split", "test", "--out", out)
    assert r.exit_code == 1  # README.txt and the links are never ppdata's
    assert state(out) == before and state(outside) == before_outside
    if not valid:
        assert ".ppdata-incomplete" in r.output, r.output
    assert "\x1b" not in r.output


def test_a_valid_journal_still_cleans_up_a_killed_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "test-000000.tar.part").write_bytes(b"half")
    (out / ".ppdata-incomplete").write_bytes(_journal({"run": "0123456789abcdef", "writes": "shards"},
                                                      ["test-000000.tar.part", "test-000000.tar"]))
    r = ppdata("encrypt", "sample", "--split", "test", "--out", out)
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(out)) == ["manifest.json", "test-000000.tar"]


# ---------------------------------------------------------------------------------------------
# one policy, every storage


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    """(location of an output folder, put(name, bytes), names()) on a local disk or on S3."""
    if request.param == "local":
        root = tmp_path / "f"
        root.mkdir()

        def put(name, data):
            (root / name).write_bytes(data)

        return root, put, lambda: sorted(os.listdir(root)), lambda n: (root / n).read_bytes()
    fs = request.getfixturevalue("s3")
    from conftest import BUCKET

    prefix = f"{BUCKET}/policy-{os.urandom(4).hex()}"

    def put_s3(name, data):
        fs.pipe(f"{prefix}/{name}", data)

    def names():
        fs.invalidate_cache()
        return sorted(p.rsplit("/", 1)[1] for p in fs.find(prefix))

    def read(n):
        return fs.cat(f"{prefix}/{n}")

    return f"s3://{prefix}", put_s3, names, read


def test_policy_forged_journal_is_refused_on_every_storage(storage):
    loc, put, names, read = storage
    put("README.txt", b"mine")
    put(".ppdata-incomplete", _journal({"run": "dead"}, ["README.txt"]))
    if str(loc).startswith("s3://"):
        import time

        put(".ppdata-lock", json.dumps({"run": "dead", "heartbeat": time.time() - 3600}).encode())
    before = names()
    with pytest.raises(PpdataError, match=r"\.ppdata-incomplete claims 'README.txt'.*nothing was deleted"):
        with OutputFolder(loc, stale_after=1, heartbeat=0.1) if str(loc).startswith("s3") else OutputFolder(loc):
            pass
    assert names() == before and read("README.txt") == b"mine"


def test_policy_journal_of_another_run_than_the_lock_owner_is_refused(s3):
    """Object storage keeps a lock record: a journal naming another run was not written by the
    run that held the lock."""
    import time

    from conftest import BUCKET

    prefix = f"{BUCKET}/owner"
    s3.pipe(f"{prefix}/.ppdata-lock", json.dumps({"run": "dead", "heartbeat": time.time() - 3600}).encode())
    s3.pipe(f"{prefix}/.ppdata-incomplete", _journal({"run": "other"}, ["train-000000.tar"]))
    s3.pipe(f"{prefix}/train-000000.tar", b"not ours")
    with pytest.raises(PpdataError, match="lock was held by run 'dead'"):
        with OutputFolder(f"s3://{prefix}", stale_after=1, heartbeat=0.1):
            pass
    s3.invalidate_cache()
    assert s3.cat(f"{prefix}/train-000000.tar") == b"not ours"


def test_policy_manifest_listing_a_foreign_name_owns_nothing(storage):
    """A PNG-tree manifest listing README.txt (with its size) does not make it ppdata's."""
    loc, put, names, read = storage
    put("README.txt", b"mine")
    put("manifest.json", json.dumps({"format": "png", "files": {"README.txt": 4}, "splits": {}}).encode())
    with pytest.raises(PpdataError, match="did not write.*README.txt"):
        with OutputFolder(loc, overwrite=True):
            pass
    assert read("README.txt") == b"mine"


def test_policy_manifest_size_limit_is_one_rule(storage, enc, monkeypatch):
    """The manifest size limit of ownership is one constant for every storage."""
    loc, put, names, read = storage
    for f in sorted(enc[0].iterdir()):
        put(f.name, f.read_bytes())
    with OutputFolder(loc, overwrite=True, heartbeat=0.1) if str(loc).startswith("s3") else OutputFolder(loc, overwrite=True):
        pass  # ppdata's own folder: --overwrite may replace it
    for f in sorted(enc[0].iterdir()):
        put(f.name, f.read_bytes())
    monkeypatch.setattr(folder_module, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(PpdataError, match="did not write"):
        with OutputFolder(loc, overwrite=True):
            pass
    assert "manifest.json" in names()


def test_policy_extension_never_replaces_an_existing_name(storage, enc):
    loc, put, names, read = storage
    for f in sorted(enc[0].iterdir()):
        put(f.name, f.read_bytes())
    put("trainx2-000000.tar", b"someone else's")
    with OutputFolder(loc, extend=True) as folder:
        with pytest.raises(PpdataError, match="trainx2-000000.tar.*already exists"):
            folder.create("trainx2-000000.tar")
    assert read("trainx2-000000.tar") == b"someone else's"
    assert ".ppdata-incomplete" not in names()
