"""The Ray engine: ``encrypt`` and ``augment`` as Ray Data tasks on a cluster, one shard per task.

``pip install 'ppdata[ray]'``; Ray is imported only here, only when this engine is used.

encrypt (``encrypt_ray``)
    The driver (the machine running ``ppdata encrypt --engine ray``) lists the source (a
    directory or an uncompressed ``.tar``, on a file system every node sees, or at a URL), cuts
    each split into runs of consecutive images, one run per shard, and hands them to Ray Data
    (``ray.data.from_items(...).map_batches(...)``, one row per shard). Each task reads its
    images itself (by path, tar offset or URL range), decodes and encrypts them with the same
    ``work.run_chunk`` as the local engine, and writes its shard into the output folder: a
    local (shared) path through ``<name>.part`` and a rename, a URL with a create-only upload.
    The driver owns the folder (lock, journal: every shard name is claimed before any task
    starts), collects each task's count, sha256, size and skips, checks every shard is there
    with its size, and writes the manifest last. Shard k of a split holds the outputs of source
    images ``k*m .. (k+1)*m - 1`` (``m = shard_size // expansion``): without skipped images the
    shards are byte-identical to the local engine's; with skips a shard holds fewer samples.
    Every key is addressed by (split, index), so each sample is the same as the local engine's.

augment (``augment_ray``)
    Stage 1: one task per input shard reads it whole and checks it (structure, counts, keys,
    labels, sha256). Stage 2: one task per output shard gathers the input records its samples
    come from (by offset: ppdata's fixed-size records) and writes the expanded shard. The order
    is the uniform permutation of all N x V samples that the local engine uses when the split
    fits in memory (seeded: the same seed gives the same shards, on either engine).

The secret of the key stream travels to the cluster's workers inside the tasks (in memory, as
Ray ships function arguments; ppdata writes it nowhere): run the Ray engine only on a cluster
you trust as you trust the client machine. The keystore stays on the driver.

``shard_urls(folder, split)`` and ``read_webdataset(folder, split)`` hand Ray Data the shard
files a manifest lists (never ``manifest.json`` itself).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import time
from pathlib import Path

import numpy as np

from ..errors import PpdataError
from ..remote import is_url, join, read_ref
from ..shards.tar import BLOCK, parse_records, record_size, tar_records
from ..sources.base import Ref
from .work import Chunk, Work, checked_shape, run_chunk

log = logging.getLogger("ppdata")

_END = 2 * BLOCK
SUB_CHUNK = 256


# ---------------------------------------------------------------------------------------------
# Ray itself


def _ray():
    from ..extras import require

    require("ray", "--engine ray", ("ray", "ray.data"))
    import ray
    import ray.data

    return ray


class RaySession:
    """``ray.init`` (joining ``address``, or ``RAY_ADDRESS``, or starting a local Ray with
    ``num_cpus``) unless Ray is already initialised; shut down on exit only if started here."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        self.address, self.num_cpus = address, num_cpus
        self.started = False

    def __enter__(self):
        ray = _ray()
        if not ray.is_initialized():
            kw = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
            address = self.address or os.environ.get("RAY_ADDRESS")
            try:
                if address:
                    ray.init(address=address, **kw)
                else:
                    ray.init(num_cpus=self.num_cpus, **kw)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001  (Ray raises many kinds, with long tracebacks)
                from ..names import printable

                where = f"the Ray cluster at {address}" if address else "a local Ray"
                raise PpdataError(f"cannot start {where}: {printable(_cause(e))[:300]}") from None
            self.started = True
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.enable_auto_log_stats = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        return ray

    def __exit__(self, *exc):
        if self.started:
            import ray

            ray.shutdown()


def _cause(e: BaseException) -> str:
    """The message of the error a Ray task raised (ppdata's own, when it is one)."""
    import re

    seen = set()
    stack = [e]
    while stack:
        c = stack.pop()
        if c is None or id(c) in seen:
            continue
        seen.add(id(c))
        if isinstance(c, PpdataError):
            return str(c).strip().splitlines()[-1]
        stack += [getattr(c, "cause", None), c.__cause__, c.__context__]
    found = re.findall(r"PpdataError: (.+)", str(e))
    if found:
        return found[-1].strip()
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    errs = [ln for ln in lines if re.match(r"^\w+(Error|Exception): ", ln.strip())]
    return (errs or lines or [type(e).__name__])[-1].strip()


