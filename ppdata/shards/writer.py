"""Writers by format, and a background thread that feeds one."""
from __future__ import annotations

from ..errors import PpdataError
from .hdf5 import HDF5Writer
from .manifest import FORMATS
from .tar import WebDatasetWriter


def make_writer(fmt: str, out, split: str, shape, shard_size: int = 10000, attrs: dict | None = None):
    """A ``WebDatasetWriter`` or ``HDF5Writer`` for ``split`` in ``out``: the run's
    ``OutputFolder`` (every file claimed in its journal before it is created), or a local path."""
    if fmt == "webdataset":
        return WebDatasetWriter(out, split, shape, shard_size)
    if fmt == "hdf5":
        return HDF5Writer(out, split, shape, attrs=attrs)
    raise PpdataError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


class WriterThread:
    """Feeds a writer from a background thread through a bounded queue, so that preparing the
    next batch (encryption, augmentation) overlaps writing and hashing this one.

    Use as a context manager; ``finish()`` drains the queue and closes the writer (returning its
    ``ShardInfo`` list); leaving the block by an exception stops the thread and aborts the writer,
    so no partial file survives. ``put(*args)`` calls ``writer.<method>(*args)`` in the thread and
    re-raises, in the caller's thread, any error the writer hit.
    """

    def __init__(self, writer, method: str = "write", depth: int = 3):
        import queue
        import threading

        self.writer = writer
        self._call = getattr(writer, method)
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self._done = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            if self.error is None:
                try:
                    self._call(*item)
                except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
                    self.error = e

    def put(self, *item) -> None:
        if self.error is not None:
            raise self.error
        self._q.put(item)

    def _stop(self) -> None:
        if not self._done:
            self._done = True
            self._q.put(None)
            self._t.join()

    def finish(self) -> list:
        self._stop()
        if self.error is not None:
            raise self.error
        return self.writer.close()

    def __enter__(self) -> "WriterThread":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._stop()
            self.writer.abort()
