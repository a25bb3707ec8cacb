"""``manifest.json``: create, write atomically, and read as untrusted input.

A manifest describes a complete folder (see ``docs/format.md``); ``read_manifest`` checks every
field a consumer relies on before anything opens a file it names: types, the shape, class and
split names (``ppdata.names``), the exact shard file names, per-shard counts that add up to the
split's count, sha256 fields. A manifest that fails is reported in one line naming the file and
the field; no consumer works from a manifest that was not checked.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import PpdataError
from ..fileio import atomic_json
from ..names import check_class, check_shard_names, check_split
from ..schema import MAX_MANIFEST_BYTES, check, load_json, short

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2
FORMATS = ("webdataset", "hdf5")
MAX_SIDE = 1 << 16


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
    """Read and check ``DIR/manifest.json``; a clear error if the folder is not a complete run.
    The manifest is read as untrusted input: a regular file (a link is followed, as for every
    input, but must stay inside the folder), at most ``MAX_MANIFEST_BYTES``, nested at most
    ``schema.MAX_DEPTH`` deep, then ``check_manifest``."""
    from ..fileio import read_regular
    from ..names import inside
    from .folder import JOURNAL

    d = Path(directory)
    if not str(directory).strip():
        raise PpdataError("the shard folder is an empty path")
    if not d.is_dir():
        raise PpdataError(f"shard folder {d} does not exist")
    path = d / MANIFEST
    if not os.path.lexists(path):
        if os.path.lexists(d / JOURNAL):
            raise PpdataError(f"{d} holds an interrupted run (no manifest.json); run the command again")
        raise PpdataError(f"{d} has no manifest.json; is it a ppdata shard folder?")
    inside(d, MANIFEST)
    return parse_manifest(read_regular(path, MAX_MANIFEST_BYTES, "manifest"), path)


def parse_manifest(raw: bytes, where) -> dict:
    """A manifest's bytes (already size-bounded) parsed with a depth limit and checked."""
    m = load_json(raw, str(where))
    check_manifest(m, where)
    return m


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
    """Raise ``PpdataError`` unless ``m`` is a well-formed shard-folder manifest: the schema
    (``schema.MANIFEST``: every field's type and range), then the rules across fields (class and
    split names, shard names in order, counts that add up, the scheme's options)."""
    where = str(where)
    if not isinstance(m, dict):
        raise PpdataError(f"{where}: not a JSON object")
    if m.get("format") not in FORMATS:
        raise PpdataError(f"{where}: format is {short(m.get('format'))}, expected one of {', '.join(FORMATS)}")
    check(m, "manifest", where)
    fmt = m["format"]
    classes = m.get("classes") or []
    for c in classes:
        check_class(c, f"{where}: class")
    if len(set(classes)) != len(classes):
        raise PpdataError(f"{where}: classes repeat a name")
    if m.get("scheme") is not None:
        check_scheme_entry(m["scheme"], where)
    for sp, info in m["splits"].items():
        check_split(sp, f"{where}: split")
        names = [s["name"] for s in info["shards"]]
        check_shard_names(fmt, sp, names, where)
        total = sum(s["count"] for s in info["shards"])
        if total != info["count"]:
            raise PpdataError(f"{where}: split {sp} count is {info['count']} but its shards hold {total}")
        if info.get("augment") is not None:
            _check_augment(info["augment"], f"{where}: splits.{sp}.augment")
    if m.get("augment") is not None:
        _check_augment(m["augment"], f"{where}: augment")


def check_scheme_entry(desc, where) -> None:
    """A manifest's ``scheme`` entry names a known scheme with exactly the options it records
    (rebuilt through the registry: unknown, missing or ill-typed options are refused)."""
    from ..cipher import scheme_from_manifest

    try:
        scheme_from_manifest(desc)
    except ValueError as e:
        raise PpdataError(f"{where}: scheme {e}") from None


def _check_augment(aug, where) -> None:
    if aug["factor"] != len(aug["variants"]):
        raise PpdataError(f"{where}: factor is {aug['factor']} but {len(aug['variants'])} variants are listed")
    if len(set(aug["variants"])) != len(aug["variants"]):
        raise PpdataError(f"{where}: variants repeat a name")
