"""Remote storage: sources and output folders given as URLs, through ``fsspec``.

``s3://`` (s3fs), ``gs://`` (gcsfs) and other fsspec protocols for reading and writing,
``http(s)://`` for reading. Credentials and endpoints come from each library's usual
configuration (for S3: ``AWS_*`` variables, ``~/.aws``; another endpoint such as MinIO:
``AWS_ENDPOINT_URL_S3``). Keystores are always local files: a URL is refused for them.

Reading: ``read_ref(ref, limit)`` returns the bytes a ``sources.Ref`` names (a whole file, or a
byte range for a member of an uncompressed tar), from a local path or a URL, at most ``limit``
bytes, and from a local path only a regular file (a FIFO or device is refused without blocking);
``open_url(url, stream=...)`` opens a URL for random access (``stream=False``: needs a server
that answers range requests; one that does not is refused in one line) or as a stream read once
from its start (compressed archives: any server). ``filesystem(url)`` gives the fsspec file
system and path, and names the ``pip install`` to run when the protocol's package is missing.

Timeouts: every request has a connect timeout and a read timeout (``TIMEOUTS``: 10 s and 60 s;
``ppdata --timeout S`` or ``PPDATA_TIMEOUT=S`` sets the read timeout, the connect timeout is
the smaller of 10 s and S). Failures: whatever fsspec, aiohttp or botocore raise while reading
a URL (timeout, a body cut short, a redirect loop, an HTTP status, no range support) is one
``PpdataError`` line naming the URL (``remote_error``). Writing a folder of shards on object
storage: ``ObjectStore`` (the storage of ``shards.folder.OutputFolder``).
"""
from __future__ import annotations

import io
import os
import re
from typing import BinaryIO

from .errors import PpdataError

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_MODULES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp",
            "abfs": "adlfs", "az": "adlfs"}
READ_ONLY = ("http", "https")
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0


def is_url(path) -> bool:
    """True for ``scheme://...`` (a local path never is)."""
    return isinstance(path, str) and bool(_URL_RE.match(path))


def protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


def timeouts() -> tuple[float, float]:
    """(connect, read) timeouts in seconds: ``PPDATA_TIMEOUT`` (set by ``ppdata --timeout``) or the
    defaults. Read from the environment so that worker processes and Ray workers share them."""
    text = os.environ.get("PPDATA_TIMEOUT")
    if not text:
        return CONNECT_TIMEOUT, READ_TIMEOUT
    try:
        read = float(text)
        if not read > 0:
            raise ValueError
    except ValueError:
        raise PpdataError(f"PPDATA_TIMEOUT={text!r} is not a positive number of seconds") from None
    return min(CONNECT_TIMEOUT, read), read


def _options(proto: str) -> dict:
    """fsspec storage options that set the timeouts of ``proto``'s client."""
    connect, read = timeouts()
    if proto in ("http", "https"):
        import aiohttp

        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read,
                                                                   connect=connect)}}
    if proto in ("s3", "s3a"):
        return {"config_kwargs": {"connect_timeout": connect, "read_timeout": read}}
    if proto in ("gs", "gcs"):
        return {"timeout": read}
    return {}


def filesystem(url: str):
    """``(fsspec file system, path inside it)`` for ``url``, with the timeouts of ``timeouts()``;
    a missing package is one line."""
    from .extras import require

    require("remote", f"the URL {url}", ("fsspec",))
    mod = _MODULES.get(protocol(url))
    if mod:
        require("remote", f"the URL {url}", (mod,))
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **_options(protocol(url)))
    except (ValueError, ImportError, TypeError) as e:
        raise PpdataError(f"cannot open {url}: {e}") from None


