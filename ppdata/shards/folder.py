"""The output-folder policy: one writer at a time, a journal of what the run writes, deletion of
nothing that ppdata cannot prove it wrote, and nothing written, renamed or deleted through a link.

Every rule is stated here once, for every storage: a local folder (``store.LocalStore``, reached
by descriptor, never following a link) and a prefix on object storage (``remote.ObjectStore``).
The storage supplies the operations (see ``shards.store``); ``OutputFolder`` decides.

- **Lock.** The folder is locked for the whole run (``flock`` on a local folder; a create-only
  lock object with a heartbeat on object storage); a second ppdata process writing the same folder
  fails at once, naming the first.
- **Journal.** ``.ppdata-incomplete`` holds a header (the run's id, pid, host, start, and which
  file grammar it writes) and one JSON line per file or folder the run is about to create
  (``claim``), durable *before* the file exists. A folder with a journal and no manifest is an
  interrupted run.
- **A journal proves nothing by itself.** Its claims are acted on only if the journal is one
  ppdata wrote: a well-formed header whose run id matches the lock owner's record (on object
  storage, where the lock object keeps one), every line a claim, every claim a name of ppdata's
  own grammar (``names.own_name``: shards, ``.part`` files, buckets, the PNG tree) and, where it
  exists, of the kind claimed (a regular file, a real folder; never a link). Anything else is an
  error naming the journal, and nothing is deleted.
- **Ownership.** ppdata's files in a folder are exactly: those the folder's manifest lists (each
  a name of the grammar, a regular file with the recorded size), the manifest, and what a valid
  journal claims. ``--overwrite`` removes those and nothing else; it refuses, naming them, if the
  folder holds anything else. A link is never ppdata's: it refuses the run, and is left alone.
- **Links.** Files are created only as new regular files (``O_EXCL | O_NOFOLLOW``), finished by a
  rename inside the folder (or a create-only upload), removed only after an ``lstat`` shows a
  regular file; subfolders are reached only through real folders. The output folder itself must
  not be a link.
- **Failure.** On an error or Ctrl-C the run removes its own files (no manifest is written); a
  killed run leaves its journal, so the next run can clean up after it.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from .. import __version__
from ..errors import PpdataError
from ..names import check_path_text, own_name, printable
from ..schema import MAX_JOURNAL_BYTES, MAX_MANIFEST_BYTES, check, load_json
from .manifest import FORMATS, MANIFEST, check_manifest
from .store import FolderBusy, LinkRefused, LocalStore, describe_kind

log = logging.getLogger("ppdata")

JOURNAL = ".ppdata-incomplete"
LOCK = ".ppdata-lock"
MANIFEST_PART = MANIFEST + ".part"
_SHOW = 5
_OLD_MARKER = b"a ppdata run is writing this folder"


def _shown(names) -> str:
    names = [printable(n) for n in names]
    return ", ".join(names[:_SHOW]) + (f" and {len(names) - _SHOW} more" if len(names) > _SHOW else "")


# ---------------------------------------------------------------------------------------------
# reading what a folder says about itself: its manifest, its journal


def listed_by_manifest(store) -> tuple[dict[str, int], set[str]]:
    """(files with their recorded sizes, folders) that the folder's own manifest lists; empty if
    it has no valid ppdata manifest (then nothing there is provably ppdata's). Every listed name
    must be a name of ppdata's grammar, or the manifest is not one ppdata wrote."""
    try:
        raw = store.read(MANIFEST, MAX_MANIFEST_BYTES)
    except PpdataError:
        return {}, set()
    if raw is None:
        return {}, set()
    where = store.where(MANIFEST)
    try:
        m = load_json(raw, where)
        if isinstance(m, dict) and m.get("format") == "png":
            check(m, "png manifest", where)
            files = m["files"]
            grammar = "png"
        elif isinstance(m, dict) and m.get("format") in FORMATS:
            check_manifest(m, where)
            files = {s["name"]: s.get("bytes") for info in m["splits"].values() for s in info["shards"]}
            grammar = "shards"
        else:
            return {}, set()
    except PpdataError:
        return {}, set()
    folders: set[str] = set()
    for rel in files:
        if own_name(rel, grammar) != "file" or rel == MANIFEST_PART:
            return {}, set()
        parts = rel.split("/")
        for i in range(1, len(parts)):
            folders.add("/".join(parts[:i]))
    return dict(files), folders


class Journal:
    """A journal as found in a folder: its header and claims, or why ppdata did not write it."""

    def __init__(self, header: dict, claims: list[str]):
        self.header, self.claims = header, claims

    @property
    def run(self) -> str | None:
        return self.header.get("run")

    @property
    def grammar(self) -> str | None:
        return self.header.get("writes")


def parse_journal(raw: bytes, where: str) -> Journal:
    """A journal's header and claims (see the module docstring); ``PpdataError`` naming ``where``
    for anything ppdata would not have written. A torn last line (a run killed while writing
    it) is ignored: its file was never created."""
    if raw.startswith(_OLD_MARKER):  # the plain-text marker of ppdata 0.1: no claims
        return Journal({"run": "ppdata-0.1"}, [])
    lines = raw.split(b"\n")
    torn = lines.pop() if lines else b""
    if torn:
        try:
            load_json(torn, where)
            lines.append(torn)  # a whole last line without its newline
        except PpdataError:
            pass
    if not lines:
        raise PpdataError(f"{where} is empty; it is not a journal ppdata wrote: move it away (nothing was deleted)")
    items = []
    for i, line in enumerate(lines):
        try:
            items.append(load_json(line, f"{where} line {i + 1}", max_depth=2))
        except PpdataError as e:
            raise PpdataError(f"{e}; it is not a journal ppdata wrote: move it away (nothing was deleted)") from None
    header, claims = items[0], []
    try:
        check(header, "journal header", f"{where} line 1")
        for i, item in enumerate(items[1:], 2):
            check(item, "journal claim", f"{where} line {i}")
            claims.append(item["claim"])
    except PpdataError as e:
        raise PpdataError(f"{e}; it is not a journal ppdata wrote: move it away (nothing was deleted)") from None
    grammar = header.get("writes")
    for c in claims:
        if own_name(c, grammar) is None:
            raise PpdataError(f"{where} claims {printable(c)!r}, which is not a name ppdata writes"
                              + (f" in a {grammar} folder" if grammar else "")
                              + "; ppdata did not write this journal: move it away (nothing was deleted)")
    return Journal(header, claims)


# ---------------------------------------------------------------------------------------------
# the policy


class OutputFolder:
    """Prepare an output folder for a run, record what it writes, mark it complete only at the end.

    ``location``: a local path or a URL (object storage). ``overwrite``: replace ppdata's own
    files there. ``extend``: add to a complete shard folder (in-place augment), keeping everything
    it holds. ``writes``: the file grammar of this run (``shards``, or ``png`` for a PNG tree).
    Use as a context manager. Files are made with ``create(name)`` then ``finish(name)`` (a
    temporary name, renamed or uploaded when complete), folders with ``mkdir``; the run ends
    with ``write_manifest``. See the module docstring for the rules.
    """

    def __init__(self, location: str | os.PathLike, overwrite: bool = False, what: str = "--out", extend: bool = False,
                 writes: str = "shards", **store_options):
        from ..remote import is_url

        check_path_text(location, f"output folder ({what})")
        self.remote = is_url(str(location))
        self.location = str(location)
        self.path = self.location.rstrip("/") if self.remote else Path(location)
        self.overwrite = overwrite
        self.extend = extend
        self.what = what
        self.writes = writes
        self.run_id = os.urandom(8).hex()
        self.store = None
        self._store_options = store_options
        self._journal = None  # local: the open journal file
        self._claimed: list[str] = []
        self._claimed_set: set[str] = set()
        self.complete = False

    # -- the storage ---------------------------------------------------------------------------------

    def _open_store(self):
        if self.remote:
            from ..remote import ObjectStore

            return ObjectStore(self.location, what=self.what, **self._store_options)
        if self.extend and not os.path.lexists(self.path):
            raise PpdataError(f"shard folder {self.path} does not exist")
        return LocalStore(self.path, create_missing=not self.extend, what=f"output folder ({self.what})")

    def where(self, name: str = "") -> str:
        """The file ``name`` of this folder, for messages (a path or a URL)."""
        if self.store is not None:
            return self.store.where(name)
        return f"{self.location.rstrip('/')}/{name}" if self.remote else str(Path(self.location) / name)

    url_of = where

    @property
    def lost(self) -> str | None:
        """Why this run lost the folder's lock (object storage), else None."""
        return self.store.alive() if self.store is not None else None

    def temp_name(self, name: str) -> str:
        """The temporary name a file is written under before it is complete (None: the storage
        stages it elsewhere and ``finish`` uploads it)."""
        return self.store.temp_name(name)

    # -- entering: lock, check the journal and ownership, clean up ----------------------------------

    def _record(self) -> dict:
        return {"ppdata": __version__, "run": self.run_id, "pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "writes": self.writes,
                "note": "a ppdata run is writing this folder; it is complete once manifest.json exists"}

    def __enter__(self) -> "OutputFolder":
        self.store = self._open_store()
        try:
            try:
                previous = self.store.lock(self._record())
            except FolderBusy as busy:
                raise self._busy(busy) from None
            self._prepare(previous)
            self.store.settled()
        except BaseException:
            self._release()
            raise
        return self

    def _busy(self, busy: FolderBusy) -> PpdataError:
        who = busy.held
        if who is None:  # an OS lock keeps no record: the journal's header is it
            try:
                raw = self.store.read(JOURNAL, MAX_JOURNAL_BYTES) or b""
                first = raw.split(b"\n", 1)[0]
                who = load_json(first, self.store.where(JOURNAL), max_depth=2) if first else {}
            except PpdataError:
                who = {}
        who = who if isinstance(who, dict) else {}
        when = f"alive {busy.age:.0f} s ago" if busy.age is not None else f"started {printable(who.get('started'))}"
        by = f" (pid {printable(who.get('pid'))} on {printable(who.get('host'))}, {when})" if who else ""
        return PpdataError(f"{self.where()} is being written by another ppdata process{by}; wait for it to finish "
                           f"or choose another output folder")

    def _read_journal(self, entries: dict, previous: dict | None) -> Journal | None:
        if JOURNAL not in entries:
            return None
        where = self.store.where(JOURNAL)
        if entries[JOURNAL].kind != "file":
            raise PpdataError(f"{where} is {describe_kind(entries[JOURNAL].kind)}, not a journal ppdata wrote: "
                              f"move it away (nothing was deleted)")
        journal = parse_journal(self.store.read(JOURNAL, MAX_JOURNAL_BYTES) or b"", where)
        if self.store.lock_records:
            owner = (previous or {}).get("run")
            if owner != journal.run:
                raise PpdataError(f"{where} names run {printable(journal.run)!r}, but the folder's lock was held by "
                                  f"{'run ' + repr(printable(owner)) if owner else 'no run'}; ppdata did not write "
                                  f"this journal: move it away (nothing was deleted)")
        return journal

    def _check_claims(self, journal: Journal) -> None:
        """Every claimed name that exists is of the kind claimed, reached through real folders."""
        for rel in journal.claims:
            want = own_name(rel, journal.grammar)
            e = self._entry(rel)
            if e is not None and e.kind != {"file": "file", "folder": "folder"}[want]:
                raise PpdataError(f"{self.store.where(JOURNAL)} claims {printable(rel)!r}, which is "
                                  f"{describe_kind(e.kind)}, not the {want} ppdata would have made; ppdata leaves it "
                                  f"alone: move it (or the journal) away (nothing was deleted)")

    def _entry(self, rel: str):
        try:
            return self.store.entry(rel)
        except LinkRefused:
            from .store import Entry

            return Entry("link")

    def _prepare(self, previous: dict | None) -> None:
        store = self.store
        entries = {n: e for n, e in store.list().items() if n != LOCK or not store.lock_records}
        if not entries:
            self._start_journal()
            return
        journal = self._read_journal(entries, previous)
        claimed = list(journal.claims) if journal else []
        if journal:
            self._check_claims(journal)
        listed, folders = listed_by_manifest(store)
        files = {rel for rel, size in listed.items() if _is_file(self._entry(rel), size)}
        manifest_ok = bool(listed) and entries.get(MANIFEST) is not None and entries[MANIFEST].kind == "file"
        where = self.where()
        if self.extend:  # add to a complete folder: keep everything, drop an interrupted extension's files
            if not manifest_ok:
                raise PpdataError(f"{where} has no valid manifest.json; only a complete shard folder can be extended")
            self._remove_all([r for r in claimed if r not in listed and r not in folders])
            self._remove(JOURNAL)
            self._start_journal()
            return
        interrupted = journal is not None and MANIFEST not in entries
        if not (self.overwrite or interrupted):
            raise PpdataError(f"output folder {where} is not empty ({len(entries)} entries); pass --overwrite to "
                              f"replace ppdata's files there, or choose another {self.what}")
        ours = files | ({MANIFEST} if manifest_ok else set()) | set(claimed) | (folders if manifest_ok else set())
        top = {r.split("/", 1)[0] for r in ours} | ({JOURNAL} if journal else set())
        foreign = [n for n in sorted(entries) if n not in top]
        foreign += [n for n in sorted(top) if n in entries and entries[n].kind not in ("file", "folder")]
        foreign += self._foreign_inside(sorted({r for r in ours if _is_folder(self._entry(r))}), ours)
        if foreign:
            raise PpdataError(f"output folder {where} holds files that ppdata did not write ({_shown(foreign)}); move "
                              f"them away or choose another {self.what}: ppdata only replaces its own files")
        if interrupted:
            log.warning("output folder %s holds an interrupted run; removing its files and starting again", where)
        # the manifest goes first: from then on the folder no longer looks complete
        if manifest_ok:
            self._remove(MANIFEST)
        self._remove_all(sorted(files | set(claimed) | folders))
        self._remove(JOURNAL)
        self._start_journal()

    def _foreign_inside(self, folders: list[str], ours: set[str]) -> list[str]:
        """Entries inside ppdata's folders (a PNG tree) that neither the manifest nor the journal lists."""
        out = []
        for rel in folders:
            for name, e in sorted(self.store.list(rel).items()):
                child = f"{rel}/{name}"
                if child not in ours or e.kind not in ("file", "folder"):
                    out.append(child)
        return out

    def _remove_all(self, rels) -> None:
        """Remove files, then folders (deepest first) among ``rels``; only regular files and empty
        real folders are ever removed."""
        for rel in sorted(rels, key=lambda r: -r.count("/")):
            e = self._entry(rel)
            if e is None:
                continue
            if e.kind == "folder":
                self.store.rmdir(rel)
            else:
                self._remove(rel)

    def _remove(self, rel: str) -> None:
        self.store.remove(rel)

    def _start_journal(self) -> None:
        self._journal = self.store.start_journal(JOURNAL, json.dumps(self._record()) + "\n")

    # -- during the run -----------------------------------------------------------------------------

    def claim(self, *names: str) -> list:
        """Record that this run is about to create ``names`` (paths inside the folder, names of
        ppdata's grammar); durable before the caller creates anything. Returns where each will be
        (local paths; the staging paths on object storage)."""
        lost = self.lost
        if lost:
            raise PpdataError(f"{self.where()}: {lost}; stopping")
        new = []
        for name in names:
            if own_name(name, self.writes) is None:
                raise PpdataError(f"{printable(name)!r} is not a name ppdata writes in {self.where()}")
            if name in self._claimed_set or name in new:
                continue
            if self.store.entry(name) is not None:
                raise PpdataError(f"{self.where(name)} already exists and is not listed by ppdata; ppdata does not "
                                  f"replace it")
            new.append(name)
        if new:
            self._claimed.extend(new)
            self._claimed_set.update(new)
            self._journal = self.store.append_journal(JOURNAL, self._journal, [json.dumps({"claim": n}) for n in new],
                                                      json.dumps(self._record()))
        return [self.store.local_path(n) for n in names]

    def claim_files(self, *names: str) -> None:
        """Claim files that another process (a Ray task) writes with its temporary names."""
        self.claim(*[n for name in names for n in ([self.temp_name(name)] if self.temp_name(name) else []) + [name]])

    def create(self, name: str, readable: bool = False, temporary: bool = True):
        """Claim ``name`` and open a new file for it (under its temporary name when ``temporary``;
        ``finish(name)`` moves it into place)."""
        temp = self.temp_name(name) if temporary else None
        self.claim(*([temp] if temp else []), name)
        return self.store.create(temp or name, readable)

    def writing_path(self, name: str) -> str:
        """Where ``name``'s bytes are while it is written (for messages): its temporary file here,
        or its local staging file (object storage)."""
        temp = self.temp_name(name)
        return self.store.where(temp) if temp else str(self.store.local_path(name))

    def finish(self, name: str) -> None:
        """The file ``name`` (written through ``create``) is complete: rename or upload it."""
        if name not in self._claimed_set:
            raise PpdataError(f"{name} was not claimed before it was written")
        lost = self.lost
        if lost:
            raise PpdataError(f"{self.where()}: {lost}; stopping")
        self.store.finish(self.temp_name(name), name)

    def discard(self, name: str, temporary: bool = True) -> None:
        """Remove a file of this run that will not be finished (its temporary file)."""
        temp = self.temp_name(name) if temporary else None
        try:
            self.store.discard(temp or name)
        except PpdataError:
            pass

    def mkdir(self, rel: str) -> None:
        """Claim and create the new folder ``rel`` (a PNG tree)."""
        self.claim(rel)
        self.store.mkdir(rel)

    def remove_listed(self, name: str) -> None:
        """Remove a regular file that the folder's manifest listed (an expansion being replaced)."""
        if own_name(name, "shards") != "file":
            raise PpdataError(f"{printable(name)!r} is not a name ppdata writes")
        self.store.remove(name)

    def link_in(self, source: str | os.PathLike, name: str, link: bool = True) -> str:
        """Claim ``name`` and make it a hard link to ``source`` (a checked shard of another folder),
        or a copy where that cannot be (other file system, object storage, ``link=False``)."""
        if link and not self.remote:
            self.claim(name)
            if self.store.hardlink(source, name):
                return "hardlink"
        import shutil

        from ..remote import is_url, open_url

        with (open_url(str(source)) if is_url(str(source)) else open(source, "rb")) as src:
            f = self.create(name)
            try:
                with f:
                    shutil.copyfileobj(src, f, 8 << 20)
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException:
                self.discard(name)
                raise
        self.finish(name)
        return "copy"

    def entry(self, name: str):
        return self._entry(name)

    def write_manifest(self, manifest: dict):
        """Check the manifest and write it, last (atomically): the folder is complete. Every shard
        it lists must be in the folder, a regular file of the size it records."""
        if manifest.get("format") != "png":
            check_manifest(manifest, self.where(MANIFEST))
            for info in manifest["splits"].values():
                for s in info["shards"]:
                    if not _is_file(self._entry(s["name"]), s.get("bytes")):
                        raise PpdataError(f"{self.where(s['name'])} is missing or has another size than the run wrote")
        lost = self.lost
        if lost:
            raise PpdataError(f"{self.where()}: {lost}; stopping")
        data = (json.dumps(manifest, indent=2) + "\n").encode()
        temp = self.temp_name(MANIFEST)
        if temp:
            self.claim(temp)
        self.store.put(MANIFEST, data, temp)
        self.complete = True
        return self.store.local_path(MANIFEST) if not self.remote else self.where(MANIFEST)

    # -- leaving ------------------------------------------------------------------------------------

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self.complete:
                self._close_journal()
                self._remove(JOURNAL)
                return
            # failed (or the caller wrote no manifest): remove this run's own files
            if self.complete and not self.extend:
                self._quietly(MANIFEST)
            for rel in sorted(self._claimed, key=lambda r: -r.count("/")):
                e = self._entry(rel)
                if e is None:
                    continue
                if e.kind == "folder":
                    self.store.rmdir(rel)
                else:
                    self._quietly(rel)
            self._close_journal()
            self._quietly(JOURNAL)
            if not self.extend:
                self.store.remove_folder_if_created()
        finally:
            self._release()

    def _quietly(self, rel: str) -> None:
        """Remove a file of this run while cleaning up after a failure; what is not a regular file
        is left alone (and said), and the run's own error stays the one reported."""
        try:
            self.store.remove(rel)
        except PpdataError as e:
            log.warning("%s", e)

    def _close_journal(self) -> None:
        if self._journal is not None and hasattr(self._journal, "close"):
            try:
                self._journal.close()
            except OSError:
                pass
        self._journal = None

    def _release(self) -> None:
        self._close_journal()
        if self.store is not None:
            try:
                self.store.unlock()
            finally:
                self.store.close()


def _is_file(e, size: int | None) -> bool:
    """A regular file, of ``size`` bytes where the manifest records a size."""
    return e is not None and e.kind == "file" and (size is None or e.size == size)


def _is_folder(e) -> bool:
    return e is not None and e.kind == "folder"


def open_output(out, overwrite: bool = False, extend: bool = False, what: str = "--out", writes: str = "shards"):
    """The output folder of a run, local or at a URL (the same rules for both)."""
    return OutputFolder(out, overwrite=overwrite, extend=extend, what=what, writes=writes)
