"""Contact sheets: grids of images, optionally encrypted beside plain originals."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def grid(images: np.ndarray, cols: int = 8, pad: int = 2, scale: int = 1, background: int = 255) -> np.ndarray:
    """Tile ``(N, H, W, 3)`` uint8 images into one ``(rows*(H+pad)+pad, ...)`` image."""
    n, h, w, _ = images.shape
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), background, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = images[i]
    return out


def label_rows(sheet: np.ndarray, labels: list[str], rows: int, pad: int = 2, width: int = 90,
               background: int = 255) -> np.ndarray:
    """Add a left margin to a ``grid`` sheet of ``rows`` equal rows with one text label per row."""
    from PIL import ImageDraw

    h = (sheet.shape[0] - pad) // max(1, rows)
    img = Image.new("RGB", (sheet.shape[1] + width, sheet.shape[0]), (background,) * 3)
    img.paste(Image.fromarray(sheet), (width, 0))
    draw = ImageDraw.Draw(img)
    for r, text in enumerate(labels[:rows]):
        draw.text((4, pad + r * h + h // 2 - 6), text, fill=(0, 0, 0))
    return np.asarray(img)


def auto_scale(h: int, target: int = 96) -> int:
    """Integer upscaling so that small images (32x32) are visible in a sheet."""
    return max(1, target // max(1, h))


def pairs(*columns: np.ndarray) -> np.ndarray:
    """Interleave equally long image sets: a, b, a, b, ... (for side-by-side sheets)."""
    n = min(len(c) for c in columns)
    return np.stack([c[:n] for c in columns], axis=1).reshape(n * len(columns), *columns[0].shape[1:])


MARK = ("Software", "ppdata preview")  # a PNG text chunk: the sheets ppdata wrote, and may replace


def wrote_it(path: str | Path) -> bool:
    """True if ``path`` is a regular file holding a contact sheet ppdata wrote."""
    import os
    import stat

    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return False
        with Image.open(path) as img:
            return img.format == "PNG" and img.text.get(MARK[0]) == MARK[1]
    except Exception:  # noqa: BLE001  (not an image ppdata can read: not ppdata's)
        return False


def check_output(path: str | Path, overwrite: bool = False) -> None:
    """Refuse (``PpdataError``) to replace a file ppdata did not write, unless ``overwrite``; a
    folder, link or special file at ``path`` is always refused."""
    import os
    import stat

    from .errors import PpdataError

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise PpdataError(f"{path} exists and is not a regular file; ppdata does not replace it")
    if not overwrite and not wrote_it(path):
        raise PpdataError(f"{path} exists and is not a contact sheet ppdata wrote; pass --overwrite to replace it")


def save_png(image: np.ndarray, path: str | Path, overwrite: bool = True) -> Path:
    """Write ``image`` as a PNG marked as ppdata's (``MARK``), atomically (a link at ``path`` is
    replaced, never written through); ``overwrite=False`` refuses a file ppdata did not write."""
    import io

    from PIL.PngImagePlugin import PngInfo

    from .fileio import atomic_write

    path = Path(path)
    check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text(*MARK)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", pnginfo=info)
    atomic_write(path, buf.getvalue())
    return path
