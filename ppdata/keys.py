"""Secrets, key expansion and the client-side keystore.

Conventions
-----------
secret
    32 bytes from the operating system's secure random source (``secrets.token_bytes``).
    One secret per encryption run (``independent`` mode) or per key file (``same`` mode).
key material
    Per-image bytes expanded from the secret by ChaCha20 (RFC 8439 block function, run by
    OpenSSL through ``cryptography``). Image ``i`` of split ``s`` gets the keystream that
    starts at block ``i * ceil(nbytes / 64)`` of the stream whose 96-bit nonce is
    ``SHA-256(label)[:8] || group``. Derivation 2 (the default) labels the stream
    ``"ppdata/v2/key/<mode>/<split>/<context>"``, where the context (``bind``) is the scheme,
    its options and the image shape, so one secret reused across schemes or sizes never gives
    two of them the same bytes; derivation 1 (ppdata 0.1 folders, no ``derivation`` in their
    manifest) used ``"ppdata/key/<mode>/<split>"``. So the material of an image depends only on
    (secret, mode, split, context, index, nbytes): batch size, order of processing and skipped
    images do not change anyone's key, and any image can be decrypted on its own.
modes
    ``independent``: every image gets its own material (the paper's proposal). Under a
    pseudorandom function the per-image keys are computationally independent: knowing the
    keys of some images says nothing about the keys of others. The secret is discarded after
    the run unless a keystore is kept.
    ``same``: one material for every image and every split (the conventional setting).
schemes
    A scheme turns material into its own key format (see ``ppdata.cipher``); when it needs
    more bytes than planned (rejection sampling), ``KeyStream.extension`` gives a separate,
    equally addressable stream.
seed
    ``secret_from_seed`` derives the secret from a user seed for reproducible experiments.
    Anybody who knows or guesses the seed can decrypt: such data is not private.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from .errors import PpdataError
from .fileio import atomic_write
from .names import check_path_text

log = logging.getLogger("ppdata")

SECRET_BYTES = 32
MODES = ("independent", "same")
DERIVATIONS = (1, 2)
DERIVATION = 2  # what new data is encrypted with
KEYSTORE_FORMAT = "ppdata-keystore"
KEYSTORE_VERSION = 1

_ZEROS = bytes(1 << 20)


def new_secret() -> bytes:
    """A fresh 32-byte secret from the OS's cryptographically secure source."""
    return secrets.token_bytes(SECRET_BYTES)


def secret_from_seed(seed: int | str) -> bytes:
    """A reproducible secret for experiments. Not private: the seed is the key."""
    return hashlib.sha256(b"ppdata/seed/v1\0" + str(seed).encode()).digest()


def key_id(secret: bytes) -> str:
    """A public fingerprint of a secret (16 hex digits), to match a keystore to its data."""
    return hashlib.sha256(b"ppdata/key-id/v1\0" + secret).hexdigest()[:16]


def scheme_check(secret: bytes, context: bytes) -> str:
    """``HMAC-SHA256(secret, "ppdata/scheme-check/v1\\0" || context)[:16 hex]``: binds a manifest's
    scheme, options and image shape (``Scheme.key_context``) to the secret, so that ``decrypt``
    can tell an edited manifest from the one the data was encrypted with, even with a key file
    that serves many schemes (``--keys same``). Reveals nothing usable about the secret."""
    import hmac

    return hmac.new(secret, b"ppdata/scheme-check/v1\0" + context, hashlib.sha256).hexdigest()[:16]


def _chacha_into(secret: bytes, nonce12: bytes, counter: int, out: memoryview) -> None:
    """Fill ``out`` with ChaCha20 keystream starting at block ``counter``."""
    enc = Cipher(algorithms.ChaCha20(secret, counter.to_bytes(4, "little") + nonce12), None).encryptor()
    pos, total = 0, len(out)
    while pos < total:
        step = min(len(_ZEROS), total - pos)
        enc.update_into(_ZEROS[:step], out[pos : pos + step])
        pos += step


