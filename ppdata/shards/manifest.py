"""``manifest.json``: create, write atomically, and read as untrusted input.

A manifest describes a complete folder (see ``docs/format.md``); ``read_manifest`` checks every
field a consumer relies on before anything opens a file it names: types, the shape, class and
split names (``ppdata.names``), the exact shard file names, per-shard counts that add up to the
split's count, sha256 fields. A manifest that fails is reported in one line naming the file and
the field; no consumer works from a manifest that was not checked.
"""
from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import PpdataError
from ..fileio import atomic_json
from ..names import check_class, check_shard_names, check_split

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2
FORMATS = ("webdataset", "hdf5")
MAX_SIDE = 1 << 16
MAX_MANIFEST_BYTES = 256 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_VARIANT = re.compile(r"^f[01]_sx[+-]\d{1,5}_sy[+-]\d{1,5}$")


@dataclass
class ShardInfo:
    """One file of a split as the manifest lists it."""

    name: str
    count: int
    sha256: str
    bytes: int

    def to_json(self) -> dict:
        return {"name": self.name, "count": self.count, "sha256": self.sha256, "bytes": self.bytes}


def new_manifest(fmt: str, *, source: dict, scheme: dict, keys: dict | None, shape, classes: list[str],
                 options: dict) -> dict:
    """The common head of a manifest; ``splits`` is filled in as splits complete."""
    for c in classes:
        check_class(c)
    return {
        "manifest_version": MANIFEST_VERSION,
        "ppdata_version": __version__,
        "id": uuid.uuid4().hex,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "format": fmt,
        "source": source,
        "scheme": scheme,
        "keys": keys,
        "shape": list(shape) if shape is not None else None,
        "classes": list(classes),
        "sample_key": "<split>_<index:06d>",
        "options": options,
        "splits": {},
    }


def write_manifest(directory: str | os.PathLike, manifest: dict) -> Path:
    """Check ``manifest`` as a reader would, then write ``DIR/manifest.json`` atomically."""
    check_manifest(manifest, Path(directory) / MANIFEST)
    return atomic_json(Path(directory) / MANIFEST, manifest)


