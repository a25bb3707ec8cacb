"""Remote storage: sources and output folders given as URLs, through ``fsspec``.

``s3://`` (s3fs), ``gs://`` (gcsfs) and other fsspec protocols for reading and writing,
``http(s)://`` for reading. Credentials and endpoints come from each library's usual
configuration (for S3: ``AWS_*`` variables, ``~/.aws``; another endpoint such as MinIO:
``AWS_ENDPOINT_URL_S3``). Keystores are always local files: a URL is refused for them.

Reading: ``read_ref(ref)`` returns the bytes a ``sources.Ref`` names (a whole file, or a byte
range for a member of an uncompressed tar), from a local path or a URL; ``open_url`` opens a URL
as a seekable binary file; ``filesystem(url)`` gives the fsspec file system and path, and names
the ``pip install`` to run when the protocol's package is missing. Writing a folder of shards on
object storage: ``RemoteFolder`` (its rules are in its docstring and in docs/scale.md).
"""
from __future__ import annotations

import os
import re
from typing import BinaryIO

from .errors import PpdataError

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_MODULES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp",
            "abfs": "adlfs", "az": "adlfs"}
READ_ONLY = ("http", "https")


def is_url(path) -> bool:
    """True for ``scheme://...`` (a local path never is)."""
    return isinstance(path, str) and bool(_URL_RE.match(path))


def protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


def filesystem(url: str):
    """``(fsspec file system, path inside it)`` for ``url``; a missing package is one line."""
    from .extras import require

    require("remote", f"the URL {url}", ("fsspec",))
    mod = _MODULES.get(protocol(url))
    if mod:
        require("remote", f"the URL {url}", (mod,))
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as e:
        raise PpdataError(f"cannot open {url}: {e}") from None


def join(base: str, *names: str) -> str:
    """``base/name/...`` for a URL or a local path."""
    if is_url(base):
        return "/".join([base.rstrip("/"), *names])
    return os.path.join(base, *names)


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] if is_url(path) else os.path.basename(os.path.normpath(path))


def open_url(url: str) -> BinaryIO:
    """A URL as a seekable binary file (read-ahead cache; caller closes it)."""
    fs, path = filesystem(url)
    try:
        return fs.open(path, "rb", block_size=4 << 20, cache_type="readahead")
    except FileNotFoundError:
        raise PpdataError(f"{url} does not exist") from None
    except OSError as e:
        raise PpdataError(f"cannot read {url}: {e}") from None


def size_of(url: str) -> int:
    fs, path = filesystem(url)
    try:
        return int(fs.size(path))
    except FileNotFoundError:
        raise PpdataError(f"{url} does not exist") from None


def read_ref(ref) -> bytes:
    """The bytes of a ``sources.Ref``: a whole file, or ``size`` bytes at ``offset``. A short read
    is an error (``PpdataError``), never fewer bytes."""
    if is_url(ref.path):
        fs, path = filesystem(ref.path)
        try:
            if ref.offset is None:
                data = fs.cat_file(path)
            else:
                data = fs.cat_file(path, start=ref.offset, end=ref.offset + ref.size)
        except FileNotFoundError:
            raise OSError(f"{ref.path} does not exist") from None
    elif ref.offset is None:
        with open(ref.path, "rb") as f:
            return f.read()
    else:
        fd = os.open(ref.path, os.O_RDONLY)
        try:
            data = os.pread(fd, ref.size, ref.offset)
        finally:
            os.close(fd)
    if ref.size is not None and len(data) != ref.size:
        raise PpdataError(f"{ref.path}: {ref.size} bytes at offset {ref.offset} were asked for, {len(data)} came "
                          f"(the archive changed or was cut short)")
    return data


def list_files(url: str) -> list[tuple[str, int]]:
    """Every file under the folder ``url``: (path relative to it, size), in sorted order."""
    fs, path = filesystem(url)
    root = path.rstrip("/")
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        raise PpdataError(f"{url} does not exist") from None
    out = []
    for p, info in found.items():
        if info.get("type", "file") != "file":
            continue
        rel = p[len(root):].lstrip("/")
        if rel:
            out.append((rel, int(info.get("size") or 0)))
    return sorted(out)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def isdir(url: str) -> bool:
    fs, path = filesystem(url)
    try:
        return fs.isdir(path)
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# an output folder on object storage


