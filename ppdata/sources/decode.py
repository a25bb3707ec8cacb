"""Decoding image files: EXIF orientation, any mode to 8-bit RGB, size limits, resize and crop.

``Decode`` holds every setting that turns a file into an ``(H, W, 3)`` uint8 array, and is what a
manifest records (``Decode.to_json``), so that the plain images can be rebuilt exactly as they
were encrypted (``Decode.from_manifest``). The steps, in order:

1. **Size limits.** Only a regular file of at most ``max_bytes`` bytes is read (a FIFO or a
   device is refused without blocking); an image whose header announces more than
   ``max_pixels`` pixels, an aspect ratio beyond ``MAX_ASPECT`` : 1, or a size that ``resize``
   would bring beyond ``max_pixels`` is refused before its pixels are decoded or resized
   (``ImageTooLarge``: a decompression bomb, or a thin image that the shorter-side resize would
   make huge). Each is a counted skip naming the image.
2. **Decode** with Pillow, or (``decoder="torchvision"``) with ``torchvision.io.decode_jpeg``
   (libjpeg-turbo) for one class of images: baseline or progressive JPEGs of one or three
   components, without Exif or XMP metadata (nothing to orient), that end with their end-of-image
   marker (``jpeg_header``); everything else (PNG, CMYK, photos with Exif, other formats, a JPEG
   torchvision refuses) with Pillow. Each process checks torchvision against Pillow on its first
   ``PROBE_IMAGES`` images of that class; a difference stops the run (``DecoderMismatch``).
3. **EXIF orientation** is applied: the picture as a viewer shows it (both decoders).
4. **Mode**: L, LA, P, RGBA, CMYK, I;16 and other 16/32-bit modes become 8-bit RGB (alpha
   dropped, 16-bit values scaled by 1/257).
5. **Resize**: ``resize=(H, W)`` squashes to H x W (Lanczos unless ``interpolation`` says
   otherwise); ``resize=S`` brings the shorter side to S keeping the aspect ratio, the longer
   side ``int(S * long / short)`` (bilinear unless ``interpolation`` says otherwise), exactly
   torchvision's ``Resize(S)`` on a PIL image. An image already of the target size is not
   resampled.
6. **Crop**: ``crop=(H, W)`` cuts the centre H x W (top ``round((h - H) / 2)``, left likewise,
   Python's rounding), padding with zeros first where the image is smaller: torchvision's
   ``CenterCrop((H, W))``.

torchvision's ``ImageFolder`` loader does not apply EXIF orientation; for photos without an
orientation tag, ``Decode(resize=S, crop=(H, W))`` gives the pixels of ``Resize(S)`` then
``CenterCrop((H, W))`` applied to ``Image.open(f).convert("RGB")``.
"""
from __future__ import annotations

import io
import os
import re
import sys
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import PpdataError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files must fail, not decode half-grey

IMAGE_EXTENSIONS = frozenset(
    ext.lower() for ext in Image.registered_extensions() if ext.lower() not in {".pdf", ".eps", ".ps"}
)

MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (about 0.25 GiB of RGBA)
MAX_BYTES = 512 << 20  # the largest image file read (an uncompressed 89-megapixel RGBA TIFF fits)
MAX_ASPECT = 1000  # an image 1000 times wider than high (or the reverse) is no photograph
MAX_SIDE = 16384  # the largest --resize side

INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                  "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
                  "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}
DECODERS = ("auto", "pillow", "torchvision")
PROBE_IMAGES = 8


class ImageTooLarge(ValueError):
    """An image whose header announces more pixels than the limit (a decompression bomb)."""