def _run_tasks(ray, rows: list[dict], fn, fn_kwargs: dict, workers: int | None, what: str, bar=None):
    """``fn`` over ``rows`` (one row per task) with Ray Data; the result rows, as they complete."""
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    kw = {"compute": ray.data.TaskPoolStrategy(size=workers)} if workers else {}
    ds = ds.map_batches(fn, batch_size=1, batch_format="numpy", fn_kwargs=fn_kwargs, num_cpus=1, **kw)
    out = []
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"ray\.")
            for row in ds.iter_rows():
                out.append(row)
                if bar is not None:
                    bar.update(int(row.get("n", 0)))
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001  (Ray wraps the task's error)
        if isinstance(e, PpdataError):
            raise
        raise PpdataError(f"a Ray worker failed while {what}: {_cause(e)}; nothing was marked complete") from None
    return out


# ---------------------------------------------------------------------------------------------
# writing one shard from a task


class _ShardFile:
    """One tar shard written by a task: into a local (shared) folder as a new ``<name>.part``
    (``shards.store.LocalStore``: never through a link) renamed when complete, or staged locally
    and uploaded to a URL with a create-only put. Hashes as it writes."""

    def __init__(self, out: str, name: str):
        import tempfile

        self.out, self.name = out, name
        self.url = is_url(out)
        self.store = None
        if self.url:
            fd, self.tmp = tempfile.mkstemp(prefix="ppdata-shard-", suffix=".tar")
            self.f = os.fdopen(fd, "wb")
        else:
            from ..shards.store import LocalStore

            self.store = LocalStore(out, create_missing=False)
            self.tmp = name + ".part"
            entry = self.store.entry(self.tmp)
            if entry is not None and entry.kind == "file":  # a retried task: its own earlier attempt
                self.store.remove(self.tmp)
            self.f = self.store.create(self.tmp)
        self.h = hashlib.sha256()
        self.bytes = 0
        self.count = 0

    def write(self, recs: np.ndarray) -> None:
        self.f.write(recs.data if recs.flags.c_contiguous else recs.tobytes())
        self.h.update(recs)
        self.bytes += recs.nbytes
        self.count += len(recs)

    def finish(self) -> dict:
        end = bytes(_END)
        self.f.write(end)
        self.h.update(end)
        self.bytes += len(end)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        sha = self.h.hexdigest()
        if self.url:
            _upload(self.tmp, join(self.out, self.name), sha)
            os.unlink(self.tmp)
        else:
            self.store.finish(self.tmp, self.name)
            self.store.close()
        return {"name": self.name, "count": self.count, "sha256": sha, "bytes": self.bytes}

    def abort(self) -> None:
        try:
            self.f.close()
        finally:
            if self.url:
                if os.path.exists(self.tmp):
                    os.unlink(self.tmp)
            else:
                try:
                    self.store.remove(self.tmp)
                finally:
                    self.store.close()


def _upload(local: str, url: str, sha: str) -> None:
    """Create-only upload; a retried task that finds its own finished object (same sha256) is done."""
    import shutil

    from ..remote import filesystem

    fs, path = filesystem(url)
    try:
        with open(local, "rb") as f, fs.open(path, "xb") as out:
            shutil.copyfileobj(f, out, 8 << 20)
    except FileExistsError:
        h = hashlib.sha256()
        with fs.open(path, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
        if h.hexdigest() != sha:
            raise PpdataError(f"{url} exists with other content; another writer?") from None


# ---------------------------------------------------------------------------------------------
# encrypt


def _encrypt_task(batch: dict, work: Work, out: str, shape: list, strict: bool) -> dict:
    """Ray task: decode and encrypt one shard's images, write the shard; one result row."""
    split = str(batch["split"][0])
    name = str(batch["name"][0])
    items = pickle.loads(bytes(batch["items"][0]))
    shard = _ShardFile(out, name)
    skipped, decoded, n_in = [], {}, 0
    try:
        for a in range(0, len(items), SUB_CHUNK):
            res = run_chunk(work, Chunk(split, items=items[a:a + SUB_CHUNK], shape=tuple(shape)))
            n_in += res.n_in
            for index, path, origin, reason in res.skipped:
                if strict:
                    raise PpdataError(f"cannot read image {origin}: {reason}")
                skipped.append({"index": int(index), "path": path, "reason": reason})
            for k, v in res.decoded.items():
                decoded[k] = decoded.get(k, 0) + v
            odd = res.odd or (res.first if res.first and tuple(res.first[1]) != tuple(shape) else None)
            if odd is not None:
                raise PpdataError(f"image {odd[0]} is {odd[1][1]}x{odd[1][0]} but the split's images are "
                                  f"{shape[1]}x{shape[0]}; pass --resize HxW (or --resize S --crop HxW)")
            if res.images is not None and len(res.keys):
                shard.write(tar_records(res.keys, res.images, res.labels))
        info = shard.finish()
    except BaseException:
        shard.abort()
        raise
    return {"split": np.array([split]), "shard": batch["shard"], "info": np.array([json.dumps(info)]),
            "skipped": np.array([json.dumps(skipped)]), "decoded": np.array([json.dumps(decoded)]),
            "n": np.array([n_in])}


def _first_shape(source, split: str, work: Work) -> tuple:
    """The split's image shape: from the settings, or by decoding its first readable image here."""
    if source.decode is not None and source.decode.shape is not None:
        return tuple(source.decode.shape)
    batch = []
    for it in source.items(split):
        batch.append(it)
        res = run_chunk(Work(decode=work.decode), Chunk(split, items=batch[-1:]))
        if res.first is not None:
            return tuple(res.first[1])
    raise PpdataError(f"split {split} of {source.name}: no readable images")


def _expansion(manifest: dict, split: str) -> int:
    aug = manifest.get("augment")
    if aug and aug.get("split", "train") == split:
        return int(aug.get("factor") or len(aug.get("variants") or [1]))
    return 1


def encrypt_ray(source, out, *, splits, scheme, keys, fmt, shard_size, overwrite, keystore, seeded, expand,
                manifest, progress, workers, address) -> dict:
    """``pipeline.encrypt`` with the Ray engine (see module docstring)."""
    from tqdm import tqdm

    from ..keys import Keystore
    from ..names import shard_name
    from ..pipeline import open_output, seal_keys
    from ..sources.base import identity_expand

    _ray()  # a missing Ray is named before anything else
    if fmt != "webdataset":
        raise PpdataError("--engine ray writes WebDataset tar shards (one per task); HDF5 is one file per split: "
                          "use the local engine for --format hdf5")
    if source.decode is None or source.items(splits[0]) is None:
        raise PpdataError(f"--engine ray reads image files (folder sources); {source.name} is read into memory "
                          f"on this machine: use the local engine")
    parts = getattr(source, "parts", [source])
    for p in parts:
        if getattr(p, "compressed", None):
            raise PpdataError(f"{p.location} is a compressed archive, one stream that only one process can read; "
                              f"for --engine ray give a directory or an uncompressed .tar (e.g. gunzip it first)")
    from ..sources.decode import resolve_decoder

    settings = source.decode.with_decoder(resolve_decoder(source.decode, sum(source.count(sp) or 0 for sp in splits)))
    work = Work(decode=settings, scheme=scheme.describe() if scheme.encrypted else None,
                secret=keys.secret if keys is not None else None,
                mode=keys.mode if keys is not None else "independent",
                derivation=keys.derivation if keys is not None else 2,
                expand=None if expand is identity_expand else expand)
    remote = is_url(str(out))
    out_s = str(out)
    strict = bool(getattr(source, "strict", False))
    t0 = time.time()
    with RaySession(address, workers) as ray, open_output(out, overwrite) as folder:
        totals_decoded: dict = {}
        for sp in splits:
            shape = _first_shape(source, sp, work)
            if manifest["shape"] is None:
                manifest["shape"] = checked_shape(scheme, shape)
            elif tuple(manifest["shape"]) != tuple(shape):
                raise PpdataError(f"split {sp} has images of shape {shape}, others {tuple(manifest['shape'])}")
            items = list(source.items(sp))
            per = max(1, shard_size // _expansion(manifest, sp))
            rows = [{"split": sp, "shard": k, "name": shard_name(sp, k), "items": pickle.dumps(items[a:a + per])}
                    for k, a in enumerate(range(0, len(items), per))]
            folder.claim_files(*[r["name"] for r in rows])
            bar = tqdm(total=len(items), desc=f"encrypt {sp} (ray)", unit="img", disable=not progress, leave=False)
            try:
                results = _run_tasks(ray, rows, _encrypt_task,
                                     {"work": work, "out": out_s if remote else str(folder.path),
                                      "shape": list(shape), "strict": strict},
                                     workers, f"encrypting split {sp}", bar)
            finally:
                bar.close()
            manifest["splits"][sp] = _collect(sp, rows, results, len(items), folder, remote, source, totals_decoded)
        manifest["decode"]["decoder_requested"] = source.decode.decoder
        manifest["decode"]["decoder"] = "torchvision" if totals_decoded.get("torchvision") else "pillow"
        manifest["engine"] = {"name": "ray", "workers": workers, "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
                              "seconds": round(time.time() - t0, 1)}
        seal_keys(manifest, scheme, keys)
        if keystore is not None:
            Keystore(mode=keys.mode, secret=keys.secret, seeded=seeded, scheme=scheme.describe(),
                     dataset=manifest["id"]).save(keystore)
        folder.write_manifest(manifest)
    return manifest


def _collect(sp, rows, results, n_items, folder, remote, source, totals_decoded) -> dict:
    """The split's manifest entry from the tasks' results, after checking every shard is there."""
    by_shard = {int(r["shard"]): r for r in results}
    if sorted(by_shard) != list(range(len(rows))):
        raise PpdataError(f"split {sp}: {len(by_shard)} of {len(rows)} shards reported back; nothing was marked complete")
    shards, skipped, n_in = [], [], 0
    for k in range(len(rows)):
        r = by_shard[k]
        info = json.loads(str(r["info"]))
        shards.append(info)
        skipped.extend(json.loads(str(r["skipped"])))
        for key, v in json.loads(str(r["decoded"])).items():
            totals_decoded[key] = totals_decoded.get(key, 0) + v
        n_in += int(r["n"])
        if not remote:
            e = folder.entry(info["name"])
            if e is None or e.kind != "file" or e.size != info["bytes"]:
                raise PpdataError(f"shard {info['name']} was written by a Ray worker but is not in {folder.path} with "
                                  f"its size: on a cluster --out must be a folder every node shares, or a URL")
    if n_in != n_items:
        raise PpdataError(f"split {sp}: the tasks read {n_in} images, the source lists {n_items}")
    skipped.sort(key=lambda s: s["index"])
    for s in skipped:
        source.skip_report.add(s["path"], s["reason"])
    source.skip_report.flush()
    info = {"count": sum(s["count"] for s in shards),
            "skipped": {"count": len(skipped), "files": skipped[:1000]},
            "shards": shards}
    decoded = {}
    for r in results:
        for key, v in json.loads(str(r["decoded"])).items():
            decoded[key] = decoded.get(key, 0) + v
    if decoded:
        info["decoded"] = decoded
    if hasattr(source, "listing"):
        info["source_listing"] = source.listing(sp)
    return info


# ---------------------------------------------------------------------------------------------
# augment


def _shard_ref(folder: str, name: str, offset: int | None = None, size: int | None = None) -> Ref:
    return Ref(join(folder, name), offset, size)


def _verify_task(batch: dict, folder: str, shape: list, n_classes: int | None, verify: bool = True) -> dict:
    """Ray task: read one shard whole, in pieces, and check it as ``shards.tar.read_tar`` does
    (size, record layout, headers, keys, labels, end blocks; ``verify``: sha256)."""
    from ..remote import size_of

    name = str(batch["name"][0])
    count, size, sha = int(batch["count"][0]), int(batch["bytes"][0]), str(batch["sha256"][0])
    where = join(folder, name)
    actual = size_of(where) if is_url(where) else os.path.getsize(where)
    if size < 0:  # the manifest records no size (another writer's manifest): the layout decides
        size = actual
    if actual != size:
        raise PpdataError(f"shard {where}: is {actual} bytes, the manifest says {size} (truncated, extended or replaced)")
    rec = record_size(tuple(shape))
    if size != count * rec + _END:
        raise PpdataError(f"shard {where}: is not {count} records of ppdata's layout for {tuple(shape)} images "
                          f"(--engine ray reads shards written by ppdata)")
    h = hashlib.sha256()
    step = max(1, (64 << 20) // rec)
    for a in range(0, count, step):
        k = min(step, count - a)
        data = read_ref(_shard_ref(folder, name, a * rec, k * rec))
        if verify:
            h.update(data)
        parse_records(np.frombuffer(data, np.uint8).reshape(k, rec), tuple(shape), where, a, n_classes)
    tail = read_ref(_shard_ref(folder, name, count * rec, _END))
    if tail != bytes(_END):
        raise PpdataError(f"shard {where}: does not end with the two zero blocks of a tar archive")
    h.update(tail)
    if verify and h.hexdigest() != sha:
        raise PpdataError(f"shard {where}: sha256 differs from the manifest (file changed or damaged)")
    return {"name": batch["name"], "n": np.array([count])}


def _gather(folder: str, shards: list[dict], starts: np.ndarray, rec: int, positions: np.ndarray) -> np.ndarray:
    """Records at ``positions`` (stored order of the split) as (len, rec) uint8, read by offset."""
    out = np.empty((len(positions), rec), np.uint8)
    which = np.searchsorted(starts, positions, side="right") - 1
    for i in np.unique(which):
        rows = np.flatnonzero(which == i)
        local = positions[rows] - starts[i]
        order = np.argsort(local)
        # read contiguous runs of records with one request each
        run_start = 0
        srt = local[order]
        breaks = np.flatnonzero(np.diff(srt) != 1) + 1
        for b_end in [*breaks.tolist(), len(srt)]:
            first, last = int(srt[run_start]), int(srt[b_end - 1])
            data = read_ref(_shard_ref(folder, shards[i]["name"], first * rec, (last - first + 1) * rec))
            block = np.frombuffer(data, np.uint8).reshape(-1, rec)
            out[rows[order[run_start:b_end]]] = block[srt[run_start:b_end] - first]
            run_start = b_end
    return out


def _augment_task(batch: dict, folder: str, out: str, shards: list, shape: list, n_classes, variants, fill: int,
                  write_batch: int) -> dict:
    """Ray task: one output shard of the expansion (its samples' permutation slice in the row)."""
    from ..augment import _shift, hflip
    from ..variants import Variant  # noqa: F401  (unpickled objects)

    name = str(batch["name"][0])
    perm = np.frombuffer(bytes(batch["perm"][0]), np.int64)
    shape = tuple(shape)
    rec = record_size(shape)
    starts = np.concatenate([[0], np.cumsum([s["count"] for s in shards])]).astype(np.int64)
    V = len(variants)
    suffixes = np.array([("_" + v.name).encode() for v in variants])
    shard = _ShardFile(out, name)
    try:
        for a in range(0, len(perm), write_batch):
            idx, var = np.divmod(perm[a:a + write_batch], V)
            need, inverse = np.unique(idx, return_inverse=True)
            s = parse_records(_gather(folder, shards, starts, rec, need), shape, f"{folder} (input)", 0, n_classes)
            images, labels = s.images[inverse], s.labels[inverse]
            keys = np.char.encode(s.keys.astype(str), "ascii")[inverse]
            out_images = np.empty_like(images)
            for j, v in enumerate(variants):
                rows = np.flatnonzero(var == j)
                if len(rows):
                    src = images[rows]
                    if v.flip:
                        src = hflip(src)
                    out_images[rows] = _shift(src, v.dx, v.dy, fill, np.empty_like(src))
            names = np.char.add(keys, suffixes[var])
            shard.write(tar_records(names, out_images, labels))
        info = shard.finish()
    except BaseException:
        shard.abort()
        raise
    return {"shard": batch["shard"], "info": np.array([json.dumps(info)]), "n": np.array([len(perm)])}


def augment_ray(directory, out, *, variants, fill, seed, split, shard_size, overwrite, progress, verify, workers,
                address, write_batch: int = 4096) -> dict:
    """``augment.augment_folder`` with the Ray engine (see module docstring): the same expansion,
    the order of the local engine's single-bucket case, every input shard checked whole first."""
    import copy

    from tqdm import tqdm

    from ..augment import PER_PIXEL_SCHEMES
    from ..names import check_split, shard_name
    from ..pipeline import open_output
    from ..shards.manifest import augment_entry, new_manifest
    from ..variants import check_variants, describe, variant_set

    _ray()
    src = str(directory)
    parent, parent_sha = read_manifest_at(src)
    in_place = out is None
    variants = list(variants) if variants is not None else variant_set()
    V = len(variants)
    check_split(split)
    if split not in parent["splits"]:
        raise PpdataError(f"split {split!r} not in {src} (available: {', '.join(parent['splits']) or 'none'})")
    if parent["format"] != "webdataset":
        raise PpdataError("--engine ray expands WebDataset shard folders; use the local engine for HDF5")
    if augment_entry(parent, split):
        raise PpdataError(f"split {split} of {src} is already expanded; expand its parent instead")
    out_split = check_split(f"{split}x{V}", "expanded split") if in_place else split
    if in_place and out_split in parent["splits"] and not overwrite:
        raise PpdataError(f"{src} already holds split {out_split} (an earlier expansion); pass --overwrite to replace it")
    if not in_place and (str(out).rstrip("/") == src.rstrip("/")):
        raise PpdataError(f"--out {out} must not be the input folder {src}")
    shape = tuple(parent["shape"])
    try:
        check_variants(variants, shape)
    except ValueError as e:
        raise PpdataError(str(e)) from None
    if not verify:
        log.warning("--no-verify: the input shards' sha256 is not checked (structure, counts and keys still are)")
    scheme_name = (parent.get("scheme") or {}).get("name")
    info_in = parent["splits"][split]
    n = int(info_in["count"])
    shard_size = shard_size or int((parent.get("options") or {}).get("shard_size") or 10000)
    n_classes = len(parent.get("classes") or []) or None
    entry = {**describe(variants, fill, "encrypted"), "split": split, "seed": seed,
             "per_pixel_scheme": scheme_name in PER_PIXEL_SCHEMES,
             "order": {"method": "global permutation", "buckets": 1, "uniform": True},
             "parent": {"id": parent.get("id"), "manifest_sha256": parent_sha, "count": n,
                        "source": parent.get("source"), "split": split}}
    perm = np.random.default_rng([seed, 1, 0]).permutation(n * V).astype(np.int64)
    t0 = time.time()
    with RaySession(address, workers) as ray:
        # stage 1: every input shard read whole and checked (the expanded split, and what is carried over)
        checked = [sp for sp in parent["splits"] if sp == split or not in_place]
        rows = [{"name": s["name"], "count": s["count"], "bytes": -1 if s.get("bytes") is None else s["bytes"],
                 "sha256": s.get("sha256") or ""}
                for sp in checked for s in parent["splits"][sp]["shards"]]
        bar = tqdm(total=sum(r["count"] for r in rows), desc="check input (ray)", unit="img",
                   disable=not progress, leave=False)
        try:
            _run_tasks(ray, rows, _verify_task, {"folder": src, "shape": list(shape), "n_classes": n_classes,
                                                 "verify": verify}, workers, "checking the input shards", bar)
        finally:
            bar.close()
        target = src if in_place else str(out)
        with open_output(target, overwrite=overwrite and not in_place, extend=in_place) as folder:
            remote = is_url(target)
            manifest = copy.deepcopy(parent) if in_place else new_manifest(
                parent["format"], source={"name": "augment", "parent": parent.get("id")}, scheme=parent.get("scheme"),
                keys=parent.get("keys"), shape=shape, classes=parent.get("classes", []),
                options={**(parent.get("options") or {}), "shard_size": shard_size})
            if not in_place and parent.get("scheme_check"):
                manifest["scheme_check"] = parent["scheme_check"]
            if in_place and out_split in manifest["splits"]:  # --overwrite: unlist the earlier expansion first
                old = manifest["splits"].pop(out_split)
                folder.write_manifest(manifest)
                folder.complete = False
                for s in old["shards"]:
                    folder.remove_listed(s["name"])
            if not in_place:
                entry["carried"] = _carry(src, parent, split, folder, remote)
            rows = [{"shard": k, "name": shard_name(out_split, k), "perm": perm[a:a + shard_size].tobytes()}
                    for k, a in enumerate(range(0, n * V, shard_size))]
            folder.claim_files(*[r["name"] for r in rows])
            bar = tqdm(total=n * V, desc=f"augment {split} (ray)", unit="img", disable=not progress, leave=False)
            try:
                results = _run_tasks(ray, rows, _augment_task,
                                     {"folder": src, "out": target if remote else str(folder.path),
                                      "shards": info_in["shards"], "shape": list(shape), "n_classes": n_classes,
                                      "variants": variants, "fill": fill, "write_batch": write_batch},
                                     workers, f"expanding split {split}", bar)
            finally:
                bar.close()
            by = {int(r["shard"]): json.loads(str(r["info"])) for r in results}
            if sorted(by) != list(range(len(rows))):
                raise PpdataError(f"{len(by)} of {len(rows)} shards reported back; nothing was marked complete")
            shards = [by[k] for k in range(len(rows))]
            if not remote:
                for s in shards:
                    e = folder.entry(s["name"])
                    if e is None or e.kind != "file" or e.size != s["bytes"]:
                        raise PpdataError(f"shard {s['name']} is not in {folder.path} with its size: on a cluster the "
                                          f"folder must be shared by every node, or a URL")
            if sum(s["count"] for s in shards) != n * V:
                raise PpdataError(f"wrote {sum(s['count'] for s in shards)} samples, expected {n * V}")
            info = {"count": n * V, "skipped": {"count": 0, "files": []}, "shards": shards}
            if in_place:
                info["augment"] = entry
                manifest["splits"][out_split] = info
            else:
                manifest["augment"] = entry
                manifest["splits"] = {sp: (info if sp == split else v) for sp, v in parent["splits"].items()}
            manifest["engine"] = {"name": "ray", "workers": workers, "seconds": round(time.time() - t0, 1)}
            folder.write_manifest(manifest)
    return manifest


def _carry(src: str, parent: dict, split: str, folder, remote: bool) -> dict:
    """Carry the other splits' shards (checked in stage 1) into the new folder: hard links on one
    local file system, else copies."""
    carried = {}
    for sp, info in parent["splits"].items():
        if sp == split:
            continue
        for s in info["shards"]:
            source = _shard_ref(src, s["name"]).path
            carried[sp] = folder.link_in(source if is_url(src) else Path(source), s["name"], link=not is_url(src))
    return carried


def read_manifest_at(folder: str) -> tuple[dict, str]:
    """A shard folder's checked manifest and its sha256, from a local folder or a URL."""
    from ..shards.manifest import MAX_MANIFEST_BYTES, parse_manifest, read_manifest

    if not is_url(folder):
        from ..fileio import file_sha256

        return read_manifest(folder), file_sha256(Path(folder) / "manifest.json")
    from ..remote import filesystem

    url = join(folder, "manifest.json")
    fs, path = filesystem(url)
    try:
        with fs.open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise PpdataError(f"{folder} has no manifest.json; is it a complete ppdata shard folder?") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise PpdataError(f"{url} is larger than {MAX_MANIFEST_BYTES >> 20} MiB; not a ppdata manifest")
    return parse_manifest(raw, url), hashlib.sha256(raw).hexdigest()


# ---------------------------------------------------------------------------------------------
# reading shards with Ray Data


def shard_urls(folder: str | os.PathLike, split: str) -> list[str]:
    """The shard files of ``split`` that the folder's (checked) manifest lists, as paths or URLs:
    what to give ``ray.data.read_webdataset`` (a folder path would make it read manifest.json
    as a tar)."""
    from ..names import inside

    m, _ = read_manifest_at(str(folder))
    if split not in m["splits"]:
        raise PpdataError(f"split {split!r} not in {folder} (available: {', '.join(m['splits'])})")
    if m["format"] != "webdataset":
        raise PpdataError(f"{folder} holds HDF5, not WebDataset shards")
    names = [s["name"] for s in m["splits"][split]["shards"]]
    if is_url(str(folder)):
        return [join(str(folder), n) for n in names]
    return [str(inside(folder, n)) for n in names]


def read_webdataset(folder: str | os.PathLike, split: str, **kwargs):
    """``ray.data.read_webdataset`` over exactly the shards of ``split`` (see ``shard_urls``).
    The shards are not hashed here; check them first with ``ppdata info DIR --verify``."""
    ray = _ray()
    return ray.data.read_webdataset(shard_urls(folder, split), **kwargs)