class KeyStream:
    """Position-addressable key material: ``material(split, indices, nbytes)``.

    ``material`` returns a ``(len(indices), nbytes)`` uint8 array; rows for consecutive indices
    are produced by one ChaCha20 call. In ``same`` mode every row is the same material.
    """

    def __init__(self, secret: bytes, mode: str = "independent", derivation: int = DERIVATION,
                 context: bytes = b""):
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
        if mode not in MODES:
            raise ValueError(f"unknown key mode {mode!r}; expected one of {MODES}")
        if derivation not in DERIVATIONS:
            raise ValueError(f"unknown key derivation {derivation!r}; this ppdata knows {DERIVATIONS}")
        self.secret = bytes(secret)
        self.mode = mode
        self.derivation = derivation
        self.context = bytes(context)
        self._same_cache: dict[tuple[str, int], np.ndarray] = {}
        self._bound: dict[bytes, KeyStream] = {}

    @property
    def key_id(self) -> str:
        return key_id(self.secret)

    def bind(self, context: bytes) -> "KeyStream":
        """This secret's stream for one purpose (a scheme, its options and an image shape; see
        the module docstring). Derivation 1 has no contexts: the stream itself."""
        if self.derivation == 1 or context == self.context:
            return self
        if context not in self._bound:
            self._bound[context] = KeyStream(self.secret, self.mode, self.derivation, context)
        return self._bound[context]

    def _label(self, kind: str, split: str) -> bytes:
        if self.mode == "same":
            split = "*"  # one key for every split
        if self.derivation == 1:
            return hashlib.sha256(f"ppdata/{kind}/{self.mode}/{split}".encode()).digest()[:8]
        return hashlib.sha256(f"ppdata/v2/{kind}/{self.mode}/{split}/".encode() + self.context).digest()[:8]

    def _rows(self, kind: str, split: str, indices: np.ndarray, nbytes: int) -> np.ndarray:
        bpi = max(1, -(-nbytes // 64))
        group_size = (1 << 32) // bpi
        if group_size < 1:
            raise ValueError(f"key material of {nbytes} bytes per image is too large")
        label = self._label(kind, split)
        n = len(indices)
        out = np.empty((n, bpi * 64), np.uint8)
        if n == 0:
            return out[:, :nbytes]
        idx = np.asarray(indices, np.int64)
        if (idx < 0).any():
            raise ValueError("sample indices must be non-negative")
        # split into runs of consecutive indices inside one nonce group
        group = idx // group_size
        breaks = np.flatnonzero((np.diff(idx) != 1) | (np.diff(group) != 0)) + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [n]])
        flat = memoryview(out.reshape(-1))
        row_bytes = bpi * 64
        for a, b in zip(starts.tolist(), ends.tolist()):
            g = int(group[a])
            nonce = label + g.to_bytes(4, "little")
            counter = (int(idx[a]) - g * group_size) * bpi
            _chacha_into(self.secret, nonce, counter, flat[a * row_bytes : b * row_bytes])
        return out[:, :nbytes]

    def material(self, split: str, indices: Iterable[int] | np.ndarray, nbytes: int) -> np.ndarray:
        """Key material, ``(len(indices), nbytes)`` uint8; row r belongs to image ``indices[r]``."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        if self.mode == "same":
            cache_key = ("key", nbytes)
            if cache_key not in self._same_cache:
                self._same_cache[cache_key] = self._rows("key", "*", np.zeros(1, np.int64), nbytes)[0].copy()
            row = self._same_cache[cache_key]
            return np.broadcast_to(row, (len(indices), nbytes))
        return self._rows("key", split, indices, nbytes)

    def extension(self, split: str, index: int, nbytes: int) -> np.ndarray:
        """Extra material for one image (a separate stream), ``(nbytes,)`` uint8."""
        if self.mode == "same":
            index = 0
        return self._rows("ext", split, np.array([index], np.int64), nbytes)[0]


# --------------------------------------------------------------------------------------------
# unbiased codes in 0..5

@functools.lru_cache(maxsize=64)
def code_bytes_needed(n: int, sigmas: float = 12.0) -> int:
    """Bytes of material planned for ``n`` codes in 0..5 so that a shortfall is ~impossible.

    Each byte below 216 = 6**3 gives three base-6 digits (acceptance 216/256); we plan for
    ``sigmas`` standard deviations of rejections. A shortfall is still handled exactly
    (``KeyStream.extension``), so the plan only affects speed, never the distribution.
    """
    need = -(-n // 3)
    p = 216 / 256
    m = need
    while m * p - sigmas * np.sqrt(m * p * (1 - p)) < need + 1:
        m += 8
    return int(m)


def uniform_codes(material: np.ndarray, n: int, more=None) -> np.ndarray:
    """Exactly uniform, independent codes in 0..5 from key bytes, ``(N, n)`` uint8.

    Rule (the key format of CS): the bytes of a row below 216 are kept in order,
    ``b_0, b_1, ...``; with ``m = ceil(n / 3)`` of them, the codes are the first base-6 digits
    ``b_j // 36`` of all of them, then the second ``(b_j // 6) % 6``, then the third
    ``b_j % 6``, truncated to ``n``. ``more(row, nbytes)`` supplies further bytes for a row that
    has fewer than ``m`` accepted bytes.
    """
    material = np.ascontiguousarray(material)
    rows, width = material.shape
    need = -(-n // 3)
    acc = material < 216
    counts = np.count_nonzero(acc, axis=1)
    chosen = np.empty((rows, need), np.uint8)
    ok = counts >= need
    if ok.all():
        pos = np.flatnonzero(acc)
        starts = np.zeros(rows, np.intp)
        np.cumsum(counts[:-1], out=starts[1:])
        sel = pos[(starts[:, None] + np.arange(need)).reshape(-1)]
        chosen[:] = material.reshape(-1)[sel].reshape(rows, need)
    else:
        for r in range(rows):  # per row only on the (astronomically rare) shortfall path
            got = material[r][acc[r]]
            while len(got) < need:
                if more is None:
                    raise ValueError("not enough key material for the colour-shuffle codes")
                extra = more(r, 4 * (need - len(got)) + 64)
                got = np.concatenate([got, extra[extra < 216]])
            chosen[r] = got[:need]
    codes = np.empty((rows, 3, need), np.uint8)
    q6 = chosen // 6
    q36 = q6 // 6
    codes[:, 0] = q36
    np.subtract(q6, q36 * 6, out=codes[:, 1])
    np.subtract(chosen, q6 * 6, out=codes[:, 2])
    return codes.reshape(rows, 3 * need)[:, :n]


# --------------------------------------------------------------------------------------------
# keystore


@dataclass
class Keystore:
    """What a client needs to decrypt: the secret and what it was used for.

    File format: JSON, ``{"format": "ppdata-keystore", "version": 1, "mode", "secret" (hex),
    "key_id", "seeded", "scheme", "dataset"}``, written with file mode 0600. In ``same`` mode
    the keystore is the key file (``--key-file``) and works for any dataset and image size.
    """

    mode: str
    secret: bytes
    seeded: bool = False
    scheme: dict | None = None
    dataset: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def key_id(self) -> str:
        return key_id(self.secret)

    def stream(self, derivation: int = DERIVATION) -> KeyStream:
        """The key stream; ``derivation``: the one the data was encrypted with (its manifest's
        ``keys.derivation``, 1 when absent)."""
        return KeyStream(self.secret, self.mode, derivation)

    def to_json(self) -> dict:
        return {
            "format": KEYSTORE_FORMAT,
            "version": KEYSTORE_VERSION,
            "mode": self.mode,
            "secret": self.secret.hex(),
            "key_id": self.key_id,
            "seeded": self.seeded,
            "scheme": self.scheme,
            "dataset": self.dataset,
            **self.extra,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically with mode 0600; never replaces an existing file (it may be the only key
        of an earlier dataset): ``PpdataError`` if ``path`` exists."""
        path = Path(path)
        write_private(path, (json.dumps(self.to_json(), indent=2) + "\n").encode())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Keystore":
        """Read a keystore as untrusted input: a regular file (links followed) of at most
        ``MAX_KEYSTORE_BYTES``, nested at most ``MAX_DEPTH`` deep, then the keystore schema
        (``schema.KEYSTORE``); any problem is one line naming the file and the field."""
        from .fileio import read_regular
        from .schema import MAX_KEYSTORE_BYTES, check, load_json

        path = Path(path)
        raw = read_regular(path, MAX_KEYSTORE_BYTES, "keystore")
        data = load_json(raw, f"keystore {path}")
        if not isinstance(data, dict) or data.get("format") != KEYSTORE_FORMAT:
            raise PpdataError(f"{path} is not a ppdata keystore")
        check(data, "keystore", f"keystore {path} is damaged")
        mode = os.stat(path).st_mode & 0o777
        if mode & 0o077:
            log.warning("keystore %s is readable or writable by other users (mode %03o); chmod 600 it", path, mode)
        secret = bytes.fromhex(data["secret"])
        if data.get("key_id") is not None and data["key_id"] != key_id(secret):
            raise PpdataError(f"keystore {path} is damaged: its key_id {data['key_id']} is not its secret's "
                              f"({key_id(secret)})")
        known = {"format", "version", "mode", "secret", "key_id", "seeded", "scheme", "dataset"}
        return cls(
            mode=data["mode"],
            secret=secret,
            seeded=bool(data.get("seeded", False)),
            scheme=data.get("scheme"),
            dataset=data.get("dataset"),
            extra={k: v for k, v in data.items() if k not in known},
        )


