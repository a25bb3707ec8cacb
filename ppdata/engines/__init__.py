"""Engines: who runs the work of ``encrypt`` (and ``augment``), writing one format.

``work`` (``Work``, ``Chunk``, ``run_chunk``: decode, expand and encrypt a chunk of images, the
same function for every engine), ``local`` (worker processes on this machine, the default) and
``raydata`` (Ray Data tasks on a cluster; ``pip install 'ppdata[ray]'``, imported only when
used). Keys are addressed by (split, index), so any engine, any worker count and any order give
the same ciphertext for every sample key under the same secret.
"""
from .local import LocalEngine, default_workers
from .work import Chunk, Result, Work, run_chunk

ENGINES = ("local", "ray")

__all__ = ["ENGINES", "Chunk", "LocalEngine", "Result", "Work", "default_workers", "run_chunk"]
