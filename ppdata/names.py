"""Names that become file names: one validation layer for users' options and for manifests.

Every name that ppdata turns into a path, or into a sample key, comes from a user (``--split``)
or from a file that may be hostile (a manifest edited on a server, an archive's member names).
They are checked here, on write and on read, against these rules:

=============  ==============================================  =====================================
name           rule                                            why
=============  ==============================================  =====================================
split          ``[A-Za-z0-9]{1,32}``                           part of sample keys ``<split>_<index>``
                                                               (no ``_``) and WebDataset member names
                                                               (no ``.``); part of shard file names
shard          ``<split>-NNNNNN.tar`` (number = position) or   nothing else is ever opened from a
               ``<split>.h5``                                  manifest
class          1-255 UTF-8 bytes; no ``/``, ``\\``, NUL or      becomes a folder name
               control character; not ``.``/``..``; no        (``decrypt --format png``)
               leading ``.``, no leading/trailing space
sample key     ``[A-Za-z0-9][A-Za-z0-9_+-]{0,94}``              tar member names ``<key>.npy``, PNG
                                                               file names ``<key>.png``
=============  ==============================================  =====================================

``inside(folder, name)`` joins a checked single component to a folder and proves that the result,
symlinks resolved, lies inside the folder.
"""
from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from .errors import PpdataError

SPLIT_RE = re.compile(r"^[A-Za-z0-9]{1,32}\Z")
SAMPLE_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+-]{0,94}\Z")
_SHARD_NUMBER_RE = re.compile(r"^([A-Za-z0-9]{1,32})-(\d{6})\.tar\Z")


def check_split(name, what: str = "split") -> str:
    """``name`` if it is a valid split name, else ``PpdataError`` naming ``what``."""
    if not isinstance(name, str) or not SPLIT_RE.match(name):
        raise PpdataError(f"{what} {name!r} is not a valid split name: use 1-32 letters and digits "
                          f"(no '_', '.', '-', '/' or spaces), e.g. train, test, val2")
    return name


def check_class(name, what: str = "class name") -> str:
    """``name`` if it can safely be a folder name (see the module docstring)."""
    if not isinstance(name, str) or not name:
        raise PpdataError(f"{what} {name!r} is empty or not text")
    bad = None
    if name in (".", "..") or name.startswith("."):
        bad = "starts with '.'"
    elif "/" in name or "\\" in name:
        bad = "contains a path separator"
    elif any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        bad = "contains a control character"
    elif name != name.strip():
        bad = "starts or ends with a space"
    elif len(name.encode("utf-8", "surrogatepass")) > 255:
        bad = "is longer than 255 bytes"
    if bad:
        raise PpdataError(f"{what} {name!r} {bad}; it cannot be used as a folder name")
    return name


def check_sample_key(key, what: str = "sample key") -> str:
    if not isinstance(key, str) or not SAMPLE_KEY_RE.match(key):
        raise PpdataError(f"{what} {key!r} is not a valid sample key (letters, digits, '_', '+', '-'; "
                          f"at most 95 characters; no '.' or '/')")
    return key


def shard_name(split: str, number: int) -> str:
    """``<split>-NNNNNN.tar``: the name of tar shard ``number`` of ``split``."""
    return f"{check_split(split)}-{number:06d}.tar"


def h5_name(split: str) -> str:
    return f"{check_split(split)}.h5"


def check_shard_names(fmt: str, split: str, names: list, where: str) -> None:
    """The shard file names a manifest lists for ``split`` must be exactly the ones ppdata writes:
    ``<split>-000000.tar``, ``<split>-000001.tar``, ... in order, or the single ``<split>.h5``."""
    if fmt == "hdf5":
        want = [h5_name(split)]
    else:
        want = [shard_name(split, i) for i in range(len(names))]
    if list(names) != want:
        bad = next((n for n, w in zip(names, want) if n != w), names[len(want):][:1] or names)
        raise PpdataError(f"{where}: split {split!r} lists shard {bad!r}; expected the names "
                          f"{want[0]}{', ...' if len(want) > 1 else ''} in order")


def printable(text) -> str:
    """``text`` for a message: control and other unprintable characters (terminal escapes, bidi
    overrides, NUL, DEL) written as ``\\x1b``, ``\\u202e``; printable text unchanged."""
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for c in text:
        if c.isprintable() or c == " ":
            out.append(c)
        else:
            n = ord(c)
            out.append(f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}")
    return "".join(out)


def check_path_text(path, what: str) -> str:
    """Refuse an empty path (which would otherwise mean the current folder)."""
    text = os.fspath(path) if path is not None else ""
    if not str(text).strip():
        raise PpdataError(f"{what} is an empty path")
    return text


def inside(folder: str | os.PathLike, name: str) -> Path:
    """``folder / name`` for a single path component ``name``, proven to resolve inside ``folder``."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise PpdataError(f"{name!r} is not a plain file name inside {folder}")
    folder = Path(folder)
    path = folder / name
    root = folder.resolve()
    real = path.resolve()
    if real != root and root not in real.parents:
        raise PpdataError(f"{path} resolves outside {folder} (to {real})")
    return path


# ---------------------------------------------------------------------------------------------
# the names ppdata itself writes in an output folder (its file grammar)

MANIFEST_NAME = "manifest.json"
_SHARD_FILE_RE = re.compile(r"^[A-Za-z0-9]{1,32}(?:-\d{6}\.tar|\.h5)(?:\.part)?\Z")
_OWN_EXTRA = re.compile(r"^(?:manifest\.json\.part|\.shuffle-\d{4}\.part)\Z")
GRAMMARS = ("shards", "png")


def own_name(rel, grammar: str | None = None) -> str | None:
    """What ``rel`` is in ppdata's own file grammar for an output folder: ``"file"`` or
    ``"folder"``, or None for a name ppdata never writes.

    ``shards`` (a shard folder): ``<split>-NNNNNN.tar``, ``<split>.h5``, either with ``.part``,
    ``manifest.json.part``, ``.shuffle-NNNN.part``. ``png`` (``decrypt --format png``): the
    folders ``<split>`` and ``<split>/<class>``, the files ``<split>/<class>/<key>.png`` and
    ``manifest.json.part``. ``grammar`` None: either. The manifest itself is not a claimable name."""
    if not isinstance(rel, str) or not rel or len(rel) > 1024:
        return None
    if grammar in (None, "shards") and (_SHARD_FILE_RE.match(rel) or _OWN_EXTRA.match(rel)):
        return "file"
    if grammar in (None, "png"):
        if rel == "manifest.json.part":
            return "file"
        parts = rel.split("/")
        try:
            check_split(parts[0])
            if len(parts) >= 2:
                check_class(parts[1])
            if len(parts) == 3:
                stem, dot, ext = parts[2].rpartition(".")
                if dot != "." or ext != "png":
                    return None
                check_sample_key(stem)
        except PpdataError:
            return None
        return {1: "folder", 2: "folder", 3: "file"}.get(len(parts))
    return None
