"""Shard folders: WebDataset tar shards or HDF5 files, a manifest, writers and the reader API.

Layout of a shard folder ``DIR``::

    DIR/manifest.json            written last; its presence means the folder is complete
    DIR/<split>-NNNNNN.tar       format "webdataset": samples <key>.npy (uint8 HxWx3) + <key>.cls
    DIR/<split>.h5               format "hdf5": images (N,H,W,3) uint8, labels (N,) int64, keys (N,) str

Modules, one job each: ``tar`` (records, writer, checked reader), ``hdf5`` (writer, checked
reader), ``manifest`` (create, write, read as untrusted input), ``folder`` (the output folder's
lock, journal and ownership), ``writer`` (writer by format, writer thread), ``reader``
(``open_shards`` / ``ShardSet``). Readable by plain ``webdataset.WebDataset`` and ``h5py``.
"""
from .folder import JOURNAL, OutputFolder
from .hdf5 import HDF5Writer, hdf5_chunk_images
from .manifest import (FORMATS, MANIFEST, MANIFEST_VERSION, ShardInfo, augment_entry, expansions_of, new_manifest,
                       read_manifest, write_manifest)
from .reader import ShardSet, open_shards, splits_of
from .samples import Samples
from .tar import WebDatasetWriter, npy_header, record_size, tar_records
from .writer import WriterThread, make_writer

INCOMPLETE = JOURNAL

__all__ = ["FORMATS", "HDF5Writer", "INCOMPLETE", "JOURNAL", "MANIFEST", "MANIFEST_VERSION", "OutputFolder",
           "Samples", "ShardInfo", "augment_entry", "expansions_of", "ShardSet", "WebDatasetWriter", "WriterThread", "hdf5_chunk_images",
           "make_writer", "new_manifest", "npy_header", "open_shards", "read_manifest", "record_size",
           "splits_of", "tar_records", "write_manifest"]
