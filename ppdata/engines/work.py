"""The work every engine does on a chunk of images: read, decode, expand, encrypt.

A ``Work`` says what to do (decode settings, scheme, key stream parameters, expansion); a
``Chunk`` is a run of consecutive images of one split (``sources.Item`` s, or a decoded
``sources.Batch``); ``run_chunk(work, chunk)`` returns a ``Result`` in the chunk's order. The
function is pure: any process on any machine computes the same ``Result`` for the same chunk,
because every image's key is addressed by (split, index) (``keys.KeyStream``). The local engine
runs it in worker processes, the Ray engine in Ray tasks.

Per image: an item that cannot be read or decoded becomes a skip (index, path, reason), never a
shifted key. Shapes: every image of a chunk must have the split's shape (``Chunk.shape`` when
known, else the chunk's first image's); the first that does not is reported in ``Result.odd``
and the chunk is not encrypted (the caller stops the run with an error naming that image).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import PpdataError
from ..sources.base import Batch, Item, identity_expand
from ..sources.decode import PROBE_IMAGES, Decode, DecoderMismatch, failure_reason, finish, pillow_decode, \
    torchvision_loaded


@dataclass
class Work:
    """What a worker does (see module docstring). ``scheme``: ``Scheme.describe()``, None for no
    encryption; ``secret``/``mode``/``derivation``: the key stream; ``expand``: the ``expand``
    hook of ``pipeline.encrypt`` (None: one output per image)."""

    decode: Decode | None = None
    scheme: dict | None = None
    secret: bytes | None = None
    mode: str = "independent"
    derivation: int = 2
    expand: Callable | None = None


@dataclass
class Chunk:
    split: str
    items: list[Item] | None = None
    batch: Batch | None = None
    shape: tuple | None = None  # the split's image shape, when already known


@dataclass
class Result:
    """What a chunk gave: decoded (and encrypted) outputs in order, the chunk's skips, counts of
    the decoder used per image, and the first image of a wrong shape (``odd``: origin, shape)."""

    split: str
    n_in: int = 0
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    keys: list = field(default_factory=list)
    images: np.ndarray | None = None
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    skipped: list = field(default_factory=list)  # (index, path, origin, reason)
    decoded: dict = field(default_factory=dict)
    first: tuple | None = None  # (origin, shape) of the chunk's first decoded image
    odd: tuple | None = None


class _State:
    """Per-process state: the scheme, the key stream, torchvision and its probe count."""

    def __init__(self):
        self.key = None
        self.scheme = None
        self.stream = None
        self.tv = None
        self.tv_failed = False
        self.probed = 0


_STATE = _State()


def _crypto(work: Work):
    key = (id(work), repr(work.scheme), work.mode, work.derivation)
    if _STATE.key != key:
        from ..cipher import scheme_from_manifest
        from ..keys import KeyStream

        _STATE.scheme = scheme_from_manifest(work.scheme)
        _STATE.stream = KeyStream(work.secret, work.mode, work.derivation) if _STATE.scheme.encrypted else None
        _STATE.key = key
    return _STATE.scheme, _STATE.stream


def _torchvision(d: Decode):
    """The torchvision decoder if this run uses it here, else None (see ``Decode.decoder``)."""
    if d.decoder == "pillow" or _STATE.tv_failed:
        return None
    if d.decoder == "auto" and not torchvision_loaded():
        return None
    if _STATE.tv is None:
        from ..sources.decode import TorchvisionJpeg

        try:
            _STATE.tv = TorchvisionJpeg()
        except ImportError:
            if d.decoder == "torchvision":
                raise PpdataError("--decoder torchvision needs torchvision, which is not installed: "
                                  "pip install 'ppdata[train]' (or use --decoder pillow)") from None
            _STATE.tv_failed = True
            return None
    return _STATE.tv


def decode_items(items: list[Item], d: Decode) -> list[tuple[Item, np.ndarray | None, str | None, str | None]]:
    """(item, array or None, failure reason or None, decoder) per item, in order."""
    from ..remote import read_ref

    blobs: list[bytes | None] = []
    out: list = []
    for it in items:
        if it.skip:
            blobs.append(None)
            out.append([it, None, it.skip, None])
            continue
        data = it.data
        if data is None:
            try:
                data = read_ref(it.ref, d.max_bytes)
            except (OSError, PpdataError) as e:
                blobs.append(None)
                out.append([it, None, _reason(e, it), None])
                continue
        elif len(data) > d.max_bytes:
            blobs.append(None)
            out.append([it, None, f"file is {len(data):,} bytes, over the limit of {d.max_bytes:,}", None])
            continue
        blobs.append(data)
        out.append([it, None, None, None])
    tv = _torchvision(d)
    if tv is not None:
        rows = [i for i, b in enumerate(blobs) if b is not None and tv.accepts(b, d)]
        if rows:
            for i, a in zip(rows, tv.decode_many([blobs[i] for i in rows])):
                if a is None:
                    continue
                if _STATE.probed < PROBE_IMAGES:  # this process has not yet seen torchvision give Pillow's pixels
                    _STATE.probed += 1
                    ref = pillow_decode(blobs[i], Decode(max_pixels=d.max_pixels, max_bytes=d.max_bytes))
                    if ref.shape != a.shape or not np.array_equal(ref, a):
                        raise DecoderMismatch(f"torchvision decodes {out[i][0].origin} to other pixels than Pillow; "
                                              f"run again with --decoder pillow")
                from PIL import Image

                try:
                    out[i][1] = a if d.resize is None and d.crop is None else finish(Image.fromarray(a), d)
                    out[i][3] = "torchvision"
                except Exception as e:  # noqa: BLE001  (a size limit after resizing, or Pillow's)
                    out[i][2] = failure_reason(e)
                blobs[i] = None
    for i, b in enumerate(blobs):
        if b is None:
            continue
        try:
            out[i][1] = pillow_decode(b, d)
            out[i][3] = "pillow"
        except Exception as e:  # noqa: BLE001  (Pillow raises many types for bad files)
            out[i][2] = failure_reason(e)
    return [tuple(r) for r in out]


def _reason(e: BaseException, it: Item) -> str:
    """Why an image's bytes could not be read, without repeating its path."""
    text = str(getattr(e, "strerror", None) or e)
    for name in (it.origin, str(getattr(it.ref, "path", ""))):
        if name and text.startswith(name):
            text = text[len(name):].lstrip(": ") or text
    return text


