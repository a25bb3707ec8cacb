"""Manifests and keystores are hostile JSON: a size limit, a depth limit, then one schema each, so
any mismatch is one line naming the file and the field, never a traceback; and the keystore,
not the manifest, says which scheme decrypts."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppdata.cli import cli
from ppdata.errors import PpdataError

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def ppdata(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=False)


def one_line_or_ok(r) -> None:
    """Exit 0, or exit 1 ending with exactly one ``Error: ...`` line (a traceback would have raised;
    ``info`` prints its summary first)."""
    assert r.exit_code in (0, 1), r.output
    if r.exit_code == 1:
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("Error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in r.output, r.output
        if not lines[0].startswith("folder "):  # any command but info: the error is all it prints
            assert len(lines) == 1, r.output
        assert "\x1b" not in r.output


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The sample's test split, NP+CS (independent keys kept) and NP under a key file."""
    d = tmp_path_factory.mktemp("small")
    assert ppdata("encrypt", "sample", "--split", "test", "--cs", "--out", d / "ind", "--keep-keys",
                  d / "k.json").exit_code == 0
    assert ppdata("encrypt", "sample", "--split", "test", "--keys", "same", "--key-file", d / "kf.json", "--out",
                  d / "same").exit_code == 0
    return d


def _edit(src: Path, dst: Path, fn) -> Path:
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    out = fn(m)
    (dst / "manifest.json").write_text(out if isinstance(out, str) else json.dumps(m))
    return dst


def test_depth_is_measured_without_parsing():
    from ppdata.schema import json_depth, load_json

    assert json_depth(b'{"a": [1, {"b": "[[[[{{"}]}') == 3
    assert json_depth(b'"\\"[[["') == 0
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(PpdataError, match="nested more than 32 levels"):
        load_json(deep, "x.json")


# the reported cases: every consumer answers in one line
REPORTED = {
    "nested 100,000 deep": lambda m: "[" * 100_000 + "]" * 100_000,
    "skipped as a list": lambda m: m["splits"]["test"].__setitem__("skipped", [1, 2]),
    "augment without factor": lambda m: m.__setitem__("augment", {"domain": "plain", "variants": ["f1_sx+0_sy+0"]}),
    "unknown scheme option": lambda m: m["scheme"].__setitem__("rounds", 3),
    "scheme option of another type": lambda m: m["scheme"].__setitem__("cs", "yes"),
    "missing scheme option": lambda m: m["scheme"].pop("np"),
    "options as a string": lambda m: m.__setitem__("options", "shard_size=5"),
    "decode.crop = 5": lambda m: m.__setitem__("decode", {"crop": 5}),
    "shard without a name": lambda m: m["splits"]["test"]["shards"][0].pop("name"),
    "count as text": lambda m: m["splits"]["test"].__setitem__("count", "100"),
    "escape in a class": lambda m: m["classes"].__setitem__(0, "\x1b[31mred"),
}


@pytest.mark.parametrize("case", sorted(REPORTED))
def test_reported_hostile_manifests_are_one_line_for_every_consumer(tmp_path, small, case):
    d = _edit(small / "ind", tmp_path / "m", REPORTED[case])
    for args in (["info", d], ["info", d, "--verify"], ["decrypt", d, "--keys", small / "k.json", "--out", tmp_path / "o"],
                 ["augment", d, "--split", "test"], ["preview", d, "-o", tmp_path / "p.png", "--plain", "sample"]):
        r = ppdata(*args)
        assert r.exit_code == 1, (args[0], r.output)
        one_line_or_ok(r)
        assert "manifest.json" in r.output, r.output


def test_a_shard_without_bytes_is_read_as_other_writers_write_it(tmp_path, small):
    d = _edit(small / "ind", tmp_path / "m", lambda m: m["splits"]["test"]["shards"][0].pop("bytes"))
    r = ppdata("info", d, "--verify")
    assert r.exit_code == 0 and "verify    ok" in r.output, r.output


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            yield from _paths(v, prefix + (i,))


_JUNK = st.recursive(st.none() | st.booleans() | st.integers(-10**15, 10**15) | st.floats(allow_nan=False)
                     | st.text(max_size=8) | st.sampled_from(["\x1b[2J", "../x", "test-000000.tar", "pixel", "\u202e"]),
                     lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children,
                                                                                        max_size=3), max_leaves=6)


@st.composite
def manifest_mutations(draw, manifest):
    paths = [p for p in _paths(manifest) if p]
    path = draw(st.sampled_from(paths))
    action = draw(st.sampled_from(["replace", "replace", "delete", "deep"]))
    value = draw(_JUNK)
    return path, action, value


def _mutate(m, path, action, value):
    parent = m
    for k in path[:-1]:
        parent = parent[k]
    if action == "delete":
        if isinstance(parent, dict):
            parent.pop(path[-1])
        else:
            parent.pop(path[-1])
    elif action == "deep":
        v = value
        for _ in range(40):
            v = [v]
        parent[path[-1]] = v
    else:
        parent[path[-1]] = value