def remote_error(e: BaseException, url: str) -> PpdataError:
    """One line naming ``url`` for a failure while reading it (see the module docstring)."""
    import asyncio

    from .names import printable

    chain, c = [], e
    while c is not None and len(chain) < 8:
        chain.append(c)
        c = c.__cause__ or c.__context__
    names = {type(x).__name__ for x in chain}
    status = next((getattr(x, "status", None) for x in chain if isinstance(getattr(x, "status", None), int)), None)
    text = " ".join(str(x) for x in chain)
    _, read = timeouts()
    if isinstance(e, PpdataError):
        return e
    if "TooManyRedirects" in names or "redirect" in text.lower():
        return PpdataError(f"cannot read {url}: too many redirects (a redirect loop?)")
    if any(isinstance(x, (asyncio.TimeoutError, TimeoutError)) for x in chain) or \
            names & {"ServerTimeoutError", "FSTimeoutError", "ReadTimeoutError", "ConnectTimeoutError"}:
        return PpdataError(f"cannot read {url}: no answer within the {read:g} s timeout (--timeout to wait longer)")
    if names & {"ClientPayloadError", "ContentLengthError", "TransferEncodingError", "IncompleteRead"}:
        return PpdataError(f"cannot read {url}: the server ended the response before its end (cut short)")
    if "range requests" in text or "Cannot seek streaming" in text:
        return PpdataError(f"cannot read {url}: the server does not answer range requests, which reading this file by "
                           f"offset needs (an uncompressed .tar); serve it from a server that does, or compress it "
                           f"(a .tar.gz is read as one stream)")
    if status == 404 or (isinstance(e, FileNotFoundError) and len(chain) == 1):
        return PpdataError(f"{url} does not exist")
    if status is not None:
        return PpdataError(f"cannot read {url}: HTTP status {status}")
    if names & {"ClientConnectorError", "ClientOSError", "ServerDisconnectedError", "EndpointConnectionError",
                "ConnectionRefusedError", "ConnectionResetError"}:
        return PpdataError(f"cannot read {url}: cannot connect ({printable(str(e)).splitlines()[0][:160] if str(e) else type(e).__name__})")
    detail = printable(str(e)).splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return PpdataError(f"cannot read {url}: {detail}")


class RemoteFile(io.RawIOBase):
    """A file opened from a URL whose every failure is one ``PpdataError`` line naming the URL."""

    def __init__(self, f, url: str):
        self.f, self.url = f, url

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except (PpdataError, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001  (fsspec, aiohttp and botocore raise many kinds)
            raise remote_error(e, self.url) from None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._call(self.f.seekable)

    def readinto(self, b) -> int:
        data = self._call(self.f.read, len(b))
        n = len(data)
        b[:n] = data
        return n

    def read(self, n: int = -1) -> bytes:
        return self._call(self.f.read, n)

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._call(self.f.seek, pos, whence)

    def tell(self) -> int:
        return self._call(self.f.tell)

    def close(self) -> None:
        try:
            self.f.close()
        except Exception:  # noqa: BLE001
            pass
        super().close()


def join(base: str, *names: str) -> str:
    """``base/name/...`` for a URL or a local path."""
    if is_url(base):
        return "/".join([base.rstrip("/"), *names])
    return os.path.join(base, *names)


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] if is_url(path) else os.path.basename(os.path.normpath(path))