class DecoderMismatch(PpdataError):
    """torchvision decoded an image to other pixels than Pillow."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha dropped, 16/32-bit scaled down)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I"):  # 16-bit (I;16*) and 32-bit integer images, taken as 16-bit range
        a = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        a = np.clip(np.asarray(img), 0, 255)
        return Image.fromarray(np.round(a).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


@dataclass(frozen=True)
class Decode:
    """Every setting that turns an image file into pixels (see the module docstring).

    ``resize``: None, ``(H, W)`` (squash) or an int S (shorter side to S). ``crop``: None or
    ``(H, W)``, the centre crop after resizing. ``interpolation``: a name of ``INTERPOLATIONS``
    (default: lanczos for (H, W), bilinear for S). ``decoder``: pillow, torchvision, or auto
    (``resolve_decoder``: torchvision when it is already loaded or the run is large enough to pay
    for its import; else Pillow). ``max_pixels``: the decompression-bomb limit.
    """

    resize: tuple[int, int] | int | None = None
    crop: tuple[int, int] | None = None
    interpolation: str | None = None
    decoder: str = "pillow"
    max_pixels: int = MAX_PIXELS
    max_bytes: int = MAX_BYTES
    exif_orientation: str = field(default="applied", init=False)

    def __post_init__(self):
        r = self.resize
        if isinstance(r, (list, tuple)):
            object.__setattr__(self, "resize", _size(r, "resize"))
        elif r is not None and not (isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= MAX_SIDE):
            raise PpdataError(f"resize {r!r} is neither a side length (1..{MAX_SIDE}) nor [H, W]")
        if self.crop is not None:
            object.__setattr__(self, "crop", _size(self.crop, "crop"))
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise PpdataError(f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        if self.resize is not None and self.interpolation is None:  # the default, made explicit
            object.__setattr__(self, "interpolation", "bilinear" if isinstance(self.resize, int) else "lanczos")
        if self.decoder not in DECODERS:
            raise PpdataError(f"decoder {self.decoder!r} is not one of {', '.join(DECODERS)}")
        for name in ("max_pixels", "max_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PpdataError(f"{name} {v!r} is not a positive integer")

    @property
    def resample(self) -> str:
        """The interpolation actually used for resizing."""
        if self.interpolation:
            return self.interpolation
        return "bilinear" if isinstance(self.resize, int) else "lanczos"

    @property
    def shape(self) -> tuple[int, int, int] | None:
        """The output shape when the settings fix it (a crop or a squash), else None."""
        if self.crop is not None:
            return (*self.crop, 3)
        if isinstance(self.resize, tuple):
            return (*self.resize, 3)
        return None

    def with_decoder(self, decoder: str) -> "Decode":
        return replace(self, decoder=decoder)

    def to_json(self) -> dict:
        """The manifest's ``decode`` entry (see docs/format.md)."""
        r = self.resize
        return {"resize": list(r) if isinstance(r, tuple) else r,
                "resize_rule": None if r is None else ("shorter side" if isinstance(r, int) else "squash"),
                "crop": list(self.crop) if self.crop else None,
                "crop_rule": "centre (torchvision CenterCrop)" if self.crop else None,
                "interpolation": self.resample if r is not None else None,
                "exif_orientation": self.exif_orientation, "decoder": self.decoder,
                "max_pixels": self.max_pixels, "max_bytes": self.max_bytes, "pillow": Image.__version__}

    def check_size(self, w: int, h: int) -> None:
        """``ImageTooLarge`` unless a ``w`` x ``h`` image may be decoded and resized under these
        settings (step 1 of the module docstring), before any pixel is."""
        if w < 1 or h < 1:
            raise ImageTooLarge(f"image is {w}x{h}")
        if w * h > self.max_pixels:
            raise ImageTooLarge(f"image is {w}x{h} = {w * h:,} pixels, over the limit of {self.max_pixels:,} "
                                f"(decompression bomb?)")
        if max(w, h) > MAX_ASPECT * min(w, h):
            raise ImageTooLarge(f"image is {w}x{h}, an aspect ratio beyond {MAX_ASPECT}:1")
        r = self.resize
        th, tw = (h, w) if r is None else r if isinstance(r, tuple) else shorter_side_size(h, w, r)
        for step, (a, b) in (("--resize", (th, tw)), ("--crop", self.crop or (0, 0))):
            if a * b > self.max_pixels:
                raise ImageTooLarge(f"image is {w}x{h}; {step} would make it {b}x{a} = {a * b:,} pixels, over the "
                                    f"limit of {self.max_pixels:,}")

    @classmethod
    def from_json(cls, d: dict) -> "Decode":
        if not isinstance(d, dict):
            raise PpdataError(f"decode settings {d!r} are not an object")
        if d.get("exif_orientation", "applied") != "applied":
            raise PpdataError(f"decode settings: EXIF orientation {d.get('exif_orientation')!r} is not known "
                              f"to this ppdata (it applies the orientation)")
        r = d.get("resize")
        rule = d.get("resize_rule")
        if isinstance(r, list) and rule not in (None, "squash"):
            raise PpdataError(f"decode settings: resize {r!r} with rule {rule!r}")
        decoder = d.get("decoder", "pillow")
        try:
            return cls(resize=tuple(r) if isinstance(r, list) else r,
                       crop=tuple(d["crop"]) if d.get("crop") else None,
                       interpolation=d.get("interpolation"), decoder=decoder if decoder in DECODERS else "pillow",
                       max_pixels=d.get("max_pixels") or MAX_PIXELS, max_bytes=d.get("max_bytes") or MAX_BYTES)
        except TypeError as e:
            raise PpdataError(f"decode settings are not valid ({e})") from None

    @classmethod
    def from_manifest(cls, m: dict) -> "Decode":
        """The settings a shard folder was made with: its ``decode`` entry, or (folders of ppdata
        before it) ``options.resize`` / ``options.max_pixels`` with Lanczos and Pillow."""
        if m.get("decode") is not None:
            return cls.from_json(m["decode"])
        opts = m.get("options") or {}
        r = opts.get("resize")
        return cls(resize=tuple(r) if r else None, max_pixels=opts.get("max_pixels") or MAX_PIXELS)