@pytest.fixture(scope="module")
def base_manifest(small):
    return json.loads((small / "ind" / "manifest.json").read_text())


@SETTINGS
@given(data=st.data())
def test_generated_hostile_manifests_are_one_line_or_read_exactly(tmp_path_factory, small, base_manifest, data):
    path, action, value = data.draw(manifest_mutations(base_manifest))
    m = copy.deepcopy(base_manifest)
    _mutate(m, path, action, value)
    d = tmp_path_factory.mktemp("g")
    shutil.copytree(small / "ind", d / "in")
    (d / "in" / "manifest.json").write_text(json.dumps(m))
    for args in (["info", d / "in", "--verify"], ["decrypt", d / "in", "--keys", small / "k.json", "--out", d / "o"],
                 ["augment", d / "in", "--split", "test", "--out", d / "a", "--shift", "0"],
                 ["preview", d / "in", "-o", d / "p.png", "-n", "4", "--plain", "sample"]):
        one_line_or_ok(ppdata(*args))


@st.composite
def keystore_mutations(draw):
    field = draw(st.sampled_from(["format", "version", "mode", "secret", "key_id", "seeded", "scheme", "dataset",
                                  "whole"]))
    return field, draw(_JUNK), draw(st.booleans())


@SETTINGS
@given(keystore_mutations())
def test_generated_hostile_keystores_are_one_line(tmp_path_factory, small, mutation):
    field, value, delete = mutation
    ks = json.loads((small / "k.json").read_text())
    if field == "whole":
        ks = value
    elif delete:
        ks.pop(field)
    else:
        ks[field] = value
    d = tmp_path_factory.mktemp("k")
    (d / "k.json").write_text(json.dumps(ks))
    r = ppdata("decrypt", small / "ind", "--keys", d / "k.json", "--out", d / "o")
    one_line_or_ok(r)
    if r.exit_code == 1:
        assert "k.json" in r.output or "keystore" in r.output


@pytest.mark.parametrize("keys", ["/dev/zero", "fifo", "dangling", "deep", "folder"])
def test_keystore_that_is_not_a_regular_small_file_is_one_line(tmp_path, small, keys):
    import os

    path = {"/dev/zero": Path("/dev/zero"), "fifo": tmp_path / "k.fifo", "dangling": tmp_path / "gone.json",
            "deep": tmp_path / "deep.json", "folder": tmp_path / "dir.json"}[keys]
    if keys == "fifo":
        os.mkfifo(path)
    elif keys == "dangling":
        path.symlink_to(tmp_path / "nowhere")
    elif keys == "deep":
        path.write_text("[" * 5000 + "]" * 5000)
    elif keys == "folder":
        path.mkdir()
    r = ppdata("decrypt", small / "ind", "--keys", path, "--out", tmp_path / "o")
    assert r.exit_code in (1, 2), r.output
    assert str(path.name) in r.output
    assert not (tmp_path / "o").exists()


def test_schemas_name_the_field():
    from ppdata.schema import check

    with pytest.raises(PpdataError, match=r"^k: secret is 5, expected 64 hex digits$"):
        check({"format": "ppdata-keystore", "mode": "same", "secret": 5}, "keystore", "k")
    with pytest.raises(PpdataError, match=r"^m: splits.a.shards\[0\].count is missing$"):
        check({"format": "webdataset", "shape": [1, 1, 3], "splits": {"a": {"count": 0, "shards": [{"name": "x"}]}}},
              "manifest", "m")


# ---------------------------------------------------------------------------------------------
# the keystore is the authority for decryption


@pytest.mark.parametrize("folder,keys", [("ind", "k.json"), ("same", "kf.json")])
@pytest.mark.parametrize("edit", ["cs", "name", "np", "shape"])
def test_decrypt_refuses_a_manifest_whose_scheme_the_key_was_not_made_for(tmp_path, small, folder, keys, edit):
    """The reported case: scheme.cs or scheme.name edited in the manifest made decrypt write noise
    (mean error 55-81) and exit 0. Now the keystore's record (independent keys) or the check value
    bound to the secret (any key) refuses it, naming both."""
    def fn(m):
        if edit == "cs":
            m["scheme"]["cs"] = not m["scheme"]["cs"]
        elif edit == "name":
            m["scheme"]["name"] = "icip"
        elif edit == "np":
            m["scheme"].update(np=False, cs=True)
        else:
            m["shape"] = [16, 64, 3]

    d = _edit(small / folder, tmp_path / "m", fn)
    r = ppdata("decrypt", d, "--keys", small / keys, "--out", tmp_path / "o")
    assert r.exit_code == 1, r.output
    one_line_or_ok(r)
    assert "refusing to decrypt" in r.output or "shape" in r.output
    if edit != "shape":
        assert "icip" in r.output or "cs=" in r.output or "np" in r.output
    assert not (tmp_path / "o" / "manifest.json").exists()
    # the untouched folder decrypts
    r = ppdata("decrypt", small / folder, "--keys", small / keys, "--out", tmp_path / "ok")
    assert r.exit_code == 0, r.output
