"""The conventional pixel-based method of the ICIP 2019 paper (common key, adaptation network)."""
from __future__ import annotations

from .base import register
from .pixel import PixelScheme


@register
class IcipScheme(PixelScheme):
    """The conventional pixel-based method of the ICIP 2019 paper: the pixel transform (NP, optional
    CS; key format ``PixelKey``) whose setting is one common key (``--keys same``), trained with the
    adaptation network. Registered under its own name, so its keys are separate from ``pixel``'s
    (key separation) and the training side can tell the method apart."""

    name = "icip"
