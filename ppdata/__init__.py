"""ppdata: privacy-preserving image datasets with pixel-based perceptual encryption.

Library first; the ``ppdata`` command is a thin layer on top.

- ``ppdata.cipher``: schemes (``get_scheme("pixel", cs=True)``), ``fold`` (the key-free invariant)
- ``ppdata.keys``: secrets, ChaCha20 key expansion, keystores
- ``ppdata.sources``: dataset readers (cifar10/100, stl10, ImageFolder dirs and archives, sample)
- ``ppdata.shards``: WebDataset/HDF5 writers, manifest, and the reader ``open_shards``
- ``ppdata.pipeline``: encrypt / decrypt whole datasets; ``ppdata.augment``: the server's expansion
- ``ppdata.dataset``: ``ShardDataset`` / ``ShardIterableDataset`` for ``torch.utils.data.DataLoader``

Module map and import rules: ``docs/architecture.md``.
"""
__version__ = "0.2.0"

from .errors import PpdataError  # noqa: E402
from .shards import Samples, ShardSet, open_shards, read_manifest  # noqa: E402

__all__ = ["PpdataError", "Samples", "ShardSet", "open_shards", "read_manifest", "__version__"]
