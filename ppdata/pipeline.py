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
from . import __version__
from .keys import DERIVATIONS, Keystore, KeyStream, check_new_keystore, is_inside
from .names import check_class, check_path_text, check_sample_key, check_split
from .shards import FORMATS, OutputFolder, ShardSet, WriterThread, make_writer, new_manifest, read_manifest
from .shards.manifest import augment_entry
from .sources import Batch, Source, identity_expand, key_index, sample_key  # noqa: F401 (public here too)
from .variants import key_indexer as augment_indexer

log = logging.getLogger("ppdata")

# expand(batch, split) -> (sample keys, images, labels, key indices): one output image per key
# index. The default is the identity; plain-domain augmentation expands each image into copies.
Expand = Callable[[Batch, str], tuple[list[str], np.ndarray, np.ndarray, np.ndarray]]


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
    out = Path(check_path_text(out, "output folder (--out)"))
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
        check_new_keystore(Path(keystore))
    splits = source.select_splits(split)
    for sp in splits:
        check_split(sp, "source split")
    key_info = None
    if scheme.encrypted:
        key_info = {"mode": keys.mode, "key_id": keys.key_id, "seeded": bool(seeded), "derivation": keys.derivation}
    options = {"shard_size": shard_size, "batch_size": batch_size, **(extra_options or {})}
    manifest = new_manifest(fmt, source=source.describe(), scheme=scheme.describe(), keys=key_info,
                            shape=None, classes=source.classes, options=options)
    manifest.update(extra_manifest or {})
    if seeded:
        log.warning("keys come from --seed: anybody who knows the seed can decrypt; this data is NOT private")

    with OutputFolder(out, overwrite=overwrite) as folder:
        for sp in splits:
            info = _encrypt_split(source, sp, folder, scheme, keys, fmt, shard_size, batch_size, expand,
                                  manifest, progress)
            manifest["splits"][sp] = info
        if keystore is not None:  # never replaces a file (checked above, and again atomically here)
            Keystore(mode=keys.mode, secret=keys.secret, seeded=seeded, scheme=scheme.describe(),
                     dataset=manifest["id"]).save(keystore)
        folder.write_manifest(manifest)
    return manifest


def _encrypt_split(source, split, folder, scheme, keys, fmt, shard_size, batch_size, expand, manifest, progress):
    out = folder.path
    count = 0
    images_in = 0
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
                             attrs={"classes": source.classes, "scheme": scheme.describe()}, claim=folder.claim)
        with WriterThread(writer) as worker:
            for batch in itertools.chain([first], batches):
                names, images, labels, kidx = expand(batch, split)
                if scheme.encrypted:
                    k = scheme.derive_keys(keys, split, kidx, images.shape[1:])
                    images = scheme.encrypt(images, k)
                worker.put(names, images, labels)
                count += len(names)
                images_in += len(batch)
                bar.update(len(batch))
            shards = worker.finish()
    finally:
        bar.close()
    skipped = source.skipped[skipped_before:]
    if skipped:
        log.warning("split %s: skipped %d unreadable image(s)", split, len(skipped))
    expected = source.count(split)
    if expected is not None and images_in + len(skipped) != expected:
        raise PpdataError(f"split {split} of {source.name}: read {images_in} images and skipped {len(skipped)}, "
                          f"but the source lists {expected}")
    return {
        "count": count,
        "skipped": {"count": len(skipped), "files": [{"index": s.index, "path": s.path, "reason": s.reason}
                                                     for s in skipped[:1000]]},
        "shards": [s.to_json() for s in shards],
    }