def _size(v, what: str) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in v)
        if isinstance(v, (str, bytes)) or not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
            raise ValueError
    except (TypeError, ValueError):
        raise PpdataError(f"{what} {v!r} is not [H, W] with sides 1..{MAX_SIDE}") from None
    return h, w


def shorter_side_size(h: int, w: int, s: int) -> tuple[int, int]:
    """torchvision's output size for ``Resize(s)`` of an h x w image: (new h, new w)."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = s, int(s * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def centre_crop(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """torchvision's ``CenterCrop((h, w))`` of an (H, W, 3) array: zero padding where it is
    smaller, then the centre (offsets ``int(round((H - h) / 2))``, Python's rounding)."""
    H, W = a.shape[:2]
    if h > H or w > W:
        top, left = (h - H) // 2 if h > H else 0, (w - W) // 2 if w > W else 0
        bottom, right = (h - H + 1) // 2 if h > H else 0, (w - W + 1) // 2 if w > W else 0
        a = np.pad(a, ((top, bottom), (left, right), (0, 0)))
        H, W = a.shape[:2]
        if (H, W) == (h, w):
            return a
    t, l = int(round((H - h) / 2.0)), int(round((W - w) / 2.0))
    return a[t:t + h, l:l + w]


def _resize(img: Image.Image, d: Decode) -> Image.Image:
    r = d.resize
    if r is None:
        return img
    w, h = img.size
    d.check_size(w, h)  # never resize into more than the pixel limit
    target = r if isinstance(r, tuple) else shorter_side_size(h, w, r)
    if (h, w) == target:
        return img
    return img.resize((target[1], target[0]), INTERPOLATIONS[d.resample])


def finish(img: Image.Image, d: Decode) -> np.ndarray:
    """Mode to RGB, resize, crop (steps 4-6) of a decoded, oriented Pillow image."""
    img = _resize(to_rgb(img), d)
    a = np.asarray(img, dtype=np.uint8)
    if d.crop is not None:
        a = np.ascontiguousarray(centre_crop(a, *d.crop))
    return a


_MAGIC_FORMATS = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"))


def _formats(src) -> list[str] | None:
    """The format to try first, from the file's magic bytes (Pillow otherwise tries its plugins
    one after another, which costs more than decoding a small JPEG)."""
    if isinstance(src, io.BytesIO):
        head = src.getbuffer()[:8].tobytes()
        for magic, fmt in _MAGIC_FORMATS:
            if head.startswith(magic):
                return [fmt]
    return None


def _open_checked(src, d: Decode) -> Image.Image:
    try:
        formats = _formats(src)
        try:
            img = Image.open(src, formats=formats)
        except UnidentifiedImageError:
            if formats is None:
                raise
            src.seek(0)
            img = Image.open(src)  # not what its first bytes say: let every plugin try
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"{e}; the limit is {d.max_pixels:,} pixels") from None
    w, h = img.size
    try:
        d.check_size(w, h)
    except ImageTooLarge:
        img.close()
        raise
    return img


_NO_ORIENTATION = frozenset({"exif", "xmp", "XML:com.adobe.xmp"})


