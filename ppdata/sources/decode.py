"""Decoding one image file: EXIF orientation, any mode to 8-bit RGB, size limits, clear reasons.

Image modes: L, LA, P, RGBA, CMYK, I;16 and other 16/32-bit modes are converted to 8-bit RGB
(alpha is dropped, 16-bit values are scaled by 1/257). EXIF orientation is applied (the picture
as a viewer shows it). An image whose header announces more than ``max_pixels`` pixels is refused
before its pixels are decoded (``ImageTooLarge``, a decompression bomb).
"""
from __future__ import annotations

import io
import os
import re
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files must fail, not decode half-grey

IMAGE_EXTENSIONS = frozenset(
    ext.lower() for ext in Image.registered_extensions() if ext.lower() not in {".pdf", ".eps", ".ps"}
)


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


MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (about 0.25 GiB of RGBA)
MAX_SIDE = 16384  # the largest --resize side


class ImageTooLarge(ValueError):
    """An image whose header announces more pixels than the limit (a decompression bomb)."""


def decode_image(data: bytes | os.PathLike | str, resize: tuple[int, int] | None = None,
                 max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode one image file to (H, W, 3) uint8: EXIF orientation applied, mode converted to RGB,
    optional resize (H, W). An image over ``max_pixels`` (from its header) is refused before its
    pixels are decoded (``ImageTooLarge``)."""
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(src)
        except Image.DecompressionBombError as e:
            raise ImageTooLarge(f"{e}; the limit is {max_pixels:,} pixels") from None
        with img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageTooLarge(f"image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
                                    f"(decompression bomb?)")
            img.load()
            img = ImageOps.exif_transpose(img)
            img = to_rgb(img)
            if resize is not None and img.size != (resize[1], resize[0]):
                img = img.resize((resize[1], resize[0]), Image.Resampling.LANCZOS)
            return np.asarray(img, dtype=np.uint8)


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