def read_manifest(directory: str | os.PathLike) -> dict:
    """Read and check ``DIR/manifest.json``; a clear error if the folder is not a complete run."""
    from .folder import JOURNAL

    d = Path(directory)
    if not str(directory).strip():
        raise PpdataError("the shard folder is an empty path")
    if not d.is_dir():
        raise PpdataError(f"shard folder {d} does not exist")
    path = d / MANIFEST
    if not path.is_file():
        if (d / JOURNAL).exists():
            raise PpdataError(f"{d} holds an interrupted run (no manifest.json); run the command again")
        raise PpdataError(f"{d} has no manifest.json; is it a ppdata shard folder?")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise PpdataError(f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MiB; not a ppdata manifest")
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PpdataError(f"cannot read {path}: {e}") from None
    check_manifest(m, path)
    return m


def _int(value, where: str, field: str, lo: int = 0, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        raise PpdataError(f"{where}: {field} is {value!r}, expected an integer >= {lo}"
                          + (f" and <= {hi}" if hi is not None else ""))
    return value


def augment_entry(m: dict, split: str) -> dict | None:
    """The augmentation record of ``split``: the split's own ``augment`` entry (an expansion added
    to the folder it came from, e.g. ``trainx8``), or the folder's top-level one when it names
    ``split`` (an expansion written to a folder of its own); None for a split as encrypted."""
    own = (m.get("splits", {}).get(split) or {}).get("augment")
    if own:
        return own
    top = m.get("augment")
    if top and top.get("split", "train") == split:
        return top
    return None


def expansions_of(m: dict, split: str = "train") -> list[str]:
    """Splits of this folder that are encrypted-domain expansions of ``split`` added in place."""
    return [sp for sp, info in m.get("splits", {}).items()
            if isinstance(info, dict) and (info.get("augment") or {}).get("parent", {}).get("split") == split]


def check_manifest(m, where) -> None:
    """Raise ``PpdataError`` unless ``m`` is a well-formed shard-folder manifest (see module doc)."""
    where = str(where)
    if not isinstance(m, dict):
        raise PpdataError(f"{where}: not a JSON object")
    fmt = m.get("format")
    if fmt not in FORMATS:
        raise PpdataError(f"{where}: format is {fmt!r}, expected one of {', '.join(FORMATS)}")
    shape = m.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and shape[2] == 3):
        raise PpdataError(f"{where}: shape is {shape!r}, expected [H, W, 3]")
    for v, f in zip(shape[:2], ("height", "width")):
        _int(v, where, f"shape {f}", 1, MAX_SIDE)
    classes = m.get("classes", [])
    if not isinstance(classes, list):
        raise PpdataError(f"{where}: classes is not a list")
    for c in classes:
        check_class(c, f"{where}: class")
    if len(set(classes)) != len(classes):
        raise PpdataError(f"{where}: classes repeat a name")
    scheme = m.get("scheme")
    if scheme is not None and not (isinstance(scheme, dict) and isinstance(scheme.get("name", ""), str)):
        raise PpdataError(f"{where}: scheme is not an object with a name")
    keys = m.get("keys")
    if keys is not None:
        if not isinstance(keys, dict):
            raise PpdataError(f"{where}: keys is not an object")
        if keys.get("key_id") is not None and not (isinstance(keys["key_id"], str) and _HEX16.match(keys["key_id"])):
            raise PpdataError(f"{where}: keys.key_id is {keys.get('key_id')!r}, expected 16 hex digits")
    splits = m.get("splits")
    if not isinstance(splits, dict):
        raise PpdataError(f"{where}: splits is not an object")
    for sp, info in splits.items():
        check_split(sp, f"{where}: split")
        if not isinstance(info, dict):
            raise PpdataError(f"{where}: split {sp} is not an object")
        count = _int(info.get("count"), where, f"split {sp} count")
        shards = info.get("shards")
        if not isinstance(shards, list) or not shards:
            raise PpdataError(f"{where}: split {sp} lists no shard files")
        names = []
        total = 0
        for s in shards:
            if not isinstance(s, dict) or not isinstance(s.get("name"), str):
                raise PpdataError(f"{where}: split {sp}: a shard entry has no name")
            names.append(s["name"])
            total += _int(s.get("count"), where, f"shard {s['name']} count")
            _int(s.get("bytes", 0), where, f"shard {s['name']} bytes")
            sha = s.get("sha256")
            if sha is not None and not (isinstance(sha, str) and _HEX64.match(sha)):
                raise PpdataError(f"{where}: shard {s['name']} sha256 is {sha!r}, expected 64 hex digits")
        check_shard_names(fmt, sp, names, where)
        if total != count:
            raise PpdataError(f"{where}: split {sp} count is {count} but its shards hold {total}")
        if info.get("augment") is not None:
            _check_augment(info["augment"], where)
            check_split(info["augment"].get("parent", {}).get("split", "train"), f"{where}: augment parent split")
    if m.get("augment") is not None:
        _check_augment(m["augment"], where)


def _check_augment(aug, where) -> None:
    if aug is not None:
        if not isinstance(aug, dict) or not isinstance(aug.get("variants"), list):
            raise PpdataError(f"{where}: augment is not an object with a list of variants")
        check_split(aug.get("split", "train"), f"{where}: augment split")
        if not isinstance(aug.get("parent", {}), dict):
            raise PpdataError(f"{where}: augment parent is not an object")
        for v in aug["variants"]:
            if not isinstance(v, str) or not _VARIANT.match(v):
                raise PpdataError(f"{where}: augment variant {v!r} is not a name like f1_sx+4_sy-4")
