"""The paper's cipher, for users of the library: a facade over ``ppdata.schemes``.

``get_scheme("pixel", cs=True)`` gives the pixel-based scheme of Sirichotedumrong, Kinoshita and
Kiya (IEEE Access 2019): negative-positive transform (NP) of every pixel and channel, optional
colour shuffle (CS) per pixel; ``fold`` is its key-free invariant. Every scheme, its key format
and faithfulness notes: ``ppdata.schemes``.
"""
from .schemes import (PERMUTATIONS, SCHEMES, PixelKey, PixelScheme, PlainScheme, Scheme, check_images, fold,
                      get_scheme, register, scheme_from_manifest)

__all__ = ["PERMUTATIONS", "SCHEMES", "PixelKey", "PixelScheme", "PlainScheme", "Scheme", "check_images", "fold",
           "get_scheme", "register", "scheme_from_manifest"]
