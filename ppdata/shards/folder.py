"""The life cycle of an output folder: one writer at a time, a journal of what it wrote, and
deletion of nothing that ppdata cannot prove it wrote.

Rules (``OutputFolder``):

- **Lock.** The folder itself is locked with an OS file lock (``flock`` on the folder) for the
  whole run; a second ppdata process writing the same folder fails at once, naming the first.
- **Journal.** While a run writes, ``.ppdata-incomplete`` holds one JSON line per file or folder
  the run is about to create (``claim``), written and fsynced *before* the file exists. A folder
  with a journal and no manifest is an interrupted run; the journal proves which files it wrote.
- **Ownership.** ppdata's files in a folder are exactly: those the folder's manifest lists (shards,
  or a PNG tree's files), the manifest, and what the journal claims. ``--overwrite`` removes
  those and nothing else; it refuses, naming them, if the folder holds anything else. An
  interrupted run's claimed files are removed when the command is run again.
- **Failure.** On an error or Ctrl-C the run's own files are removed (no manifest is written); a
  killed run leaves its journal, so the next run can clean up after it.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path, PurePosixPath

from .. import __version__
from ..errors import PpdataError
from ..fileio import atomic_json, io_error
from ..names import check_path_text
from .manifest import FORMATS, MANIFEST, MAX_MANIFEST_BYTES, check_manifest

log = logging.getLogger("ppdata")

JOURNAL = ".ppdata-incomplete"
MANIFEST_PART = MANIFEST + ".part"
_SHOW = 5


def _lock_folder(path: Path) -> int:
    """An exclusive, non-blocking OS lock on the folder; returns the descriptor holding it."""
    import fcntl

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            who = _journal_header(path)
            by = f" (pid {who.get('pid')} on {who.get('host')}, started {who.get('started')})" if who else ""
            raise PpdataError(f"{path} is being written by another ppdata process{by}; wait for it to finish "
                              f"or choose another output folder") from None
        raise io_error(e, path, "lock") from None
    return fd


def _journal_lines(path: Path) -> list[dict]:
    try:
        with open(path / JOURNAL, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES)
    except OSError:
        return []
    out = []
    for line in data.splitlines():
        try:
            item = json.loads(line)
        except ValueError:  # a torn last line (killed mid-write) or an old plain-text marker
            continue
        if isinstance(item, dict):
            out.append(item)
    return out


def _journal_header(path: Path) -> dict:
    lines = _journal_lines(path)
    return lines[0] if lines and "run" in lines[0] else {}


_OLD_MARKER = b"a ppdata run is writing this folder"


def _is_journal(path: Path, lines: list[dict]) -> bool:
    """A journal ppdata wrote: a JSON header naming a run (or the plain marker of ppdata 0.1)."""
    if lines and "run" in lines[0]:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(len(_OLD_MARKER)) == _OLD_MARKER
    except OSError:
        return False


def _relative(name) -> str | None:
    """A journal/manifest entry as a safe relative path (no '..', not absolute), else None."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return None
    p = PurePosixPath(name)
    if p.is_absolute() or any(part in ("", ".", "..") for part in p.parts):
        return None
    return p.as_posix()