def _call(url: str, fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except (PpdataError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001
        raise remote_error(e, url) from None


def open_url(url: str, stream: bool = False) -> BinaryIO:
    """A URL as a binary file (caller closes it): random access (read-ahead cache), or with
    ``stream`` a stream read once from its start (any server; ``peek`` works, ``seek`` does not)."""
    fs, path = filesystem(url)
    if stream and protocol(url) in ("http", "https"):
        f = _call(url, fs.open, path, "rb", block_size=0)
        return io.BufferedReader(RemoteFile(f, url), 1 << 20)
    f = _call(url, fs.open, path, "rb", block_size=4 << 20, cache_type="readahead")
    return io.BufferedReader(RemoteFile(f, url), 1 << 16) if stream else RemoteFile(f, url)


def check_ranges(url: str, size: int) -> None:
    """Make sure the server answers a range request for ``url`` (a file read by offset, by any
    process); a server that ignores ranges is one ``PpdataError`` line (see ``remote_error``)."""
    if size < 2:
        return
    fs, path = filesystem(url)
    f = RemoteFile(_call(url, fs.open, path, "rb", block_size=1 << 12, cache_type="none"), url)
    try:
        f.seek(size - 1)
        if len(f.read(1)) != 1:
            raise PpdataError(f"cannot read {url}: a range request at byte {size - 1} gave no data")
    finally:
        f.close()


def size_of(url: str) -> int:
    fs, path = filesystem(url)
    return int(_call(url, fs.size, path))


def read_ref(ref, limit: int | None = None) -> bytes:
    """The bytes of a ``sources.Ref``: a whole file, or ``size`` bytes at ``offset``; at most
    ``limit`` bytes (more is an error), and of a local path only a regular file. A short read is
    an error (``PpdataError``), never fewer bytes."""
    from .fileio import read_fd

    if ref.size is not None and limit is not None and ref.size > limit:
        raise PpdataError(f"{ref.path}: {ref.size:,} bytes, more than the {limit:,} allowed")
    if is_url(ref.path):
        fs, path = filesystem(ref.path)
        if ref.offset is None:
            def whole():
                with fs.open(path, "rb", block_size=0 if protocol(ref.path) in READ_ONLY else None) as f:
                    return f.read(-1 if limit is None else limit + 1)
            data = _call(ref.path, whole)
            if limit is not None and len(data) > limit:
                raise PpdataError(f"{ref.path}: more than the {limit:,} bytes allowed")
        else:
            data = _call(ref.path, fs.cat_file, path, start=ref.offset, end=ref.offset + ref.size)
    else:
        try:
            fd = os.open(ref.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise PpdataError(f"{ref.path} does not exist") from None
        try:
            if ref.offset is None:
                return read_fd(fd, ref.path, limit if limit is not None else 1 << 62)
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
    found = _call(url, fs.find, root, detail=True)
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
    return bool(_call(url, fs.exists, path))


def isdir(url: str) -> bool:
    fs, path = filesystem(url)
    try:
        return fs.isdir(path)
    except Exception:  # noqa: BLE001
        return False


# ---------------------------------------------------------------------------------------------
# an output folder on object storage: the storage half of shards.folder.OutputFolder


def _now() -> float:
    import time

    return time.time()


class ObjectStore:
    """A prefix on object storage (``s3://bucket/prefix``) with the operations of
    ``shards.store.LocalStore``, so that ``shards.folder.OutputFolder`` applies the same rules
    here as on a disk. Object storage has no links, no rename and no file lock; an object appears
    whole, or not at all, when its upload completes:

    - **Lock.** ``.ppdata-lock`` is created with a create-only put (S3 ``If-None-Match: *``), so of
      two runs starting together one gets it and the other fails at once, naming the first. The
      holder rewrites it every ``heartbeat`` seconds; a lock not rewritten for ``stale_after``
      seconds belongs to a run that died and is taken over; its record (the dead run's id) is
      what that run's journal must name.
    - **Journal.** Rewritten whole before each new object is uploaded (objects cannot be appended to).
    - **Objects.** A file is staged in a local temporary folder (``create``) and uploaded whole
      with a create-only put (``finish``): an object ppdata did not list is never replaced, and a
      cut-short upload leaves no object (a multipart upload that a killed process leaves behind
      is invisible and is removed by the bucket's lifecycle rule for incomplete uploads).
    """

    lock_records = True
    links = False

    def __init__(self, url: str, what: str = "--out", stale_after: float = 600.0, heartbeat: float = 30.0):
        if protocol(url) in READ_ONLY:
            raise PpdataError(f"{what} {url}: {protocol(url)}:// is read-only; write to s3://, gs:// or a local folder")
        import tempfile

        from .shards.store import LocalStore

        self.url = url.rstrip("/")
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self.fs, root = filesystem(self.url)
        self.root = root.rstrip("/")
        self.run = None
        self.staging = LocalStore(tempfile.mkdtemp(prefix="ppdata-upload-"), what="staging folder")
        self._lock_held = False
        self._previous: bytes | None = None  # a dead run's lock record, until its journal is dealt with
        self._stop = None
        self._thread = None
        self.lost: str | None = None

    # -- names and objects ---------------------------------------------------------------------

    def _p(self, name: str) -> str:
        return f"{self.root}/{name}"

    def where(self, name: str = "") -> str:
        return f"{self.url}/{name}" if name else self.url

    def temp_name(self, name: str) -> None:
        return None  # staged locally, uploaded whole by ``finish``

    def local_path(self, rel: str):
        return self.staging.local_path(rel)

    def entry(self, rel: str):
        from .shards.store import Entry

        try:
            info = self.fs.info(self._p(rel))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise PpdataError(f"cannot read {self.where(rel)}: {e}") from None
        if info.get("type", "file") == "directory":
            return Entry("folder")
        return Entry("file", int(info.get("size") or 0))

    def list(self, rel: str = "") -> dict:
        """The entries directly inside ``rel``: objects, and folders (common prefixes)."""
        from .shards.store import Entry

        base = f"{self.root}/{rel}".rstrip("/") if rel else self.root
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise PpdataError(f"cannot list {self.where(rel)}: {e}") from None
        out: dict = {}
        for p, info in found.items():
            if info.get("type", "file") != "file":
                continue
            sub = p[len(base):].lstrip("/")
            if not sub:
                continue
            head, _, rest = sub.partition("/")
            out[head] = Entry("folder") if rest else Entry("file", int(info.get("size") or 0))
        return out

    def read(self, rel: str, limit: int) -> bytes | None:
        try:
            with self.fs.open(self._p(rel), "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise PpdataError(f"cannot read {self.where(rel)}: {e}") from None
        if len(data) > limit:
            raise PpdataError(f"{self.where(rel)} is more than the {limit:,} bytes allowed")
        return data

    def _put(self, rel: str, data: bytes, create: bool = False) -> None:
        try:
            with self.fs.open(self._p(rel), "xb" if create else "wb") as f:
                f.write(data)
        except FileExistsError:
            raise
        except OSError as e:
            raise PpdataError(f"cannot write {self.where(rel)}: {e}") from None

    def put(self, rel: str, data: bytes, temp=None) -> None:
        """Upload ``rel`` whole (an object appears complete or not at all)."""
        self._put(rel, data)

    def create(self, rel: str, readable: bool = False):
        """A new local staging file for the object ``rel`` (``finish`` uploads it)."""
        return self.staging.create(rel, readable)

    def finish(self, temp, rel: str, replace: bool = False) -> None:
        """Upload the staged file ``rel`` with a create-only put, then delete the local copy."""
        import shutil

        src = self.staging.local_path(rel)
        try:
            with open(src, "rb") as f, self.fs.open(self._p(rel), "xb") as out:
                shutil.copyfileobj(f, out, 8 << 20)
        except FileExistsError:
            raise PpdataError(f"{self.where(rel)} appeared while this run wrote it; another writer?") from None
        except OSError as e:
            raise PpdataError(f"cannot upload {self.where(rel)}: {e}") from None
        self.staging.remove(rel)

    def discard(self, rel: str) -> None:
        self.staging.remove(rel)

    def remove(self, rel: str) -> None:
        try:
            self.fs.rm_file(self._p(rel))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise PpdataError(f"cannot remove {self.where(rel)}: {e}") from None

    def mkdir(self, rel: str) -> None:
        raise PpdataError(f"{self.where(rel)}: folders of files (PNG trees) are written to local folders only")

    def rmdir(self, rel: str) -> bool:
        return False

    def hardlink(self, source, rel: str) -> bool:
        return False

    def start_journal(self, rel: str, header: str) -> list:
        lines = [header.rstrip("\n")]
        self._put(rel, "".join(x + "\n" for x in lines).encode())
        return lines

    def append_journal(self, rel: str, lines: list, new: list, header: str) -> list:
        lines = list(lines) + list(new)
        self._put(rel, "".join(x + "\n" for x in lines).encode())
        return lines

    def remove_folder_if_created(self) -> None:
        pass

    # -- lock -------------------------------------------------------------------------------------

    def _lock_record(self) -> bytes:
        import json
        import socket

        return json.dumps({"ppdata": "lock", "run": self.run, "pid": os.getpid(), "host": socket.gethostname(),
                           "heartbeat": _now(), "note": "a ppdata run is writing this folder"}).encode()

    def _held(self) -> dict:
        from .schema import MAX_LOCK_BYTES, check, load_json

        raw = self.read(".ppdata-lock", MAX_LOCK_BYTES) or b"{}"
        try:
            held = load_json(raw, self.where(".ppdata-lock"))
            check(held, "lock", self.where(".ppdata-lock"))
            return held
        except PpdataError:
            return {}

    def lock(self, record: dict) -> dict | None:
        """Take ``.ppdata-lock`` for the run ``record["run"]``; returns the record of a dead run
        whose stale lock was taken over (None if the lock was free). ``FolderBusy`` while a live
        run holds it."""
        import time

        from .shards.store import FolderBusy

        self.run = record["run"]
        previous = None
        try:
            self._put(".ppdata-lock", self._lock_record(), create=True)
        except FileExistsError:
            held = self._held()
            age = _now() - float(held.get("heartbeat") or 0)
            if age < self.stale_after:
                raise FolderBusy(held, age) from None
            # the holder stopped rewriting its lock: take it over, then make sure nobody else did too
            previous = held
            self._previous = self.read(".ppdata-lock", 1 << 16)
            self._put(".ppdata-lock", self._lock_record())
            time.sleep(min(2.0, self.heartbeat))
            now = self.read(".ppdata-lock", 1 << 16) or b""
            if self.run.encode() not in now:
                raise PpdataError(f"{self.url}: another ppdata process took over a stale lock at the same time; "
                                  f"run again later") from None
        self._lock_held = True
        self._start_heartbeat()
        return previous

    def alive(self) -> str | None:
        return self.lost

    def settled(self) -> None:
        """The dead run whose lock was taken over has been cleaned up after: its record goes."""
        self._previous = None

    def _start_heartbeat(self) -> None:
        import threading

        self._stop = threading.Event()

        def beat():
            while not self._stop.wait(self.heartbeat):
                try:
                    now = self.read(".ppdata-lock", 1 << 16) or b""
                    if self.run.encode() not in now:
                        self.lost = "another process took over this folder's lock"
                        return
                    self._put(".ppdata-lock", self._lock_record())
                except Exception as e:  # noqa: BLE001  (reported at the next claim)
                    self.lost = f"cannot renew the lock: {e}"
                    return

        self._thread = threading.Thread(target=beat, daemon=True, name="ppdata-lock-heartbeat")
        self._thread.start()

    def unlock(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._stop = None
        if self._lock_held:
            self._lock_held = False
            try:
                now = self.read(".ppdata-lock", 1 << 16) or b""
                if self.run.encode() in now:
                    if self._previous is not None:  # refused before cleaning up: the dead run's record stays
                        self._put(".ppdata-lock", self._previous)
                    else:
                        self.remove(".ppdata-lock")
            except (OSError, PpdataError):
                pass

    def close(self) -> None:
        import shutil

        path = self.staging.path
        self.staging.close()
        shutil.rmtree(path, ignore_errors=True)


def RemoteFolder(url: str, overwrite: bool = False, what: str = "--out", extend: bool = False,  # noqa: N802
                 stale_after: float = 600.0, heartbeat: float = 30.0):
    """An output folder at a URL: ``shards.folder.OutputFolder`` on an ``ObjectStore``."""
    from .shards.folder import OutputFolder

    return OutputFolder(url, overwrite=overwrite, what=what, extend=extend, stale_after=stale_after,
                        heartbeat=heartbeat)
