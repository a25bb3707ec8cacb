"""The local engine: ``work.run_chunk`` in worker processes of this machine (the default engine).

``LocalEngine(work, workers)`` runs chunks in ``workers`` processes (1: in this process) and
yields their results in the order of the chunks, with a bounded number in flight, so memory
stays bounded whatever the dataset size. Workers are forked once, before any thread of the run
starts (``start``), and inherit the ``Work`` (the key stream included) without it being pickled
or written anywhere. A worker that dies (killed, out of memory) stops the run with an error
naming it; an error raised by the work in a worker (e.g. ``DecoderMismatch``) is re-raised here;
a worker dies with its parent (Linux), so a killed run leaves no worker behind.

``chunks_of(items, ...)`` cuts a split's items into chunks: ``size`` items, or fewer when the
decoded images are large (at most about ``budget`` bytes of decoded pixels per chunk, learnt from
the first chunk). ``decoded_batches`` is ``FolderSource.batches`` on top of it.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Iterable, Iterator

import numpy as np

from ..errors import PpdataError
from ..sources.base import Batch
from .work import Chunk, Result, Work, run_chunk

CHUNK = 256
BUDGET = 48 << 20  # decoded bytes per chunk


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


_WORK: Work | None = None


def _init(work: Work, parent: int) -> None:
    global _WORK
    _WORK = work
    import signal

    try:  # Ctrl-C reaches the parent, which stops the workers
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):
        pass
    _die_with(parent)


def _die_with(parent: int) -> None:
    """Linux: this worker is killed when the process that started it dies (even by SIGKILL), so
    no worker outlives a killed run (holding its pipes or writing on)."""
    import signal

    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call above
        os._exit(1)


def _run(chunk: Chunk) -> Result:
    return run_chunk(_WORK, chunk)


def _noop() -> int:
    return os.getpid()


class LocalEngine:
    """Ordered, bounded ``run_chunk`` over worker processes (see module docstring)."""

    name = "local"

    def __init__(self, work: Work, workers: int | None = None, window: int | None = None):
        self.work = work
        self.workers = max(1, int(workers or default_workers()))
        self.window = window or 2 * self.workers
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> "LocalEngine":
        """Fork the workers now (before the caller starts threads). With ``--decoder torchvision``
        torchvision is imported first, here, so that its import (seconds of CPU) is paid once and
        shared by every worker, not once per worker."""
        if self.workers > 1 and self._pool is None:
            d = self.work.decode
            if d is not None and d.decoder == "torchvision":
                try:
                    import torchvision.io  # noqa: F401
                except ImportError:
                    pass  # the workers name the missing extra
            methods = mp.get_all_start_methods()
            ctx = mp.get_context("fork" if "fork" in methods else None)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init,
                                             initargs=(self.work, os.getpid()))
            self._pool.submit(_noop).result()  # launches every worker
        return self

    def __enter__(self) -> "LocalEngine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close(cancel=exc[0] is not None)

    def close(self, cancel: bool = False) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            if cancel:
                for p in list(getattr(pool, "_processes", {}).values()):
                    p.terminate()
            pool.shutdown(wait=True, cancel_futures=True)

    def map(self, chunks: Iterable[Chunk]) -> Iterator[Result]:
        """``run_chunk`` of every chunk, in order."""
        if self._pool is None:
            for c in chunks:
                yield run_chunk(self.work, c)
            return
        window: deque = deque()
        try:
            for c in chunks:
                window.append(self._pool.submit(_run, c))
                while len(window) >= self.window:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        except BrokenProcessPool:
            raise PpdataError("a worker process died (killed, or out of memory?); nothing was marked complete. "
                              "Run the command again, with fewer --workers if memory is short") from None
        finally:
            for f in window:
                f.cancel()


def chunks_of(items: Iterable, split: str, size: int = CHUNK, budget: int = BUDGET,
              shape: tuple | None = None, learn: list | None = None) -> Iterator[Chunk]:
    """Consecutive chunks of ``items``; ``shape`` (or, once known, ``learn[0]``: the decoded image
    shape) limits a chunk to about ``budget`` bytes of pixels."""
    def limit() -> int:
        s = shape or (learn[0] if learn else None)
        if s is None:
            return min(size, 16)
        return int(max(1, min(size, budget // max(1, int(np.prod(s))))))

    buf: list = []
    for it in items:
        buf.append(it)
        if len(buf) >= limit():
            yield Chunk(split, items=buf, shape=shape or (learn[0] if learn else None))
            buf = []
    if buf:
        yield Chunk(split, items=buf, shape=shape or (learn[0] if learn else None))


def decoded_batches(source, split: str, batch_size: int = 256, workers: int = 1) -> Iterator[Batch]:
    """Decoded images of an encoded source (``FolderSource``) in source order, ``batch_size`` at
    a time: skips recorded with ``source.record_skip``, shapes checked with ``source.check_shape``."""
    learn: list = [source.shape] if source.shape else []
    images, labels, index = [], [], []
    with LocalEngine(Work(decode=source.decode), workers) as engine:
        for res in engine.map(chunks_of(source.items(split), split, shape=source.shape, learn=learn)):
            accept_skips(source, res)
            if res.odd is not None:
                if res.first is not None:
                    source.check_shape(res.first[1], res.first[0])
                source.check_shape(res.odd[1], res.odd[0])
            if res.images is None:
                continue
            source.check_shape(res.images.shape[1:], res.first[0])
            if not learn:
                learn.append(source.shape)
            for a in range(len(res.index)):
                images.append(res.images[a])
                labels.append(res.labels[a])
                index.append(res.index[a])
                if len(images) == batch_size:
                    yield Batch(np.stack(images), np.asarray(labels, np.int64), np.asarray(index, np.int64))
                    images, labels, index = [], [], []
    if images:
        yield Batch(np.stack(images), np.asarray(labels, np.int64), np.asarray(index, np.int64))


def accept_skips(source, res: Result) -> None:
    """Record a result's skipped images with the source (``strict``: an error naming the first)."""
    owner = getattr(source, "part", None)
    target = owner(res.split) if owner else source
    for index, path, origin, reason in res.skipped:
        target.record_skip(res.split, index, path, origin, reason)
