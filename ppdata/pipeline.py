"""Whole-dataset jobs: encrypt a source into a shard folder, decrypt a shard folder.

``encrypt`` cuts a source into chunks of consecutive images; worker processes (the local engine,
``ppdata.engines``) read, decode and encrypt each chunk, every image under the key of its
(split, index); this process writes the results in source order through a writer thread (which
also hashes), so output is the same for any number of workers. Memory is bounded by a few
chunks in flight, whatever the dataset size. ``engine="ray"`` runs the same work on a Ray cluster.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from .cipher import Scheme, scheme_from_manifest
from .errors import PpdataError
from . import __version__
from .keys import DERIVATIONS, Keystore, KeyStream, check_new_keystore, is_inside, scheme_check
from .names import check_class, check_path_text, check_sample_key, check_split
from .shards import FORMATS, OutputFolder, ShardSet, WriterThread, make_writer, new_manifest, read_manifest
from .shards.manifest import augment_entry
from .engines.local import LocalEngine, accept_skips, chunks_of
from .engines.work import Chunk, Work, checked_shape
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
    workers: int | None = None,
    engine: str = "local",
    ray_address: str | None = None,
) -> dict:
    """Encrypt ``source`` into shard folder ``out`` (a local folder or a URL); return the manifest.

    keys: the key stream (None for the plain scheme). keystore: where to keep the secret
    (client side, a local file; refused inside ``out``), or None to discard it. seeded: the
    secret came from a seed (recorded in the manifest: such data is not private).
    extra_manifest: top-level manifest entries to add (e.g. ``augment`` for plain-domain
    augmentation, see ``key_indexer``). workers: processes that decode and encrypt (default: all
    cores). engine: ``local`` (worker processes) or ``ray`` (Ray Data on a cluster,
    ``ray_address``; see ``ppdata.engines.raydata``). Every engine writes the same samples.
    """
    from .remote import is_url

    out_text = check_path_text(out, "output folder (--out)")
    remote = is_url(str(out_text))
    out = out_text if remote else Path(out_text)
    if fmt not in FORMATS:
        raise PpdataError(f"unknown --format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if scheme.encrypted and keys is None:
        raise PpdataError("an encrypting scheme needs a key stream")
    if keystore is not None:
        check_keystore_target(keystore, out)
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
    settings = source.decode
    if settings is not None:
        manifest["decode"] = settings.to_json()
    if seeded:
        log.warning("keys come from --seed: anybody who knows the seed can decrypt; this data is NOT private")
    if engine == "ray":
        from .engines.raydata import encrypt_ray

        return encrypt_ray(source, out, splits=splits, scheme=scheme, keys=keys, fmt=fmt, shard_size=shard_size,
                           overwrite=overwrite, keystore=keystore, seeded=seeded, expand=expand,
                           manifest=manifest, progress=progress, workers=workers, address=ray_address)
    if engine != "local":
        raise PpdataError(f"unknown engine {engine!r}; expected local or ray")

    if settings is not None and settings.decoder == "auto":
        from .sources.decode import resolve_decoder

        settings = settings.with_decoder(resolve_decoder(settings, sum(source.count(sp) or 0 for sp in splits)))
    work = Work(decode=settings, scheme=scheme.describe() if scheme.encrypted else None,
                secret=keys.secret if keys is not None else None, mode=keys.mode if keys is not None else "independent",
                derivation=keys.derivation if keys is not None else 2,
                expand=None if expand is identity_expand else expand)
    with LocalEngine(work, workers) as eng, open_output(out, overwrite) as folder:
        decoders: dict = {}
        for sp in splits:
            info = _encrypt_split(source, sp, folder, eng, scheme, fmt, shard_size, batch_size, manifest, progress)
            for k, v in info.get("decoded", {}).items():
                decoders[k] = decoders.get(k, 0) + v
            manifest["splits"][sp] = info
        if settings is not None:
            manifest["decode"]["decoder_requested"] = source.decode.decoder
            manifest["decode"]["decoder"] = "torchvision" if decoders.get("torchvision") else "pillow"
        manifest.pop("_shape_origin", None)
        manifest["engine"] = {"name": "local", "workers": eng.workers}
        seal_keys(manifest, scheme, keys)
        if keystore is not None:  # never replaces a file (checked above, and again atomically here)
            Keystore(mode=keys.mode, secret=keys.secret, seeded=seeded, scheme=scheme.describe(),
                     dataset=manifest["id"]).save(keystore)
        folder.write_manifest(manifest)
    return manifest


def seal_keys(manifest: dict, scheme: Scheme, keys: KeyStream | None) -> None:
    """Record in the manifest the check value that binds its scheme, options and image shape to
    the secret (``scheme_check``, see ``keys.scheme_check``), once the shape is known."""
    if keys is not None and manifest.get("keys") is not None and manifest.get("shape"):
        manifest["scheme_check"] = scheme_check(keys.secret, scheme.key_context(manifest["shape"]))


def _canonical(entry) -> str:
    import json

    return json.dumps(entry, sort_keys=True, separators=(",", ":"))


def _scheme_words(entry: dict) -> str:
    opts = ", ".join(f"{k}={v}" for k, v in sorted(entry.items()) if k not in ("name", "encrypted"))
    return f"{entry.get('name')}" + (f" ({opts})" if opts else "")


def check_scheme_against_keystore(directory, manifest: dict, scheme: Scheme, store: Keystore, keystore) -> None:
    """The keystore is the authority for decryption: the scheme it records must be the manifest's,
    and the manifest's check value (when it has one) must be what the secret gives for the
    manifest's scheme and shape. Anything else is refused, naming both: decrypting under another
    scheme than the one the data was encrypted with writes noise."""
    from .names import printable

    words = printable(_scheme_words(manifest["scheme"]))
    if store.scheme is not None and _canonical(store.scheme) != _canonical(manifest["scheme"]):
        raise PpdataError(f"keystore {keystore} was made for scheme {printable(_scheme_words(store.scheme))}, but the "
                          f"manifest of {directory} says {words}: the manifest was edited or belongs to other data; "
                          f"refusing to decrypt")
    tag = manifest.get("scheme_check")
    if tag is not None and tag != scheme_check(store.secret, scheme.key_context(manifest["shape"])):
        raise PpdataError(f"the manifest of {directory} says scheme {words} for {manifest['shape'][0]}x"
                          f"{manifest['shape'][1]} images, but its check value does not match what the key of "
                          f"{keystore} gives for that: the manifest was edited; refusing to decrypt")


def check_keystore_target(keystore, out) -> None:
    """Before any work: a new keystore can be created at ``keystore`` (a local file, outside the
    output folder ``out``, not an existing name: a keystore is never replaced, a dangling link
    included)."""
    from .remote import is_url

    if is_url(str(keystore)):
        raise PpdataError(f"the keystore {keystore} must be a local file: keys never leave the client")
    if not is_url(str(out)) and is_inside(keystore, out):
        raise PpdataError(f"refusing to write the keystore {keystore} inside the output folder {out}: "
                          f"the output is uploaded, the keys must stay with the client")
    check_new_keystore(Path(keystore))


def open_output(out, overwrite: bool = False, extend: bool = False, what: str = "--out", writes: str = "shards"):
    """The output folder of a run, a local path or a URL: ``shards.folder.OutputFolder`` (one
    policy for both; see there)."""
    from .shards.folder import open_output as _open

    return _open(out, overwrite=overwrite, extend=extend, what=what, writes=writes)


def _source_chunks(source: Source, split: str, batch_size: int, shape, learn: list):
    items = source.items(split)
    if items is not None:
        return chunks_of(items, split, shape=shape, learn=learn)
    return (Chunk(split, batch=b) for b in source.batches(split, batch_size))


def _encrypt_split(source, split, folder, eng, scheme, fmt, shard_size, batch_size, manifest, progress):
    count = 0
    images_in = 0
    skipped_before = len(source.skipped)
    decoded: dict = {}
    settings = source.decode
    shape = tuple(manifest["shape"]) if manifest["shape"] else (settings.shape if settings else None)
    shape_origin = manifest.get("_shape_origin")
    learn: list = [shape] if shape else []
    bar = tqdm(total=source.count(split), desc=f"encrypt {split}", unit="img", disable=not progress,
               leave=False)
    writer = worker = None
    try:
        for res in eng.map(_source_chunks(source, split, batch_size, shape, learn)):
            accept_skips(source, res)
            images_in += res.n_in - len(res.skipped)
            bar.update(res.n_in)
            for k, v in res.decoded.items():
                decoded[k] = decoded.get(k, 0) + v
            if shape is None and res.first is not None:
                shape, shape_origin = tuple(res.first[1]), res.first[0]
                learn[:] = [shape]
            odd = res.odd
            if odd is None and res.first is not None and tuple(res.first[1]) != shape:
                odd = res.first
            if odd is not None:
                raise _shape_error(odd, shape, shape_origin, settings)
            if res.images is None:
                continue
            if writer is None:
                if manifest["shape"] is None:
                    manifest["shape"] = checked_shape(scheme, shape)
                    manifest["_shape_origin"] = shape_origin
                writer = make_writer(fmt, folder, split, shape, shard_size,
                                     attrs={"classes": source.classes, "scheme": scheme.describe()})
                worker = WriterThread(writer).__enter__()
            worker.put(res.keys, res.images, res.labels)
            count += len(res.keys)
        if writer is None:
            raise PpdataError(f"split {split} of {source.name}: no readable images")
        shards = worker.finish()
    except BaseException as e:
        if worker is not None:
            worker.__exit__(type(e), e, None)
        raise
    finally:
        bar.close()
    skipped = source.skipped[skipped_before:]
    source.skip_report.flush()
    if skipped:
        log.warning("split %s: skipped %d unreadable image(s)", split, len(skipped))
    expected = source.count(split)
    if expected is not None and images_in + len(skipped) != expected:
        raise PpdataError(f"split {split} of {source.name}: read {images_in} images and skipped {len(skipped)}, "
                          f"but the source lists {expected}")
    info = {
        "count": count,
        "skipped": {"count": len(skipped), "files": [{"index": s.index, "path": s.path, "reason": s.reason}
                                                     for s in skipped[:1000]]},
        "shards": [s.to_json() for s in shards],
    }
    if decoded:
        info["decoded"] = decoded
    listing = getattr(source, "listing", None)
    if listing is not None:
        info["source_listing"] = listing(split)
    return info


def _shape_error(odd, shape, shape_origin, settings) -> PpdataError:
    """An image of another size than the split's: name it, the image that set the size, and what
    to pass."""
    origin, got = odd
    if shape_origin:
        ref = f"{shape_origin} is {shape[1]}x{shape[0]}"
    elif settings is not None and settings.shape is not None:
        ref = f"the --resize/--crop settings make {shape[1]}x{shape[0]}"
    else:
        ref = f"the other images are {shape[1]}x{shape[0]}"
    from .names import printable

    return PpdataError(f"image {printable(origin)} is {got[1]}x{got[0]} but {printable(ref)}; pass --resize HxW (or "
                       f"--resize S --crop HxW) to bring all images to one size")


def decrypt(directory: str | Path, keystore: str | Path, out: str | Path, *, fmt: str | None = None,
            overwrite: bool = False, batch_size: int = 1024, progress: bool = True, verify: bool = True) -> dict:
    """Decrypt a shard folder with its keystore into plain shards (``fmt`` webdataset/hdf5, default:
    as the input) or a PNG ImageFolder tree (``fmt="png"``: OUT/<split>/<class>/<key>.png, with a
    manifest listing every file). Every shard is checked as it is read (``verify``: sha256 too);
    the output's counts are what was written, checked against the input's manifest."""
    check_path_text(out, "output folder (--out)")
    manifest = read_manifest(directory)
    store = Keystore.load(check_path_text(keystore, "keystore (--keys)"))
    if manifest.get("scheme") is None:
        raise PpdataError(f"{directory}: the manifest records no scheme; nothing to decrypt")
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
    check_scheme_against_keystore(directory, manifest, scheme, store, keystore)
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
    result = new_manifest(fmt, source={"name": "decrypt", "parent": manifest.get("id")}, scheme=plain.describe(),
                          keys=None, shape=manifest["shape"], classes=manifest.get("classes", []),
                          options={"decrypted_from": manifest.get("scheme")})
    with OutputFolder(out, overwrite=overwrite) as folder:
        for sp in _splits_to_decrypt(manifest, directory):
            ss = ShardSet(directory, sp, manifest, verify=verify)
            writer = make_writer(fmt, folder, sp, ss.shape, (manifest.get("options") or {}).get("shard_size") or 10000,
                                 attrs={"classes": ss.classes, "scheme": plain.describe()})
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
              "source": {"name": "decrypt", "parent": manifest.get("id")}, "shape": manifest["shape"],
              "classes": classes, "splits": {}, "files": {}}
    with OutputFolder(out, overwrite=overwrite, writes="png") as folder:
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
                if sp not in made:
                    folder.mkdir(sp)
                    made.add(sp)
                for d in dirs:
                    folder.mkdir(d)
                    made.add(d)
                folder.claim(*rels)
                for rel, img in zip(rels, plain):
                    if rel in result["files"]:
                        raise PpdataError(f"{directory}: sample {rel.rsplit('/', 1)[1][:-4]} appears twice in split {sp}")
                    with folder.create(rel, temporary=False) as f:
                        Image.fromarray(img).save(f, format="PNG")
                        result["files"][rel] = f.tell()
                written += len(s)
            result["splits"][sp] = {"count": written}
        folder.write_manifest(result)
    return result