def pillow_decode(data: bytes | os.PathLike | str, d: Decode) -> np.ndarray:
    """One image with Pillow, every step of the module docstring (``data``: the file's bytes, or
    a path, read only if it is a regular file of at most ``max_bytes``)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        from ..fileio import read_regular

        data = read_regular(data, d.max_bytes, "image")
    if len(data) > d.max_bytes:
        raise ImageTooLarge(f"file is {len(data):,} bytes, over the limit of {d.max_bytes:,}")
    src = io.BytesIO(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = _open_checked(src, d)
        with img:
            img.load()
            if img.format != "JPEG" or not _NO_ORIENTATION.isdisjoint(img.info):
                img = ImageOps.exif_transpose(img)  # (a JPEG is oriented by its Exif or XMP block)
            return finish(img, d)


def decode_image(data: bytes | os.PathLike | str, resize: tuple[int, int] | None = None,
                 max_pixels: int = MAX_PIXELS, settings: Decode | None = None) -> np.ndarray:
    """Decode one image file to (H, W, 3) uint8 with Pillow: ``settings`` (a ``Decode``), or the
    EXIF orientation, RGB and an optional squash to ``resize`` (H, W)."""
    d = settings or Decode(resize=tuple(resize) if resize else None, max_pixels=max_pixels)
    return pillow_decode(data, d)


# ---------------------------------------------------------------------------------------------
# JPEG headers and torchvision


_SOF = {0xC0, 0xC1, 0xC2}  # baseline, extended and progressive Huffman: what libjpeg-turbo decodes


def jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) of a baseline/progressive Huffman JPEG without APP1 metadata
    (no Exif, no XMP: nothing that could orient it) that ends with its end-of-image marker, from
    its SOF segment; None for anything else (another format, an arithmetic or lossless JPEG, a
    JPEG with an Exif/XMP block, a malformed or cut-short file)."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8 or not data.endswith(b"\xff\xd9"):
        return None
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2:
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in _SOF or pos + 10 > n:
                return None
            h = int.from_bytes(data[pos + 5:pos + 7], "big")
            w = int.from_bytes(data[pos + 7:pos + 9], "big")
            comps = data[pos + 9]
            return (h, w, comps) if h and w else None
        if marker in (0xD9, 0xDA, 0xE1):  # end or scan before any frame header; Exif/XMP
            return None
        pos += 2 + length
    return None


def torchvision_available() -> bool:
    """Whether torchvision can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


def torchvision_loaded() -> bool:
    return "torchvision.io" in sys.modules or "torchvision" in sys.modules


AUTO_MIN_IMAGES = 100_000  # from bench/results/scale-*.md: torchvision's import pays off beyond this


def resolve_decoder(d: Decode, n_images: int) -> str:
    """What ``decoder="auto"`` means for a run of ``n_images``: torchvision when it is already
    loaded (free), or importable and the run holds at least ``AUTO_MIN_IMAGES`` images (its
    import, seconds of CPU, is then paid back by its cheaper decoding); else Pillow."""
    if d.decoder != "auto":
        return d.decoder
    if torchvision_loaded() or (n_images >= AUTO_MIN_IMAGES and torchvision_available()):
        return "torchvision"
    return "pillow"


class TorchvisionJpeg:
    """Batched ``torchvision.io.decode_jpeg`` (RGB, EXIF orientation applied) for the JPEGs
    ``jpeg_header`` accepts with one or three components; other images return None."""

    def __init__(self):
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        self.torch = torch
        self._decode = decode_jpeg
        self._rgb = ImageReadMode.RGB

    @staticmethod
    def accepts(data: bytes, d: Decode) -> bool:
        """A JPEG torchvision decodes here, within ``d``'s size limits (the rest goes to Pillow,
        which refuses what is over them)."""
        head = jpeg_header(data)
        if head is None or head[2] not in (1, 3):
            return False
        try:
            d.check_size(head[1], head[0])
        except ImageTooLarge:
            return False
        return True

    def decode_many(self, blobs: list[bytes]) -> list[np.ndarray | None]:
        """Decoded (H, W, 3) arrays, None where torchvision fails (the caller uses Pillow)."""
        torch = self.torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
            try:
                out = self._decode(tensors, mode=self._rgb, apply_exif_orientation=True)
                return [t.permute(1, 2, 0).numpy() for t in out]
            except RuntimeError:
                res = []
                for t in tensors:
                    try:
                        res.append(self._decode(t, mode=self._rgb, apply_exif_orientation=True).permute(1, 2, 0).numpy())
                    except RuntimeError:
                        res.append(None)
                return res


_REPR_RE = re.compile(r"<_io\.\w+ object at 0x[0-9a-fA-F]+>|'<_io\.\w+ object at 0x[0-9a-fA-F]+>'")


def failure_reason(e: BaseException) -> str:
    """A short, user-facing reason why an image could not be decoded (no object reprs)."""
    if isinstance(e, ImageTooLarge):
        return str(e)
    if isinstance(e, UnidentifiedImageError):
        return "not an image format that can be read"
    text = _REPR_RE.sub("the data", str(e)).strip()
    if "truncated" in text.lower():
        return "truncated image data"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