def _now() -> float:
    import time

    return time.time()


class RemoteFolder:
    """An output folder at a URL (``s3://bucket/prefix``), with ``shards.OutputFolder``'s rules
    carried over to object storage, where there is no file lock and no rename, and an object
    appears whole, or not at all, when its upload completes.

    - **Lock.** ``.ppdata-lock`` is created with a create-only put (S3 ``If-None-Match: *``), so of
      two runs starting together one gets it and the other fails at once, naming the first. The
      holder rewrites it every ``heartbeat`` seconds; a lock not rewritten for ``stale_after``
      seconds belongs to a run that died, and is taken over (its journal then tells what to
      clean up).
    - **Journal.** ``.ppdata-incomplete`` lists every object the run is about to create
      (``claim``); it is rewritten whole before each new object is uploaded (objects cannot be
      appended to).
    - **Objects.** Every shard is staged in a local temporary folder and uploaded whole with a
      create-only put: an object ppdata did not list is never replaced, and a cut-short upload
      leaves no object (a multipart upload that a killed process leaves behind is invisible and
      is removed by the bucket's lifecycle rule for incomplete uploads).
    - **Manifest last.** ``manifest.json`` is uploaded after every shard: a folder without it is
      incomplete. ``--overwrite`` removes the manifest first, then the objects it lists (with the
      sizes it records) and nothing else; foreign objects refuse the run, as on a disk.
    - **Failure.** On an error or Ctrl-C the run's own objects are deleted, then the journal and
      the lock; a killed run leaves lock and journal, and the next run cleans up once the lock is
      stale.

    ``path`` is the local staging folder (writers write there); ``publish(name)`` uploads a
    finished file from it. ``url_of(name)`` is the object's URL (for writers elsewhere, e.g. Ray
    workers, which upload claimed names themselves).
    """

    LOCK = ".ppdata-lock"

    def __init__(self, url: str, overwrite: bool = False, what: str = "--out", extend: bool = False,
                 stale_after: float = 600.0, heartbeat: float = 30.0):
        if protocol(url) in READ_ONLY:
            raise PpdataError(f"{what} {url}: {protocol(url)}:// is read-only; write to s3://, gs:// or a local folder")
        self.url = url.rstrip("/")
        self.overwrite = overwrite
        self.extend = extend
        self.what = what
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self.fs, self.root = filesystem(self.url)
        self.root = self.root.rstrip("/")
        self.run = os.urandom(8).hex()
        self.path = None  # local staging folder, while the run lasts
        self._claimed: list[str] = []
        self._uploaded: list[str] = []
        self._lock_held = False
        self._stop = None
        self._thread = None
        self.lost: str | None = None
        self.complete = False

    # -- names and objects ---------------------------------------------------------------------

    def _p(self, name: str) -> str:
        return f"{self.root}/{name}"

    def url_of(self, name: str) -> str:
        return f"{self.url}/{name}"

    def _read(self, name: str, limit: int = 1 << 20) -> bytes | None:
        try:
            with self.fs.open(self._p(name), "rb") as f:
                return f.read(limit)
        except FileNotFoundError:
            return None

    def _put(self, name: str, data: bytes, create: bool = False) -> None:
        try:
            with self.fs.open(self._p(name), "xb" if create else "wb") as f:
                f.write(data)
        except FileExistsError:
            raise
        except OSError as e:
            raise PpdataError(f"cannot write {self.url_of(name)}: {e}") from None

    def _delete(self, name: str) -> None:
        try:
            self.fs.rm_file(self._p(name))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise PpdataError(f"cannot remove {self.url_of(name)}: {e}") from None

    def _listing(self) -> dict[str, int]:
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for p, info in found.items():
            if info.get("type", "file") == "file":
                rel = p[len(self.root):].lstrip("/")
                if rel:
                    out[rel] = int(info.get("size") or 0)
        return out

    # -- lock -------------------------------------------------------------------------------------

    def _lock_record(self) -> bytes:
        import json
        import socket

        return json.dumps({"ppdata": "lock", "run": self.run, "pid": os.getpid(), "host": socket.gethostname(),
                           "heartbeat": _now(), "note": "a ppdata run is writing this folder"}).encode()

    def _take_lock(self) -> None:
        import json
        import time

        try:
            self._put(self.LOCK, self._lock_record(), create=True)
        except FileExistsError:
            raw = self._read(self.LOCK) or b"{}"
            try:
                held = json.loads(raw)
            except ValueError:
                held = {}
            age = _now() - float(held.get("heartbeat") or 0) if isinstance(held, dict) else float("inf")
            if age < self.stale_after:
                raise PpdataError(f"{self.url} is being written by another ppdata process (pid {held.get('pid')} on "
                                  f"{held.get('host')}, alive {age:.0f} s ago); wait for it to finish or choose "
                                  f"another output folder") from None
            # the holder stopped rewriting its lock: take it over, then make sure nobody else did too
            self._put(self.LOCK, self._lock_record())
            time.sleep(min(2.0, self.heartbeat))
            now = self._read(self.LOCK) or b""
            if self.run.encode() not in now:
                raise PpdataError(f"{self.url}: another ppdata process took over a stale lock at the same time; "
                                  f"run again later") from None
        self._lock_held = True
        self._start_heartbeat()

    def _start_heartbeat(self) -> None:
        import threading

        self._stop = threading.Event()

        def beat():
            while not self._stop.wait(self.heartbeat):
                try:
                    now = self._read(self.LOCK) or b""
                    if self.run.encode() not in now:
                        self.lost = "another process took over this folder's lock"
                        return
                    self._put(self.LOCK, self._lock_record())
                except Exception as e:  # noqa: BLE001  (reported at the next claim)
                    self.lost = f"cannot renew the lock: {e}"
                    return

        self._thread = threading.Thread(target=beat, daemon=True, name="ppdata-lock-heartbeat")
        self._thread.start()

    def _release_lock(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._stop = None
        if self._lock_held:
            self._lock_held = False
            try:
                now = self._read(self.LOCK) or b""
                if self.run.encode() in now:
                    self._delete(self.LOCK)
            except (OSError, PpdataError):
                pass

    # -- entering ---------------------------------------------------------------------------------

    def __enter__(self) -> "RemoteFolder":
        import tempfile

        from .shards.folder import JOURNAL

        self._journal_name = JOURNAL
        self._take_lock()
        try:
            self._prepare()
            self.path = tempfile.mkdtemp(prefix="ppdata-upload-")
        except BaseException:
            self._release_lock()
            raise
        return self

    def _owned(self, objects: dict[str, int]) -> set[str]:
        """Objects the folder's own manifest lists with the size it records (and the manifest)."""
        import json

        from .shards.manifest import FORMATS, MANIFEST, check_manifest

        if MANIFEST not in objects or objects[MANIFEST] > (256 << 20):
            return set()
        try:
            m = json.loads(self._read(MANIFEST, 256 << 20))
            if not (isinstance(m, dict) and m.get("format") in FORMATS):
                return set()
            check_manifest(m, self.url_of(MANIFEST))
        except (ValueError, PpdataError, OSError):
            return set()
        out = {MANIFEST}
        for info in m["splits"].values():
            for s in info["shards"]:
                if objects.get(s["name"]) == s.get("bytes", objects.get(s["name"])):
                    out.add(s["name"])
        return out

    def _journal_claims(self, objects) -> tuple[bool, set[str]]:
        import json

        if self._journal_name not in objects:
            return False, set()
        lines = []
        for line in (self._read(self._journal_name, 64 << 20) or b"").splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                lines.append(item)
        if not lines or "run" not in lines[0]:
            return False, set()
        return True, {c for item in lines[1:] if isinstance(c := item.get("claim"), str) and c and "/" not in c
                      and c not in (".", "..")}

    def _prepare(self) -> None:
        from .shards.manifest import MANIFEST

        objects = self._listing()
        objects.pop(self.LOCK, None)
        if not objects:
            self._write_journal()
            return
        owned = self._owned(objects)
        ours_journal, claimed = self._journal_claims(objects)
        if self.extend:
            if MANIFEST not in owned:
                raise PpdataError(f"{self.url} has no valid manifest.json; only a complete shard folder can be extended")
            if self._journal_name in objects and not ours_journal:
                raise PpdataError(f"{self.url} holds a {self._journal_name} that ppdata did not write; move it away")
            for name in sorted(claimed - owned):
                self._delete(name)
            self._write_journal()
            return
        interrupted = ours_journal and MANIFEST not in objects
        if not (self.overwrite or interrupted):
            raise PpdataError(f"output folder {self.url} is not empty ({len(objects)} objects); pass --overwrite to "
                              f"replace ppdata's files there, or choose another {self.what}")
        ours = owned | claimed | ({self._journal_name} if ours_journal else set())
        foreign = sorted(n for n in objects if n not in ours)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise PpdataError(f"output folder {self.url} holds objects that ppdata did not write ({shown}); move them "
                              f"away or choose another {self.what}: ppdata only replaces its own files")
        self._delete(MANIFEST) if MANIFEST in owned else None  # first: the folder no longer looks complete
        for name in sorted((owned | claimed) - {MANIFEST}):
            if name in objects:
                self._delete(name)
        self._write_journal()

    def _write_journal(self) -> None:
        import json
        import socket

        head = {"ppdata": "journal", "run": self.run, "pid": os.getpid(), "host": socket.gethostname(),
                "note": "a ppdata run is writing this folder; it is complete once manifest.json exists"}
        text = "".join(json.dumps(x) + "\n" for x in [head, *({"claim": c} for c in self._claimed)])
        self._put(self._journal_name, text.encode())

    # -- during the run ---------------------------------------------------------------------------

    def claim(self, *names: str) -> list:
        """Record (durably, in the journal object) that this run is about to create ``names``;
        returns their local staging paths. ``.part`` names are local only."""
        from pathlib import Path

        if self.lost:
            raise PpdataError(f"{self.url}: {self.lost}; stopping")
        new = []
        for name in names:
            if not name or "/" in name or name in (".", ".."):
                raise PpdataError(f"{name!r} is not a plain file name inside {self.url}")
            if name.endswith(".part") or name in self._claimed:
                continue
            if self.fs.exists(self._p(name)):
                raise PpdataError(f"{self.url_of(name)} already exists and is not listed by ppdata; ppdata does not "
                                  f"replace it")
            new.append(name)
        if new:
            self._claimed.extend(new)
            self._write_journal()
        return [Path(self.path) / n for n in names]

    def publish(self, name: str, local=None) -> None:
        """Upload the finished file ``name`` (from the staging folder, or ``local``) with a
        create-only put, then delete the local copy."""
        import shutil
        from pathlib import Path

        if name not in self._claimed:
            raise PpdataError(f"{name} was not claimed before its upload")
        if self.lost:
            raise PpdataError(f"{self.url}: {self.lost}; stopping")
        src = Path(local) if local is not None else Path(self.path) / name
        try:
            with open(src, "rb") as f, self.fs.open(self._p(name), "xb") as out:
                shutil.copyfileobj(f, out, 8 << 20)
        except FileExistsError:
            raise PpdataError(f"{self.url_of(name)} appeared while this run wrote it; another writer?") from None
        except OSError as e:
            raise PpdataError(f"cannot upload {self.url_of(name)}: {e}") from None
        self._uploaded.append(name)
        src.unlink()

    def write_manifest(self, manifest: dict):
        """Check and upload the manifest, last: the folder is complete."""
        import json

        from .shards.manifest import MANIFEST, check_manifest

        if manifest.get("format") != "png":
            check_manifest(manifest, self.url_of(MANIFEST))
        objects = self._listing()
        for info in manifest.get("splits", {}).values():  # every shard is there, with its size
            for s in info.get("shards", []):
                if objects.get(s["name"]) != s.get("bytes", objects.get(s["name"])):
                    raise PpdataError(f"{self.url_of(s['name'])} is missing or has another size than the run wrote")
        if self.lost:
            raise PpdataError(f"{self.url}: {self.lost}; stopping")
        self._put(MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        self.complete = True
        return self.url_of(MANIFEST)

    # -- leaving ------------------------------------------------------------------------------------

    def __exit__(self, exc_type, exc, tb) -> None:
        import shutil

        from .shards.manifest import MANIFEST

        try:
            if not (exc_type is None and self.complete):
                if self.complete and not self.extend:
                    self._delete(MANIFEST)
                for name in self._claimed:
                    self._delete(name)
            self._delete(self._journal_name)
        finally:
            self._release_lock()
            if self.path:
                shutil.rmtree(self.path, ignore_errors=True)