def decrypt(directory: str | Path, keystore: str | Path, out: str | Path, *, fmt: str | None = None,
            overwrite: bool = False, batch_size: int = 1024, progress: bool = True, verify: bool = True) -> dict:
    """Decrypt a shard folder with its keystore into plain shards (``fmt`` webdataset/hdf5, default:
    as the input) or a PNG ImageFolder tree (``fmt="png"``: OUT/<split>/<class>/<key>.png, with a
    manifest listing every file). Every shard is checked as it is read (``verify``: sha256 too);
    the output's counts are what was written, checked against the input's manifest."""
    check_path_text(out, "output folder (--out)")
    manifest = read_manifest(directory)
    store = Keystore.load(check_path_text(keystore, "keystore (--keys)"))
    scheme = scheme_from_manifest(manifest["scheme"])
    if not scheme.encrypted:
        raise PpdataError(f"{directory} holds plain images; nothing to decrypt")
    kinfo = manifest.get("keys") or {}
    if not kinfo.get("key_id"):
        raise PpdataError(f"{directory}: the manifest records no key id, so the keystore cannot be checked "
                          f"against it (a wrong key would decrypt to noise); refusing to decrypt")
    if kinfo["key_id"] != store.key_id:
        raise PpdataError(f"keystore {keystore} does not belong to {directory} "
                          f"(key id {store.key_id}, the data needs {kinfo['key_id']})")
    if kinfo.get("mode") and kinfo["mode"] != store.mode:
        raise PpdataError(f"keystore {keystore} is for {store.mode} keys, {directory} uses {kinfo['mode']} keys")
    if is_inside(out, directory) or is_inside(directory, out):
        raise PpdataError("--out must not be inside the encrypted folder (or contain it)")
    index_of = key_indexer(manifest)
    derivation = kinfo.get("derivation", 1)
    if derivation not in DERIVATIONS:
        raise PpdataError(f"{directory}: key derivation {derivation!r} is not known to this ppdata ({__version__})")
    stream = store.stream(derivation)
    fmt = fmt or manifest["format"]
    if fmt == "png":
        return _decrypt_png(directory, manifest, scheme, stream, index_of, Path(out), overwrite, batch_size,
                            progress, verify)
    from .cipher import PlainScheme

    plain = PlainScheme()
    result = new_manifest(fmt, source={"name": "decrypt", "parent": manifest["id"]}, scheme=plain.describe(),
                          keys=None, shape=manifest["shape"], classes=manifest.get("classes", []),
                          options={"decrypted_from": manifest.get("scheme")})
    with OutputFolder(out, overwrite=overwrite) as folder:
        for sp in _splits_to_decrypt(manifest, directory):
            ss = ShardSet(directory, sp, manifest, verify=verify)
            writer = make_writer(fmt, folder.path, sp, ss.shape, manifest.get("options", {}).get("shard_size", 10000),
                                 attrs={"classes": ss.classes, "scheme": plain.describe()}, claim=folder.claim)
            written = 0
            try:
                for s in tqdm(ss.batches(batch_size), desc=f"decrypt {sp}", disable=not progress, leave=False):
                    k = scheme.derive_keys(stream, sp, index_of(s.keys, sp), ss.shape)
                    writer.write(list(s.keys), scheme.decrypt(s.images, k), s.labels)
                    written += len(s)
                shards = writer.close()
            except BaseException:
                writer.abort()
                raise
            if written != len(ss):
                raise PpdataError(f"{directory}: split {sp} gave {written} samples, the manifest says {len(ss)}")
            result["splits"][sp] = {"count": written, "skipped": ss.info.get("skipped"),
                                    "shards": [x.to_json() for x in shards]}
            if ss.info.get("augment"):  # a plain-domain expansion (encrypt --augment) stays one
                result["splits"][sp]["augment"] = ss.info["augment"]
        folder.write_manifest(result)
    return result


def key_indexer(manifest: dict) -> Callable:
    """``f(sample_keys, split) -> key indices`` for a manifest's naming scheme.

    Expanded splits name their samples ``<parent key>_<variant>``; see ``variants.key_indexer``
    (plain domain: copy v of image i has key index i * V + v).
    """
    def index_of(sample_keys, split):
        entry = augment_entry(manifest, split)
        if entry is None:
            return key_index(sample_keys, split)
        return augment_indexer({**entry, "split": split}, key_index)(sample_keys, split)

    return index_of


def decryptable_splits(manifest: dict) -> list[str]:
    """The splits ``decrypt`` turns into plain images: all but encrypted-domain expansions added in
    place (their images are their parent split's, moved; decrypt the parent)."""
    return [sp for sp, info in manifest["splits"].items()
            if not ((info.get("augment") or {}).get("domain") == "encrypted")]


def _splits_to_decrypt(manifest: dict, directory) -> list[str]:
    splits = decryptable_splits(manifest)
    for sp in manifest["splits"]:
        if sp not in splits:
            parent = manifest["splits"][sp]["augment"].get("parent", {}).get("split", "train")
            log.info("%s: split %s is an encrypted-domain expansion of %s; not decrypted (decrypt %s)",
                     directory, sp, parent, parent)
    return splits


def _decrypt_png(directory, manifest, scheme, stream, index_of, out: Path, overwrite, batch_size, progress,
                 verify) -> dict:
    """OUT/<split>/<class>/<key>.png for every sample, and OUT/manifest.json (format "png") listing
    every file with its size: the folder's own record of what ppdata wrote there."""
    from PIL import Image

    classes = [check_class(c) for c in manifest.get("classes") or []]
    result = {"format": "png", "manifest_version": manifest.get("manifest_version"),
              "source": {"name": "decrypt", "parent": manifest["id"]}, "shape": manifest["shape"],
              "classes": classes, "splits": {}, "files": {}}
    with OutputFolder(out, overwrite=overwrite) as folder:
        for sp in _splits_to_decrypt(manifest, directory):
            ss = ShardSet(directory, sp, manifest, verify=verify)
            made: set[str] = set()
            written = 0
            for s in tqdm(ss.batches(batch_size), desc=f"decrypt {sp}", disable=not progress, leave=False):
                k = scheme.derive_keys(stream, sp, index_of(s.keys, sp), ss.shape)
                plain = scheme.decrypt(s.images, k)
                rels = []
                for key, label in zip(s.keys, s.labels):
                    cls = classes[label] if 0 <= label < len(classes) else str(int(label))
                    rels.append(f"{sp}/{cls}/{check_sample_key(str(key))}.png")
                dirs = sorted({r.rsplit("/", 1)[0] for r in rels} - made)
                folder.claim(*[sp] * (sp not in made), *dirs, *rels)
                for d in dirs:
                    (folder.path / d).mkdir(parents=True, exist_ok=True)
                    made.add(d)
                made.add(sp)
                for rel, img in zip(rels, plain):
                    if rel in result["files"]:
                        raise PpdataError(f"{directory}: sample {rel.rsplit('/', 1)[1][:-4]} appears twice in split {sp}")
                    path = folder.path / rel
                    Image.fromarray(img).save(path, format="PNG")
                    result["files"][rel] = path.stat().st_size
                written += len(s)
            result["splits"][sp] = {"count": written}
        folder.write_manifest(result)
    return result
