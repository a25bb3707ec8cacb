"""Optional parts of the distribution and what to install for them.

``pip install ppdata`` is the client (numpy, pillow, click, tqdm, h5py, webdataset,
cryptography, jsonschema). ``ppdata[train]`` adds PyTorch for ``python -m train.*``; ``ppdata[attack]`` adds
PyTorch, scikit-image and scipy for the ``attack`` package and ``ppdata audit``; ``ppdata[ray]``
adds Ray Data for ``--engine ray``; ``ppdata[remote]`` adds fsspec and s3fs for ``s3://`` (and
``http(s)://``) sources and outputs; ``ppdata[all]`` is all of them. ``require(extra, modules, what)`` is called by a package that needs an extra: a missing
module becomes one line naming the ``pip install`` to run.
"""
from __future__ import annotations

import importlib
import sys

EXTRAS = {
    "train": ("torch", "torchvision"),
    "attack": ("torch", "torchvision", "skimage", "scipy"),
    "ray": ("ray",),
    "remote": ("fsspec",),
}


class MissingExtra(ImportError):
    """A module of an optional extra is not installed; the message says what to install."""


def require(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Import ``modules`` (default: the extra's); if one is missing, raise ``MissingExtra`` naming
    ``pip install 'ppdata[<extra>]'``, or, while ``python -m`` is locating a module of the package,
    exit with that one line (no traceback)."""
    for name in modules or EXTRAS[extra]:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            text = (f"{what} needs {e.name or name}, which is not installed: pip install 'ppdata[{extra}]'")
            if sys.argv and sys.argv[0] == "-m":  # python -m <package>.<module> is starting
                raise SystemExit(f"Error: {text}") from None
            raise MissingExtra(text, name=e.name) from None