def owned_by_manifest(path: Path) -> tuple[set[str], set[str]]:
    """(files, folders) that the folder's own manifest lists and that still have the size it
    recorded; empty if there is no valid ppdata manifest (then the manifest is not provably ours).
    A listed file whose size differs is left out: it is not the file ppdata wrote."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        return set(), set()
    try:
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            return set(), set()
        m = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set(), set()
    sizes: dict[str, int] = {}
    folders: set[str] = set()
    try:
        if isinstance(m, dict) and m.get("format") == "png" and isinstance(m.get("files"), dict):
            for name, size in m["files"].items():
                rel = _relative(name)
                if rel is None or not isinstance(size, int):
                    return set(), set()
                sizes[rel] = size
                parent = PurePosixPath(rel).parent
                while str(parent) != ".":
                    folders.add(parent.as_posix())
                    parent = parent.parent
        elif isinstance(m, dict) and m.get("format") in FORMATS:
            check_manifest(m, mpath)
            sizes = {s["name"]: s.get("bytes") for info in m["splits"].values() for s in info["shards"]}
        else:
            return set(), set()
    except PpdataError:
        return set(), set()
    files = set()
    for rel, size in sizes.items():
        f = path / rel
        try:
            if f.is_symlink() or not f.is_file() or (size is not None and f.stat().st_size != size):
                continue
        except OSError:
            continue
        files.add(rel)
    return files | {MANIFEST}, folders


class OutputFolder:
    """Prepare a folder for a run, record what it writes, mark it complete only at the end.

    Use as a context manager; create every file through ``claim`` (or the ``claim`` callback
    handed to writers), finish with ``write_manifest``. See the module docstring for the rules.
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = False, what: str = "--out", extend: bool = False):
        check_path_text(path, f"output folder ({what})")
        self.path = Path(path)
        self.overwrite = overwrite
        self.extend = extend
        self.what = what
        self._fd: int | None = None
        self._journal = None
        self._claimed: list[str] = []
        self._created = False
        self.complete = False

    # -- entering: lock, check ownership, clean up -----------------------------------------------

    def __enter__(self) -> "OutputFolder":
        p = self.path
        if p.exists() and not p.is_dir():
            raise PpdataError(f"output {p} exists and is not a folder")
        if self.extend and not p.is_dir():
            raise PpdataError(f"shard folder {p} does not exist")
        try:
            if not p.exists():
                p.mkdir(parents=True)
                self._created = True
        except FileExistsError:
            pass
        except OSError as e:
            raise io_error(e, p, "create") from None
        self._fd = _lock_folder(p)
        try:
            self._prepare()
        except BaseException:
            self._release()
            raise
        return self

    def _prepare(self) -> None:
        p = self.path
        entries = sorted(os.listdir(p))
        if not entries:
            self._start_journal()
            return
        files, folders = owned_by_manifest(p)
        journal = _journal_lines(p) if JOURNAL in entries else []
        ours_journal = JOURNAL in entries and _is_journal(p / JOURNAL, journal)
        if not ours_journal:
            journal = []
        claimed = {rel for item in journal if (rel := _relative(item.get("claim"))) is not None}
        if self.extend:  # add to a complete folder: keep everything, drop an interrupted extension's files
            if MANIFEST not in files:
                raise PpdataError(f"{p} has no valid manifest.json; only a complete shard folder can be extended")
            if JOURNAL in entries and not ours_journal:
                raise PpdataError(f"{p} holds a {JOURNAL} that ppdata did not write; move it away")
            for rel in sorted(claimed - files - {MANIFEST}, key=lambda r: -r.count("/")):
                self._remove(rel)
            self._remove(JOURNAL)
            self._start_journal()
            return
        interrupted = ours_journal and MANIFEST not in entries
        if not (self.overwrite or interrupted):
            raise PpdataError(f"output folder {p} is not empty ({len(entries)} entries); pass --overwrite to "
                              f"replace ppdata's files there, or choose another {self.what}")
        ours_top = {r.split("/", 1)[0] for r in files | folders | claimed} | ({JOURNAL} if ours_journal else set())
        foreign = [e for e in entries if e not in ours_top]
        foreign += self._foreign_inside(folders | {r for r in claimed if (p / r).is_dir()}, files, claimed)
        if foreign:
            shown = ", ".join(foreign[:_SHOW]) + (f" and {len(foreign) - _SHOW} more" if len(foreign) > _SHOW else "")
            raise PpdataError(f"output folder {p} holds files that ppdata did not write ({shown}); move them "
                              f"away or choose another {self.what}: ppdata only replaces its own files")
        if interrupted:
            log.warning("output folder %s holds an interrupted run; removing its files and starting again", p)
        # the manifest goes first: from then on the folder no longer looks complete
        self._remove(MANIFEST)
        for rel in sorted(files | claimed, key=lambda r: -r.count("/")):
            self._remove(rel)
        for rel in sorted(folders | {r for r in claimed if (p / r).is_dir()}, key=lambda r: -r.count("/")):
            try:
                (p / rel).rmdir()
            except OSError:
                pass
        self._remove(JOURNAL)
        self._start_journal()

    def _foreign_inside(self, folders: set[str], files: set[str], claimed: set[str]) -> list[str]:
        """Entries inside ppdata's folders (a PNG tree) that neither the manifest nor the journal lists."""
        out = []
        for rel in sorted(folders):
            d = self.path / rel
            if d.is_symlink() or not d.is_dir():
                if d.exists() or d.is_symlink():
                    out.append(rel)
                continue
            for name in sorted(os.listdir(d)):
                child = f"{rel}/{name}"
                if child not in files and child not in folders and child not in claimed:
                    out.append(child)
        return out

    def _remove(self, rel: str) -> None:
        path = self.path / rel
        try:
            if path.is_symlink() or path.is_file():
                path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise io_error(e, path, "remove") from None

    def _start_journal(self) -> None:
        try:
            self._journal = open(self.path / JOURNAL, "w")
            header = {"ppdata": __version__, "run": os.urandom(8).hex(), "pid": os.getpid(),
                      "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "note": "a ppdata run is writing this folder; it is complete once manifest.json exists"}
            self._journal.write(json.dumps(header) + "\n")
            self._journal.flush()
            os.fsync(self._journal.fileno())
        except OSError as e:
            raise io_error(e, self.path / JOURNAL) from None

    # -- during the run ----------------------------------------------------------------------------

    def claim(self, *names: str) -> list[Path]:
        """Record that this run is about to create ``names`` (relative paths inside the folder);
        returns their paths. Durable before the caller creates anything."""
        paths = []
        lines = []
        for name in names:
            rel = _relative(name)
            if rel is None:
                raise PpdataError(f"{name!r} is not a path inside {self.path}")
            paths.append(self.path / rel)
            if rel not in self._claimed:
                if rel != MANIFEST_PART and (self.path / rel).exists():
                    raise PpdataError(f"{self.path / rel} already exists and is not listed by ppdata; "
                                      f"ppdata does not replace it")
                self._claimed.append(rel)
                lines.append(json.dumps({"claim": rel}) + "\n")
        if lines:
            try:
                self._journal.write("".join(lines))
                self._journal.flush()
                os.fsync(self._journal.fileno())
            except OSError as e:
                raise io_error(e, self.path / JOURNAL) from None
        return paths

    def write_manifest(self, manifest: dict) -> Path:
        """Check and write the manifest (atomically, last): the folder is complete."""
        if manifest.get("format") != "png":
            check_manifest(manifest, self.path / MANIFEST)
        self.claim(MANIFEST_PART)
        path = atomic_json(self.path / MANIFEST, manifest, tmp=self.path / MANIFEST_PART)
        self.complete = True
        return path

    # -- leaving -------------------------------------------------------------------------------------

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self.complete:
                self._close_journal()
                self._remove(JOURNAL)
                return
            # failed (or the caller wrote no manifest): remove this run's own files
            if self.complete and not self.extend:
                self._remove(MANIFEST)
            for rel in sorted(self._claimed, key=lambda r: -r.count("/")):
                path = self.path / rel
                if path.is_dir() and not path.is_symlink():
                    try:
                        path.rmdir()
                    except OSError:
                        pass
                else:
                    self._remove(rel)
            self._close_journal()
            self._remove(JOURNAL)
            if self._created and not self.extend:
                try:
                    self.path.rmdir()  # only if empty
                except OSError:
                    pass
        finally:
            self._release()

    def _close_journal(self) -> None:
        if self._journal is not None:
            try:
                self._journal.close()
            except OSError:
                pass
            self._journal = None

    def _release(self) -> None:
        self._close_journal()
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None