def write_private(path: Path, payload: bytes) -> None:
    """Write ``payload`` to a new file ``path`` atomically, readable by the owner only (0600);
    an existing ``path`` is never replaced."""
    try:
        atomic_write(path, payload, mode=0o600, replace=False)
    except PpdataError as e:
        if Path(path).exists():
            raise PpdataError(f"keystore {path} already exists; ppdata never replaces a keystore (it may be the "
                              f"only key of an earlier dataset): choose a new file name") from None
        raise PpdataError(str(e).replace("cannot write", "cannot write keystore", 1)) from None


def check_new_keystore(path: Path) -> None:
    """Fail early (before any work) if a new keystore cannot be created at ``path``: it exists
    (ppdata never replaces a keystore), or its folder is missing or not writable."""
    check_path_text(path, "keystore path")
    path = Path(path)
    if path.is_symlink():
        raise PpdataError(f"keystore {path} already exists (a symbolic link to {os.readlink(path)}); ppdata never "
                          f"replaces a keystore nor writes through a link: choose a new file name")
    if path.exists() and not path.is_dir():
        raise PpdataError(f"keystore {path} already exists; ppdata never replaces a keystore (it may be the "
                          f"only key of an earlier dataset): choose a new file name")
    check_writable(path)


def check_writable(path: Path) -> None:
    """Fail early (before any work) if a keystore cannot be created at ``path``."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise PpdataError(f"keystore path {path} is a directory")
    if not directory.is_dir():
        raise PpdataError(f"keystore path {path} is not writable: folder {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PpdataError(f"keystore path {path} is not writable")


def is_inside(path: Path, folder: Path) -> bool:
    """True if ``path`` (resolved, symlinks followed) lies inside ``folder``."""
    p = Path(path).expanduser().resolve()
    f = Path(folder).expanduser().resolve()
    return p == f or f in p.parents
