"""The ``ppdata`` command: a thin Click layer over the library.

Exit status: 0 success, 1 runtime failure (one-line ``Error:`` message), 2 usage error.
"""
from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import click

from . import __version__
from .errors import PpdataError
from .extras import MissingExtra

MAX_PIXELS = 89_478_485  # = ppdata.sources.MAX_PIXELS (kept here so --help needs no import)
MAX_BYTES = 512 << 20  # = ppdata.sources.decode.MAX_BYTES
MAX_SIDE = 16384

log = logging.getLogger("ppdata")


class _Printable(logging.Formatter):
    """Every line ppdata logs with control characters escaped (names from archives and manifests
    may hold terminal escape sequences)."""

    def format(self, record) -> str:
        from .names import printable

        return "\n".join(printable(line) for line in super().format(record).split("\n"))


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Printable("%(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.ERROR if quiet else logging.INFO)
    log.propagate = False


def _errors(f):
    """Turn library errors into one-line messages with exit status 1."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except (PpdataError, MissingExtra) as e:
            from .names import printable

            raise click.ClickException(printable(str(e))) from None
        except KeyboardInterrupt:
            click.echo("Interrupted; no output was marked complete. Run the command again.", err=True)
            sys.exit(130)
        except OSError as e:
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            raise click.ClickException(f"{e.strerror or e}{where}") from None

    return wrapper


def _parse_size(value: str | None, option: str = "--resize", side: bool = False):
    """``HxW`` -> (H, W); with ``side``, also a single ``S`` (the shorter side) -> S."""
    if value is None:
        return None
    try:
        parts = [int(v) for v in value.lower().split("x")]
        if len(parts) not in ((1, 2) if side else (2,)) or min(parts) < 1:
            raise ValueError
    except ValueError:
        what = "HxW (e.g. 224x224) or S (the shorter side, e.g. 256)" if side else "HxW (e.g. 224x224)"
        raise click.BadParameter(f"{value!r} is not {what}", param_hint=option) from None
    if max(parts) > MAX_SIDE:
        raise click.BadParameter(f"{value!r}: each side must be at most {MAX_SIDE} pixels", param_hint=option)
    return parts[0] if len(parts) == 1 else tuple(parts)


def _check_split_option(split: str | None) -> None:
    from .names import check_split

    if split not in (None, "all"):
        try:
            check_split(split, "--split")
        except PpdataError as e:
            raise click.BadParameter(str(e), param_hint="--split") from None


class _Ctx:
    def __init__(self, quiet: bool):
        self.quiet = quiet


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="ppdata")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or notes on stderr.")
@click.option("--timeout", type=click.FloatRange(min=0.1), metavar="SECONDS",
              help="Read timeout of every request to a URL (default 60; connecting: at most 10).")
@click.pass_context
def cli(ctx, quiet, timeout):
    """Privacy-preserving image datasets: encrypt each image under its own key, shard, expand,
    train and attack.

    \b
    Example (offline, on the embedded sample):
      ppdata encrypt sample --cs --out shards/
      ppdata info shards/ --verify
      ppdata preview shards/ -o grid.png --plain sample
    """
    ctx.obj = _Ctx(quiet)
    _setup_logging(quiet)
    if timeout is not None:  # through the environment: worker processes and Ray workers read it too
        import os

        os.environ["PPDATA_TIMEOUT"] = repr(float(timeout))


# ---------------------------------------------------------------------------------------------
# encrypt


@cli.command()
@click.argument("source", type=click.Choice(["cifar10", "cifar100", "stl10", "folder", "sample"]))
@click.argument("path", nargs=-1)
@click.option("--out", "-o", default="shards", show_default=True, type=click.Path(file_okay=False),
              help="Output shard folder.")
@click.option("--split", default="all", show_default=True, help="train, test, ... or all.")
@click.option("--keys", "key_mode", type=click.Choice(["independent", "same"]), default="independent",
              show_default=True, help="A fresh key per image, or one key (from --key-file) for all.")
@click.option("--key-file", type=click.Path(dir_okay=False),
              help="Key file for --keys same (created there if absent). Keep it away from the server.")
@click.option("--keep-keys", type=click.Path(dir_okay=False),
              help="Keep the secret of independent keys in this client-side keystore (mode 0600). "
                   "Without it the keys are thrown away and nobody can decrypt.")
@click.option("--seed", type=int, help="Reproducible keys FOR EXPERIMENTS ONLY: whoever knows the seed can "
                                       "decrypt; the manifest says so.")
@click.option("--cs/--no-cs", default=None,
              help="Colour shuffle: per pixel for pixel/icip (default off: NP only), per block for etc "
                   "(default on).")
@click.option("--plain", is_flag=True, help="Write the same layout unencrypted (baselines, plain-Q tests).")
@click.option("--scheme", default="pixel", show_default=True,
              help="Encryption scheme: pixel (the paper's), or the compared etc, le, icip, chaos "
                   "(see docs/schemes.md).")
@click.option("--block-size", type=click.IntRange(min=1),
              help="Block size of etc and le (default 4); must divide the image height and width.")
@click.option("--format", "fmt", type=click.Choice(["webdataset", "hdf5"]), default="webdataset",
              show_default=True)
@click.option("--shard-size", type=click.IntRange(min=1), default=10000, show_default=True,
              help="Samples per tar shard.")
@click.option("--resize", metavar="HxW|S",
              help="HxW: squash every image to HxW (Lanczos). S: shorter side to S, aspect kept (bilinear; "
                   "torchvision's Resize(S)). For folder sources with mixed sizes.")
@click.option("--crop", metavar="HxW", help="Centre crop to HxW after --resize (torchvision's CenterCrop).")
@click.option("--interpolation", type=click.Choice(["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]),
              help="Resampling of --resize (default: lanczos for HxW, bilinear for S).")
@click.option("--decoder", type=click.Choice(["auto", "pillow", "torchvision"]), default="auto", show_default=True,
              help="JPEG decoder: torchvision.io (libjpeg-turbo) for plain JPEGs where it gives Pillow's pixels "
                   "(checked on each worker's first images), Pillow for the rest; auto: torchvision for runs of "
                   "100,000 images or more (its import costs seconds of CPU; see docs/scale.md), else Pillow.")
@click.option("--workers", type=click.IntRange(min=1), help="Processes that decode and encrypt (default: all cores; "
                                                            "with --engine ray: Ray tasks at once).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: worker processes on this machine; ray: Ray Data tasks on a cluster "
                   "(pip install 'ppdata[ray]'; see docs/scale.md).")
@click.option("--ray-address", metavar="ADDR", help="The Ray cluster to join (default: RAY_ADDRESS, else a local Ray).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=MAX_PIXELS, show_default=True,
              help="Skip (and count) images whose header announces more pixels than this (decompression bombs), "
                   "or that --resize would make larger than this.")
@click.option("--max-bytes", type=click.IntRange(min=1), default=MAX_BYTES, show_default=True,
              help="Skip (and count) image files larger than this many bytes.")
@click.option("--root", default="data", show_default=True, help="Where torchvision datasets live.")
@click.option("--download/--no-download", default=True, show_default=True,
              help="Let torchvision download the dataset into --root when it is not there.")
@click.option("--strict", is_flag=True, help="Abort on the first unreadable image instead of skipping it.")
@click.option("--overwrite", is_flag=True, help="Replace ppdata's files in a non-empty --out.")
@click.option("--batch-size", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--augment", "augment_spec", metavar="SPEC",
              help="Augment the train split in the plain domain before encryption, Enc(f_d(T)), every copy "
                   "under its own key: flip (x2), shift (x4: +-4, +-4), flip,shift (x8); shift=N, fill=V.")
@click.pass_obj
@_errors
def encrypt(obj, source, path, out, split, key_mode, key_file, keep_keys, seed, cs, plain, scheme, block_size,
            fmt, shard_size, resize, crop, interpolation, decoder, workers, engine, ray_address, max_pixels, max_bytes,
            root, download, strict, overwrite, batch_size, augment_spec):
    """Encrypt SOURCE into sharded archives, every image under its own key by default.

    SOURCE is cifar10, cifar100, stl10 (torchvision, --root/--download), folder PATH... (an
    ImageFolder directory or .tar/.tar.gz archive of one, local or s3://, gs://, https://;
    several are joined, one split each) or sample (embedded, offline). --out may be a local
    folder or s3:// / gs://; the keystore is always a local file.
    Sample keys are <split>_<index:06d> in source order.

    \b
    Examples:
      ppdata encrypt cifar10 --keys independent --cs            # writes shards/
      ppdata encrypt folder photos.tar.gz --split test --cs --out v/ --keep-keys ~/keys/v.json
      ppdata encrypt folder imagenet/ --resize 256 --crop 224x224 --cs --out s3://bucket/in224/
      ppdata encrypt folder s3://bucket/photos/ --resize 256 --crop 224x224 --engine ray --out s3://bucket/v/
      ppdata encrypt folder cifar10-jpeg/train.tar.gz cifar10-jpeg/test.tar.gz --cs --out s/
      ppdata encrypt sample --keys same --key-file ~/keys/k.json --out same/
      ppdata encrypt sample --plain --out plain/
      ppdata encrypt sample --scheme etc --block-size 4 --out etc/ --keep-keys ~/keys/etc.json
      ppdata encrypt sample --cs --augment flip,shift --out x8/ --keep-keys ~/keys/x8.json
    """
    from .cipher import get_scheme
    from .keys import Keystore, KeyStream, is_inside, new_secret, secret_from_seed
    from .pipeline import encrypt as run
    from .sources import open_source

    size = _parse_size(resize, side=True)
    crop_size = _parse_size(crop, "--crop")
    _check_split_option(split)
    if keep_keys and not plain:  # before any work: a keystore is never replaced (a dangling link included)
        from .pipeline import check_keystore_target

        check_keystore_target(keep_keys, out)
    if plain:
        for name, v in (("--cs", cs), ("--key-file", key_file), ("--keep-keys", keep_keys), ("--seed", seed is not None),
                        ("--block-size", block_size)):
            if v:
                raise click.UsageError(f"{name} makes no sense with --plain")
        sch = get_scheme("plain")
        stream, seeded = None, False
    else:
        sch = _make_scheme(scheme, cs=cs, block_size=block_size)
        if scheme == "icip" and key_mode == "independent":
            log.info("icip is the common-key method of the ICIP 2019 paper; with --keys independent it is "
                     "the pixel transform under per-image keys")
        seeded = seed is not None
        if key_mode == "same":
            if not key_file:
                raise click.UsageError("--keys same needs --key-file FILE (created there if absent)")
            if keep_keys:
                raise click.UsageError("--keep-keys is for independent keys; with --keys same the key file is the key")
            if seeded:
                raise click.UsageError("--seed is for independent keys; --keys same reads its key from --key-file")
            if is_inside(key_file, out):
                raise PpdataError(f"refusing to keep the key file {key_file} inside the output folder {out}")
            if Path(key_file).exists():
                store = Keystore.load(key_file)
                if store.mode != "same":
                    raise PpdataError(f"{key_file} is a keystore of {store.mode} keys, not a key file for --keys same")
                log.info("using the key in %s (key id %s)", key_file, store.key_id)
            else:
                store = Keystore(mode="same", secret=new_secret())
                store.save(key_file)
                log.info("created key file %s (key id %s); keep it on the client", key_file, store.key_id)
            stream = store.stream()
        else:
            if key_file:
                raise click.UsageError("--key-file is for --keys same; use --keep-keys to keep independent keys")
            stream = KeyStream(secret_from_seed(seed) if seeded else new_secret(), "independent")
    expand, extra = None, None
    if augment_spec:
        from .variants import parse_spec, plain_expand, plain_manifest_entry

        try:
            variants, fill = parse_spec(augment_spec)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--augment") from None
        expand, extra = plain_expand(variants, fill), {"augment": plain_manifest_entry(variants, fill)}
    from .sources import Decode

    settings = Decode(resize=size, crop=crop_size, interpolation=interpolation, decoder=decoder, max_pixels=max_pixels,
                      max_bytes=max_bytes)
    if interpolation and size is None:
        raise click.UsageError("--interpolation applies to --resize")
    if ray_address and engine != "ray":
        raise click.UsageError("--ray-address goes with --engine ray")
    src = open_source(source, path, split=split, root=root, download=download, strict=strict, decode=settings)
    if augment_spec and "train" not in src.select_splits(split):
        raise click.UsageError("--augment expands the train split, which this run does not encrypt")
    manifest = run(src, out, scheme=sch, keys=stream, fmt=fmt, split=split, shard_size=shard_size,
                   overwrite=overwrite, keystore=keep_keys, seeded=seeded, batch_size=batch_size,
                   extra_options={"resize": list(size) if isinstance(size, tuple) else size,
                                  "crop": list(crop_size) if crop_size else None, "strict": strict,
                                  "max_pixels": max_pixels, "max_bytes": max_bytes, "exif_orientation": "applied"},
                   progress=not obj.quiet, workers=workers, engine=engine, ray_address=ray_address,
                   **({"expand": expand, "extra_manifest": extra} if expand else {}))
    _summary(out, manifest)
    if not plain and key_mode == "independent" and not keep_keys:
        log.info("keys were not kept (no --keep-keys): nobody, you included, can decrypt %s", out)


def _make_scheme(name: str, **flags):
    """The scheme ``name`` with the CLI options that were given (None = not given, scheme default)."""
    import inspect

    from .cipher import SCHEMES, get_scheme

    if name not in SCHEMES or name == "plain":
        known = ", ".join(sorted(k for k in SCHEMES if k != "plain"))
        raise click.BadParameter(f"unknown scheme {name!r}; known: {known} (or --plain)", param_hint="--scheme")
    accepted = inspect.signature(SCHEMES[name]).parameters
    opts = {}
    for key, value in flags.items():
        if value is None:
            continue
        if key not in accepted:
            raise click.UsageError(f"--{key.replace('_', '-')} does not apply to --scheme {name}")
        opts[key] = value
    try:
        return get_scheme(name, **opts)
    except (ValueError, TypeError) as e:
        raise click.BadParameter(str(e), param_hint="--scheme") from None


def _summary(out, manifest) -> None:
    parts = [f"{sp} {v['count']}" + (f" ({v['skipped']['count']} skipped)" if v["skipped"]["count"] else "")
             for sp, v in manifest["splits"].items()]
    sch = manifest["scheme"]
    opts = ", ".join(f"{k}={v}" for k, v in sch.items() if k not in ("name", "encrypted"))
    if sch["name"] == "pixel":
        desc = "pixel" + ("+CS" if sch.get("cs") else " NP")
    else:
        desc = sch["name"] + (f" ({opts})" if opts else "")
    mode = (manifest.get("keys") or {}).get("mode", "no key")
    click.echo(f"{out}: {', '.join(parts)} images, {desc}, {mode} keys, {manifest['format']}")


# ---------------------------------------------------------------------------------------------
# decrypt


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--keys", "keystore", required=True, type=click.Path(dir_okay=False),
              help="The keystore (--keep-keys) or key file (--key-file) used to encrypt.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["webdataset", "hdf5", "png"]),
              help="Plain shards (default: the input's format) or a PNG ImageFolder tree.")
@click.option("--overwrite", is_flag=True, help="Replace ppdata's files in a non-empty --out.")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of every shard read (counts, shapes and "
                                                "structure are still checked).")
@click.pass_obj
@_errors
def decrypt(obj, directory, keystore, out, fmt, overwrite, no_verify):
    """Decrypt a shard folder with its keystore (client side).

    \b
    Example:
      ppdata decrypt shards/ --keys ~/keys/v.json --out plain/ --format png
    """
    from .pipeline import decrypt as run

    run(directory, keystore, out, fmt=fmt, overwrite=overwrite, progress=not obj.quiet, verify=not no_verify)
    click.echo(f"{out}: decrypted {directory}")


# ---------------------------------------------------------------------------------------------
# info


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--verify", is_flag=True, help="Read every shard whole and check it against the manifest: sha256, "
                                            "sample counts, shapes, labels, keys, structure.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@_errors
def info(directory, verify, as_json):
    """Summarise a shard folder; --verify reads and checks every shard (exit 1 on a mismatch).

    \b
    Example:
      ppdata info shards/ --verify
    """
    from .shards import ShardSet, read_manifest

    m = read_manifest(directory)
    if as_json:
        click.echo(json.dumps(m, indent=2))
    else:
        sch = m.get("scheme") or {}
        keys = m.get("keys") or {}
        opts = ", ".join(f"{k}={v}" for k, v in sch.items() if k not in ("name", "encrypted"))
        click.echo(f"folder    {directory}")
        click.echo(f"format    {m['format']}  (ppdata {m.get('ppdata_version')}, created {m.get('created')})")
        click.echo(f"source    {json.dumps(m.get('source'))}")
        click.echo(f"scheme    {sch.get('name')}" + (f" ({opts})" if opts else ""))
        if keys:
            seeded = "  SEEDED: not private" if keys.get("seeded") else ""
            click.echo(f"keys      {keys.get('mode')} (key id {keys.get('key_id')}){seeded}")
        else:
            click.echo("keys      none (plain images)")
        if m.get("augment"):
            a = m["augment"]
            click.echo(f"augment   {a.get('split', 'train')}: {a.get('domain')} domain, {json.dumps(a.get('variants', a))}")
        click.echo(f"shape     {'x'.join(str(v) for v in m['shape'])}, {len(m.get('classes', []))} classes")
        total = 0
        for sp, v in m["splits"].items():
            size = sum(s.get("bytes") or 0 for s in v["shards"])
            total += size
            skipped = (v.get("skipped") or {}).get("count", 0)
            aug = v.get("augment")
            click.echo(f"split     {sp}: {v['count']} samples in {len(v['shards'])} file(s), {size / 1e6:.1f} MB"
                       + (f", {skipped} skipped" if skipped else "")
                       + (f" ({aug['factor']}x {aug['domain']}-domain expansion of "
                          f"{aug.get('parent', {}).get('split', 'train')})" if aug else ""))
    if verify:
        problems = []
        for sp in m["splits"]:
            problems += ShardSet(directory, sp, m).verify()
        if problems:
            for p in problems:
                click.echo(f"MISMATCH  {p}", err=True)
            raise PpdataError(f"{len(problems)} shard(s) of {directory} failed verification")
        n = sum(len(v["shards"]) for v in m["splits"].values())
        total = sum(v["count"] for v in m["splits"].values())
        click.echo(f"verify    ok: {n} file(s) match their sha256; {total} samples, counts, shapes, labels "
                   f"and keys as the manifest says")


# ---------------------------------------------------------------------------------------------
# preview


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("plain_path", required=False)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="PNG to write (.png); an existing file that ppdata did not write is replaced only with --overwrite.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output that ppdata did not write.")
@click.option("--split", help="Split to show (default: test if present, else the first).")
@click.option("-n", "count", type=click.IntRange(1, 1024), default=32, show_default=True, help="Images to show.")
@click.option("--plain", "plain_source", type=click.Choice(["cifar10", "cifar100", "stl10", "folder", "sample"]),
              help="Show each image beside its original from this source (folder: give PLAIN_PATH).")
@click.option("--root", default="data", show_default=True, help="Where torchvision datasets live (--plain).")
@click.option("--cols", type=click.IntRange(min=1), default=8, show_default=True)
@_errors
def preview(directory, plain_path, output, split, count, plain_source, root, cols, overwrite):
    """Write a contact sheet of a shard folder; with --plain, originals beside encrypted images.

    The originals are rebuilt as the folder's manifest says they were encrypted (resize, crop,
    decoder): no --resize to type again. A source that no longer matches is an error naming it.

    \b
    Examples:
      ppdata preview shards/ -o grid.png
      ppdata preview v/ --plain folder photos.tar.gz -o side-by-side.png
    """
    from .preview import auto_scale, check_output, grid, pairs, save_png
    from .shards import ShardSet, read_manifest
    from .sources import open_source_as, originals

    if not str(output).lower().endswith(".png"):
        raise click.BadParameter(f"{output!r}: a contact sheet is a PNG; give a name ending in .png",
                                 param_hint="--output")
    check_output(output, overwrite)  # before any work
    m = read_manifest(directory)
    split = split or ("test" if "test" in m["splits"] else next(iter(m["splits"])))
    ss = ShardSet(directory, split, m)
    shown = ss.head(min(count, len(ss)))
    images = shown.images
    if plain_source:
        # the originals as they were encrypted: resize, crop, decoder from the manifest
        src = open_source_as(m, plain_source, plain_path, split=split, root=root)
        images = pairs(originals(src, split, shown.keys), images)
        cols = cols + cols % 2
    sheet = grid(images, cols=cols, scale=auto_scale(ss.shape[0]))
    save_png(sheet, output, overwrite=overwrite)
    click.echo(f"{output}: {len(shown)} images of {directory} ({split})" + (" beside originals" if plain_source else ""))


# ---------------------------------------------------------------------------------------------
# augment


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--out", "-o", type=click.Path(file_okay=False),
              help="Write the expansion to a new shard folder (other splits carried over). Default: add it to "
                   "DIRECTORY itself as split <split>x<factor>, e.g. trainx8.")
@click.option("--split", default="train", show_default=True, help="The split to expand; others are carried over.")
@click.option("--flip/--no-flip", default=True, show_default=True, help="Horizontal flip (x2).")
@click.option("--shift", type=click.IntRange(min=0), default=4, show_default=True,
              help="Size of the translations in pixels; 0: no shift.")
@click.option("--shifts", metavar="SET|DX:DY,...", default="paper", show_default=True,
              help="The translation set: paper ((0,0), (N,0), (0,N), (N,N): each factor counts the original, "
                   "the paper's x8), diagonal ((+-N, +-N), the earlier reading), or an explicit list such as "
                   "0:0,4:0,-4:0 (positive: right / down).")
@click.option("--fill", type=click.IntRange(0, 255), default=0, show_default=True,
              help="Value of the pixels a shift vacates.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the global shuffle of the output.")
@click.option("--shard-size", type=click.IntRange(min=1), help="Samples per tar shard (default: the input's).")
@click.option("--copy", "copy_splits", is_flag=True,
              help="Copy the other splits (default: hard links where possible).")
@click.option("--memory", type=click.IntRange(min=16), default=384, show_default=True, metavar="MIB",
              help="Input images held in memory at once (with their mirror images); a larger split goes "
                   "through temporary buckets in OUT.")
@click.option("--overwrite", is_flag=True, help="Replace ppdata's files in a non-empty --out.")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the shards read (counts, shapes and "
                                                "structure are still checked).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: Ray Data tasks on a cluster, one output shard per task, DIRECTORY "
                   "and --out on a shared file system or s3:// (pip install 'ppdata[ray]'; see docs/scale.md).")
@click.option("--ray-address", metavar="ADDR", help="The Ray cluster to join (default: RAY_ADDRESS, else a local Ray).")
@click.option("--workers", type=click.IntRange(min=1), help="With --engine ray: Ray tasks at once (default: the "
                                                            "cluster's CPUs).")
@click.pass_obj
@_errors
def augment(obj, directory, out, split, flip, shift, shifts, fill, seed, shard_size, copy_splits, memory,
            overwrite, no_verify, engine, ray_address, workers):
    """Expand the train split of an (encrypted) shard folder by flips and shifts, without any key.

    Every image becomes all combinations of the flips and the translations (default: the paper's
    x8, 50,000 CIFAR-10 images -> 400,000), written in a seeded random order. Without --out the
    expansion is added to DIRECTORY as split trainx8 (its manifest lists it; python -m
    train.resnet DIRECTORY trains on it); with --out it goes to a new folder whose train split is
    the expansion. Sample keys: <parent key>_f<0|1>_sx<+dx>_sy<+dy>. Shift only: --no-flip (x4);
    flip only: --shift 0 (x2).

    \b
    Examples:
      ppdata augment shards/                        # adds trainx8 to shards/
      ppdata augment shards/ --out shards-x8/
      ppdata augment shards/ --no-flip --out shift-only/
      ppdata augment shards/ --shift 0 --out flip-only/
      ppdata augment shards/ --shifts diagonal --out diag/   # the earlier reading (+-4, +-4)
      ppdata augment s3://bucket/v/ --engine ray --ray-address auto  # on a Ray cluster, in place
    """
    from .augment import augment_folder
    from .variants import SHIFT_SETS, parse_shifts, variant_set

    try:
        variants = variant_set(flip=flip, shift=shift,
                               shifts=shifts if shifts in SHIFT_SETS else parse_shifts(shifts))
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--shifts/--shift/--flip") from None
    if engine == "ray":
        from .engines.raydata import augment_ray

        m = augment_ray(directory, out, variants=variants, fill=fill, seed=seed, split=split, shard_size=shard_size,
                        overwrite=overwrite, progress=not obj.quiet, verify=not no_verify, workers=workers,
                        address=ray_address)
    else:
        if ray_address or workers:
            raise click.UsageError("--ray-address and --workers go with --engine ray")
        from .remote import is_url

        if is_url(directory) or (out is not None and is_url(out)):
            raise click.UsageError("folders at URLs are expanded with --engine ray (a local Ray starts when no "
                                   "--ray-address is given)")
        m = augment_folder(directory, out, variants=variants, fill=fill, seed=seed, split=split,
                           shard_size=shard_size, overwrite=overwrite, link=not copy_splits,
                           resident_bytes=memory << 20, progress=not obj.quiet, verify=not no_verify)
    new = f"{split}x{len(variants)}" if out is None else split
    a = m["splits"][new].get("augment") or m["augment"]
    where = f"{directory}: added split {new}" if out is None else f"{out}: {split}"
    others = [] if out is None else [f"{sp} {v['count']} carried over" for sp, v in m["splits"].items() if sp != split]
    click.echo(f"{where}: {a['parent']['count']} -> {m['splits'][new]['count']} ({a['factor']}x: "
               f"{', '.join(a['variants'])}, fill {a['fill']}, seed {a['seed']})" + "".join(f"; {o}" for o in others))


# ---------------------------------------------------------------------------------------------
# audit


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("plain_path", nargs=-1)
@click.option("--plain", "plain_source", required=True,
              type=click.Choice(["cifar10", "cifar100", "stl10", "folder", "sample"]),
              help="The plain source the shards were made from (folder: give PLAIN_PATH..., e.g. the train and "
                   "test archives; a train split there is the attacker's own data for the trained parts).")
@click.option("--out", "-o", default="report", show_default=True, type=click.Path(file_okay=False),
              help="Folder for report.md, metrics.json and grid.png.")
@click.option("--split", help="Split to attack (default: test if present, else the first).")
@click.option("--limit", type=click.IntRange(min=1), help="Attack only the first N images of the split.")
@click.option("--learned", is_flag=True, help="Also train the learned attacks: the paper's 1x1 attack and a U-Net "
                                              "(per-pixel candidate classifier on the fold for pixel/icip), GPU if "
                                              "present.")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs of the paper's 1x1 attack (default: 30 on GPU, 2 on "
                                                           "CPU).")
@click.option("--budget", type=click.FloatRange(min=0.05), metavar="MINUTES",
              help="Training time of each U-Net attack, in minutes (default 5).")
@click.option("--attacker-images", type=click.IntRange(min=10), default=1000, show_default=True,
              help="Images of the plain source's train split that train the attacker's choice of global transform.")
@click.option("--known", type=click.IntRange(min=1), default=1, show_default=True,
              help="Known plain/encrypted pairs of the known-plaintext attack (key mode same).")
@click.option("--jigsaw-images", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images the jigsaw solver attacks under independent keys (seconds each).")
@click.option("--root", default="data", show_default=True, help="Where torchvision datasets live (--plain).")
@click.option("--overwrite", is_flag=True, help="Replace an existing report in --out.")
@click.pass_obj
@_errors
def audit(obj, directory, plain_path, plain_source, out, split, limit, learned, epochs, budget, attacker_images, known,
          jigsaw_images, root, overwrite):
    """Attack an encrypted shard folder and report how much of the images leaks.

    Runs the strongest attacks known for the folder's scheme and key mode (key-free attacks for
    every scheme; known-plaintext key recovery under one key; with --learned the paper's 1x1
    attack and a U-Net), scores every reconstruction against its plain original (SSIM, PSNR) and
    writes report.md, metrics.json and grid.png. Needs the plain images, never a key: run it on
    the client before uploading. The verdict uses attacks an attacker can run without the
    originals; the best-of-variants numbers picked with the originals are reported as upper
    bounds. Give the train archive too (PLAIN_PATH...) to train the attacker's side on it.

    \b
    Example:
      ppdata encrypt folder photos.tar.gz --split test --cs --out v/
      ppdata audit v/ --plain folder photos.tar.gz --out report/
      ppdata audit v/ --plain folder train.tar.gz test.tar.gz --learned --budget 15 --out report/
    """
    try:
        from attack.audit import audit as run
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in ("attack", "torch", "torchvision", "skimage", "scipy", "matplotlib"):
            raise
        raise click.ClickException(f"ppdata audit needs the attack extra ({e.name} is missing): "
                                   f"pip install 'ppdata[attack]'") from None

    record = run(directory, plain_source, list(plain_path) or None, out=out, split=split, limit=limit, root=root,
                 learned=learned, epochs=epochs, budget=budget, attacker_images=attacker_images, known=known,
                 jigsaw_images=jigsaw_images, overwrite=overwrite)
    s = record["verdict"]["strongest"]
    if s is None:
        click.echo(f"{out}: report.md, metrics.json, grid.png; no attack beyond the baseline applies")
    else:
        click.echo(f"{out}: report.md, metrics.json, grid.png; strongest realistic attack {s['attack']}: mean SSIM "
                   f"{s['ssim']:.3f}, PSNR {s['psnr']:.1f} dB over {s['images']} images")


def main() -> None:
    cli(prog_name="ppdata")


if __name__ == "__main__":
    main()