def checked_shape(scheme, shape) -> list[int]:
    """``shape`` (H, W, 3) as a manifest records it, once ``scheme`` can encrypt images of that size
    (e.g. blocks that divide it); otherwise one ``PpdataError`` naming the scheme."""
    try:
        scheme.check_shape(tuple(shape))
    except ValueError as e:
        raise PpdataError(f"{scheme.name}: {e}") from None
    return list(shape)


def run_chunk(work: Work, chunk: Chunk) -> Result:
    """Decode (items), expand and encrypt one chunk; see the module docstring."""
    res = Result(chunk.split)
    if chunk.batch is not None:
        batch = chunk.batch
        res.n_in = len(batch)
        if len(batch):
            res.first = (None, tuple(batch.images.shape[1:]))
    else:
        decoded = decode_items(chunk.items, work.decode)
        res.n_in = len(decoded)
        arrays, index, labels = [], [], []
        want = tuple(chunk.shape) if chunk.shape else None
        for it, a, reason, dec in decoded:
            if a is None:
                res.skipped.append((it.index, it.path, it.origin, reason))
                continue
            res.decoded[dec] = res.decoded.get(dec, 0) + 1
            if res.first is None:
                res.first = (it.origin, a.shape)
                want = want or a.shape
            if a.shape != want and res.odd is None:
                res.odd = (it.origin, a.shape)
            arrays.append(a)
            index.append(it.index)
            labels.append(it.label)
        if res.odd is not None or not arrays:
            return res
        batch = Batch(np.stack(arrays), np.asarray(labels, np.int64), np.asarray(index, np.int64))
    if not len(batch):
        return res
    expand = work.expand or identity_expand
    names, images, labels, kidx = expand(batch, chunk.split)
    if work.scheme is not None:
        scheme, stream = _crypto(work)
        if scheme.encrypted:
            checked_shape(scheme, images.shape[1:])
            images = scheme.encrypt(images, scheme.derive_keys(stream, chunk.split, kidx, images.shape[1:]))
    res.index = batch.index
    res.keys = list(names)
    res.images = np.ascontiguousarray(images)
    res.labels = np.asarray(labels, np.int64)
    return res
