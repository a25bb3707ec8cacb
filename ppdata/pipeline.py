"""Whole-dataset jobs: encrypt a source into a shard folder, decrypt a shard folder.

``encrypt`` reads a source batch by batch, derives each image's key from the key stream by its
index, encrypts, and hands the batch to a writer thread (so encryption, writing and hashing
overlap on two cores). Memory is bounded by a few batches, whatever the dataset size.
"""
from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from .cipher import Scheme, scheme_from_manifest
from .errors import PpdataError
from .keys import Keystore, KeyStream, check_writable, is_inside
from .shards import (FORMATS, OutputFolder, ShardSet, WriterThread, make_writer, new_manifest, read_manifest,
                     write_manifest)
from .sources import Batch, Source, key_index, sample_key  # noqa: F401 (key_index: public here too)

log = logging.getLogger("ppdata")

# expand(batch, split) -> (sample keys, images, labels, key indices): one output image per key
# index. The default is the identity; plain-domain augmentation expands each image into copies.
Expand = Callable[[Batch, str], tuple[list[str], np.ndarray, np.ndarray, np.ndarray]]


def identity_expand(batch: Batch, split: str):
    keys = [sample_key(split, int(i)) for i in batch.index]
    return keys, batch.images, batch.labels, batch.index


def encrypt(
    source: Source,
    out: str | Path,
    *,
    scheme: Scheme,
    keys: KeyStream | None,
    fmt: str = "webdataset",
    split: str | None = None,
    shard_size: int = 10000,
    overwrite: bool = False,
    keystore: str | Path | None = None,
    seeded: bool = False,
    batch_size: int = 512,
    expand: Expand = identity_expand,
    extra_options: dict | None = None,
    extra_manifest: dict | None = None,
    progress: bool = True,
) -> dict:
    """Encrypt ``source`` into shard folder ``out``; return the manifest.

    keys: the key stream (None for the plain scheme). keystore: where to keep the secret
    (client side; refused inside ``out``), or None to discard it. seeded: the secret came from
    a seed (recorded in the manifest: such data is not private). extra_manifest: top-level
    manifest entries to add (e.g. ``augment`` for plain-domain augmentation, see ``key_indexer``).
    """
    out = Path(out)
    if fmt not in FORMATS:
        raise PpdataError(f"unknown --format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if scheme.encrypted and keys is None:
        raise PpdataError("an encrypting scheme needs a key stream")
    if keystore is not None:
        if is_inside(keystore, out):
            raise PpdataError(
                f"refusing to write the keystore {keystore} inside the output folder {out}: "
                f"the output is uploaded, the keys must stay with the client"
            )
        check_writable(Path(keystore))
    splits = source.select_splits(split)
    key_info = None
    if scheme.encrypted:
        key_info = {"mode": keys.mode, "key_id": keys.key_id, "seeded": bool(seeded)}
    options = {"shard_size": shard_size, "batch_size": batch_size, **(extra_options or {})}
    manifest = new_manifest(fmt, source=source.describe(), scheme=scheme.describe(), keys=key_info,
                            shape=None, classes=source.classes, options=options)
    manifest.update(extra_manifest or {})
    if seeded:
        log.warning("keys come from --seed: anybody who knows the seed can decrypt; this data is NOT private")

    with OutputFolder(out, overwrite=overwrite):
        for sp in splits:
            info = _encrypt_split(source, sp, out, scheme, keys, fmt, shard_size, batch_size, expand,
                                  manifest, progress)
            manifest["splits"][sp] = info
        if keystore is not None:
            Keystore(mode=keys.mode, secret=keys.secret, seeded=seeded, scheme=scheme.describe(),
                     dataset=manifest["id"]).save(keystore)
        write_manifest(out, manifest)
    return manifest


def _encrypt_split(source, split, out, scheme, keys, fmt, shard_size, batch_size, expand, manifest, progress):
    count = 0
    skipped_before = len(source.skipped)
    bar = tqdm(total=source.count(split), desc=f"encrypt {split}", unit="img", disable=not progress,
               leave=False)
    try:
        batches = iter(source.batches(split, batch_size))
        first = next(batches, None)
        if first is None:
            raise PpdataError(f"split {split} of {source.name}: no readable images")
        shape = tuple(first.images.shape[1:])
        if manifest["shape"] is None:
            try:
                scheme.check_shape(shape)
            except ValueError as e:
                raise PpdataError(f"{scheme.name}: {e}") from None
            manifest["shape"] = list(shape)
        elif tuple(manifest["shape"]) != shape:
            raise PpdataError(f"split {split} has images of shape {shape}, others {tuple(manifest['shape'])}")
        writer = make_writer(fmt, out, split, shape, shard_size,
                             attrs={"classes": source.classes, "scheme": scheme.describe()})
        with WriterThread(writer) as worker:
            for batch in itertools.chain([first], batches):
                names, images, labels, kidx = expand(batch, split)
                if scheme.encrypted:
                    k = scheme.derive_keys(keys, split, kidx, images.shape[1:])
                    images = scheme.encrypt(images, k)
                worker.put(names, images, labels)
                count += len(names)
                bar.update(len(batch))
            shards = worker.finish()
    finally:
        bar.close()
    skipped = source.skipped[skipped_before:]
    if skipped:
        log.warning("split %s: skipped %d unreadable image(s)", split, len(skipped))
    return {
        "count": count,
        "skipped": {"count": len(skipped), "files": [{"index": s.index, "path": s.path, "reason": s.reason}
                                                     for s in skipped[:1000]]},
        "shards": [s.to_json() for s in shards],
    }


def decrypt(directory: str | Path, keystore: str | Path, out: str | Path, *, fmt: str | None = None,
            overwrite: bool = False, batch_size: int = 1024, progress: bool = True) -> dict | None:
    """Decrypt a shard folder with its keystore into plain shards (``fmt`` webdataset/hdf5, default:
    as the input) or a PNG ImageFolder tree (``fmt="png"``: OUT/<split>/<class>/<key>.png)."""
    manifest = read_manifest(directory)
    store = Keystore.load(keystore)
    scheme = scheme_from_manifest(manifest["scheme"])
    if not scheme.encrypted:
        raise PpdataError(f"{directory} holds plain images; nothing to decrypt")
    kinfo = manifest.get("keys") or {}
    if kinfo.get("key_id") and kinfo["key_id"] != store.key_id:
        raise PpdataError(f"keystore {keystore} does not belong to {directory} "
                          f"(key id {store.key_id}, the data needs {kinfo['key_id']})")
    if kinfo.get("mode") and kinfo["mode"] != store.mode:
        raise PpdataError(f"keystore {keystore} is for {store.mode} keys, {directory} uses {kinfo['mode']} keys")
    if is_inside(out, directory) or is_inside(directory, out):
        raise PpdataError("--out must not be inside the encrypted folder (or contain it)")
    index_of = key_indexer(manifest)
    stream = store.stream()
    fmt = fmt or manifest["format"]
    if fmt == "png":
        return _decrypt_png(directory, manifest, scheme, stream, index_of, Path(out), overwrite, batch_size, progress)
    from .cipher import PlainScheme

    plain = PlainScheme()
    result = new_manifest(fmt, source={"name": "decrypt", "parent": manifest["id"]}, scheme=plain.describe(),
                          keys=None, shape=manifest["shape"], classes=manifest.get("classes", []),
                          options={"decrypted_from": manifest.get("scheme")})
    with OutputFolder(out, overwrite=overwrite):
        for sp in manifest["splits"]:
            ss = ShardSet(directory, sp, manifest)
            writer = make_writer(fmt, out, sp, ss.shape, manifest.get("options", {}).get("shard_size", 10000),
                                 attrs={"classes": ss.classes, "scheme": plain.describe()})
            try:
                for s in tqdm(ss.batches(batch_size), desc=f"decrypt {sp}", disable=not progress, leave=False):
                    k = scheme.derive_keys(stream, sp, index_of(s.keys, sp), ss.shape)
                    writer.write(list(s.keys), scheme.decrypt(s.images, k), s.labels)
                shards = writer.close()
            except BaseException:
                writer.abort()
                raise
            result["splits"][sp] = {"count": len(ss), "skipped": ss.info.get("skipped"),
                                    "shards": [x.to_json() for x in shards]}
        write_manifest(out, result)
    return result


def key_indexer(manifest: dict) -> Callable:
    """``f(sample_keys, split) -> key indices`` for a manifest's naming scheme.

    Folders with an ``augment`` entry name their samples ``<parent key>_<variant>``; see
    ``ppdata.augment.key_indexer`` (plain domain: copy v of image i has key index i * V + v).
    """
    if manifest.get("augment"):
        from .augment import key_indexer as augment_indexer

        return augment_indexer(manifest["augment"], key_index)
    return key_index


def _decrypt_png(directory, manifest, scheme, stream, index_of, out: Path, overwrite, batch_size, progress):
    from PIL import Image

    classes = manifest.get("classes") or []
    with OutputFolder(out, overwrite=overwrite):
        for sp in manifest["splits"]:
            ss = ShardSet(directory, sp, manifest)
            for s in tqdm(ss.batches(batch_size), desc=f"decrypt {sp}", disable=not progress, leave=False):
                k = scheme.derive_keys(stream, sp, index_of(s.keys, sp), ss.shape)
                plain = scheme.decrypt(s.images, k)
                for key, img, label in zip(s.keys, plain, s.labels):
                    cls = classes[label] if 0 <= label < len(classes) else str(label)
                    d = out / sp / cls
                    d.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(img).save(d / f"{key}.png")
    return None

