"""The paper's ciphertext-only attack (its Table 2 and Fig. 13), and stronger attacks beside it.

    python -m attack.coa                       # scenes96 (../shared/data), all four conditions
    python -m attack.coa --source stl10 --root data
    python -m attack.coa --epochs 4 --train-limit 2000 --attacks encrypted,fold,neighbour,coa-1x1,unet

Threat model: the attacker knows the algorithm, not the victim's keys. It encrypts its own plain
training images with ppdata's cipher under the condition studied, trains on (Enc(T), T), and
reconstructs the victim's encrypted test split:

* same key: the attacker's images are encrypted under the victim's one key (the conventional
  setting; the attacker holds plain/encrypted pairs under that key);
* independent keys: every image under its own fresh key, the attacker's included (the paper's
  proposal).

The victim's test split is encrypted by ``ppdata.pipeline.encrypt`` into a temporary shard folder
and read back with ``ppdata.shards``; reconstructions are aligned with the plain originals by
sample key. Outputs in ``--out``: ``table.md`` (the layout of the paper's Table 2: NP and NP+CS
rows, same key and independent keys columns, mean SSIM and PSNR; one table per attack),
``metrics.json`` (settings, machine, per-condition summaries, training curves) and
``grid-<scheme>-<keys>.png`` (originals, encrypted, reconstructions: the paper's Fig. 13).

The 1x1 network follows the paper (``attack.learn.COANet``; SGD momentum 0.9, 70 epochs, lr 0.1
divided by 10 at epochs 40 and 60, weight decay 5e-4, batch 128). Its loss is the MSE summed over
pixel positions (``--loss-scale pixel``: every position's separate weights learn at lr 0.1;
``mean`` divides each position's gradient by H*W, and 70 epochs then barely move them). The
shortened runs (``--epochs``) scale the lr milestones by 40/70 and 60/70.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np

ATTACKS = ("encrypted", "fold-raw", "fold", "neighbour", "coa-1x1", "unet")
SCHEMES = {"np": False, "npcs": True}
SCHEME_NAMES = {"np": "NP", "npcs": "NP+CS"}
KEY_MODES = ("same", "independent")


def default_data() -> Path:
    root = os.environ.get("PPDATA_DATA")
    return Path(root) if root else Path("..") / "shared" / "data"


def _csv(allowed):
    def parse(ctx, param, value):
        vals = [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in vals if v not in allowed]
        if bad or not vals:
            raise click.BadParameter(f"{', '.join(bad) or 'empty'} (choose from {', '.join(allowed)})")
        return vals
    return parse


@click.command(help=__doc__.split("\n\n")[0], context_settings={"help_option_names": ["-h", "--help"],
                                                                  "max_content_width": 100})
@click.option("--source", type=click.Choice(["folder", "stl10", "cifar10", "sample"]), default="folder",
              show_default=True, help="plain data: folder archives (default: scenes96 under $PPDATA_DATA or "
              "../shared/data), stl10/cifar10 through torchvision (--root), or the embedded sample")
@click.option("--train", help="attacker's plain training images (folder source): ImageFolder dir or archive")
@click.option("--test", help="victim's plain test images (folder source)")
@click.option("--root", default="data", show_default=True, help="torchvision root for stl10/cifar10")
@click.option("--download", is_flag=True, help="let torchvision download stl10/cifar10 into --root")
@click.option("--out", default="results/coa", show_default=True,
              help="output folder (created; existing files are replaced)")
@click.option("--attacks", default="encrypted,fold-raw,fold,neighbour,coa-1x1", show_default=True,
              callback=_csv(ATTACKS), help=f"comma-separated, from {','.join(ATTACKS)}")
@click.option("--schemes", default="np,npcs", show_default=True, callback=_csv(tuple(SCHEMES)),
              help="np, npcs or both")
@click.option("--keys", default="same,independent", show_default=True, callback=_csv(KEY_MODES),
              help="same, independent or both")
@click.option("--epochs", type=int, default=70, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True)
@click.option("--milestones", help="lr /10 at these epochs (default 40,60 scaled to --epochs)")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--loss-scale", type=click.Choice(["pixel", "mean"]), default="pixel", show_default=True)
@click.option("--unet-epochs", type=int, default=30, show_default=True)
@click.option("--unet-width", type=int, default=16, show_default=True)
@click.option("--unet-crop", type=int, default=48, show_default=True,
              help="train the U-Net on random crops (0: whole images)")
@click.option("--unet-lr", type=float, default=2e-3, show_default=True)
@click.option("--train-limit", type=int, help="use the first N attacker training images")
@click.option("--test-limit", type=int, help="attack the first N victim test images")
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="torch seed and (reproducible) keys of this experiment")
@click.option("--grid", type=int, default=8, show_default=True, help="images per row in the grids")
@click.option("--workers", type=int, default=min(4, os.cpu_count() or 1), show_default=True,
              help="processes for the training-free attacks")
def cli(**kwargs) -> int:
    return run(SimpleNamespace(**kwargs))


def main(argv=None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    try:
        return cli.main(args=argv, prog_name="python -m attack.coa", standalone_mode=False) or 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        return 1


def open_sources(a):
    from ppdata.sources import open_source

    if a.source == "folder":
        data = default_data() / "scenes96"
        train = a.train or str(data / "train.tar.gz")
        test = a.test or str(data / "test.tar.gz")
        return open_source("folder", train, split="train"), open_source("folder", test, split="test"), \
            {"train": train, "test": test}
    src = open_source(a.source, None, root=a.root, download=a.download)
    return src, src, {"source": a.source, "root": a.root}


def run(a) -> int:
    """The experiment with the options of the command (attribute namespace ``a``)."""
    import torch

    from ppdata.cipher import fold, get_scheme
    from ppdata.errors import PpdataError
    from ppdata.keys import KeyStream, secret_from_seed
    from ppdata.pipeline import encrypt as encrypt_folder
    from ppdata.shards import open_shards

    from . import suite
    from .data import LimitedSource, align_by_key, encrypt_as, read_split
    from .learn import COANet, TrainConfig, UNet, fit, pick_device, predict, unet_input

    t_start = time.time()
    device = pick_device(a.device)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(f"[{time.time() - t_start:7.1f}s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        train_src, test_src, data_desc = open_sources(a)
        learned = [x for x in a.attacks if x in ("coa-1x1", "unet")]
        if learned:
            T, T_index = read_split(train_src, "train", a.train_limit)
            log(f"attacker's plain training images: {len(T)} of {T.shape[1]}x{T.shape[2]}")
        Q, Q_index = read_split(test_src, "test", a.test_limit)
        log(f"victim's plain test images: {len(Q)}")
    except PpdataError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    h, w = Q.shape[1:3]
    milestones = [int(m) for m in a.milestones.split(",")] if a.milestones else None
    coa_cfg = dict(epochs=a.epochs, lr=a.lr, milestones=milestones, weight_decay=a.weight_decay, momentum=a.momentum,
                   batch_size=a.batch_size, loss_scale=float(h * w) if a.loss_scale == "pixel" else 1.0, seed=a.seed)
    unet_cfg = dict(epochs=a.unet_epochs, lr=a.unet_lr, optimizer="adam", weight_decay=0.0, batch_size=32,
                    crop=a.unet_crop or None, milestones=[max(1, round(a.unet_epochs * 0.8))], seed=a.seed)
    record = {"experiment": "ciphertext-only attacks (Table 2 layout)", "data": data_desc,
              "train_images": int(len(T)) if learned else 0, "test_images": int(len(Q)), "shape": [h, w, 3],
              "attacks": {k: suite.DESCRIPTIONS[k] for k in a.attacks},
              "coa_config": {**coa_cfg, "milestones": TrainConfig(**coa_cfg).schedule(), "loss_scale": a.loss_scale},
              "unet_config": {**unet_cfg, "width": a.unet_width}, "device": str(device),
              "machine": suite.machine(), "metrics": "luminance SSIM (BT.601, Gaussian 11x11 sigma 1.5, data range 255), "
              "colour SSIM (mean over R, G, B), PSNR over RGB (capped at 100 dB); see attack/metrics.py",
              "conditions": {}}
    unet_models: dict[str, object] = {}
    cache: dict[tuple, dict] = {}  # key-invariant attacks: scheme -> (fold of the victim, results)
    with tempfile.TemporaryDirectory(prefix="coa-victim-") as tmp:
        for sname in a.schemes:
            cs = SCHEMES[sname]
            scheme = get_scheme("pixel", cs=cs)
            for mode in a.keys:
                cond = f"{sname}-{mode}"
                log(f"condition {SCHEME_NAMES[sname]}, {mode} key(s)")
                victim = KeyStream(secret_from_seed(f"victim/{a.seed}/{cond}"), mode)
                folder = Path(tmp) / cond
                encrypt_folder(LimitedSource(test_src, "test", a.test_limit), folder, scheme=scheme, keys=victim,
                               split="test", progress=False)
                V = open_shards(folder, "test").load()
                plain = align_by_key(V.keys, "test", Q, Q_index)
                if mode == "same":
                    attacker = victim  # plain/encrypted pairs under the victim's key
                else:
                    attacker = KeyStream(secret_from_seed(f"attacker/{a.seed}/{cond}"), "independent")
                results: dict[str, dict] = {}
                free = [x for x in a.attacks if x in suite.TRAINING_FREE]
                fV = fold(V.images, cs)
                hit = cache.get(sname)
                for name in free:
                    if name != "encrypted" and hit is not None and np.array_equal(hit["fold"], fV) \
                            and name in hit["results"]:
                        # key-invariant: the victim's fold is bit-identical, so is the attack's output
                        results[name] = dict(hit["results"][name], note="key-invariant: same output as under "
                                             f"{hit['mode']} key(s), checked fold equality")
                    else:
                        results.update(suite.training_free(V.images, plain, cs, (name,), workers=a.workers))
                    log(f"  {name}: SSIM {results[name]['summary']['ssim']['mean']:.3f}")
                cache.setdefault(sname, {"fold": fV, "mode": mode, "results": results})
                if learned:
                    E = encrypt_as(T, "train", T_index, cs, attacker)
                if "coa-1x1" in learned:
                    t0 = time.time()
                    cfg = TrainConfig(**coa_cfg)
                    model = fit(COANet(h, w), E, T, cfg, device,
                                progress=lambda ep, loss: log(f"  coa-1x1 epoch {ep}: loss {loss:.4f}"))
                    results["coa-1x1"] = suite.score("coa-1x1", plain, predict(model, V.images, device),
                                                     time.time() - t0)
                    results["coa-1x1"]["train_log"] = cfg.log
                    log(f"  coa-1x1: SSIM {results['coa-1x1']['summary']['ssim']['mean']:.3f}")
                if "unet" in learned:
                    t0 = time.time()
                    note = ""
                    if sname not in unet_models:
                        # trained under independent keys (its input, the fold, is the same for every key)
                        E_ind = E if mode == "independent" else encrypt_as(
                            T, "train", T_index, cs, KeyStream(secret_from_seed(f"attacker/{a.seed}/{sname}-unet"),
                                                               "independent"))
                        cfg = TrainConfig(**unet_cfg)
                        torch.manual_seed(a.seed)
                        model = fit(UNet(a.unet_width, cs), unet_input(E_ind, cs), T, cfg, device,
                                    progress=lambda ep, loss: log(f"  unet epoch {ep}: loss {loss:.4f}"))
                        unet_models[sname] = (model, cfg.log)
                    else:
                        note = "same network as for the other key mode (trained once, under independent keys)"
                    model, tlog = unet_models[sname]
                    prev = hit["results"].get("unet") if hit is not None and np.array_equal(hit["fold"], fV) else None
                    if prev is not None:
                        # the input (the fold) is bit-identical to the other key mode's: so is the output
                        results["unet"] = dict(prev, note=note + "; key-invariant input, output reused")
                    else:
                        results["unet"] = suite.score("unet", plain, predict(model, unet_input(V.images, cs), device),
                                                      time.time() - t0, note)
                    results["unet"]["train_log"] = tlog
                    log(f"  unet: SSIM {results['unet']['summary']['ssim']['mean']:.3f}")
                suite.save_grid(out / f"grid-{cond}.png", plain, V.images, results, a.grid)
                record["conditions"][cond] = {
                    "scheme": SCHEME_NAMES[sname], "keys": mode, "victim_key_id": victim.key_id,
                    "attacks": {k: {"summary": r["summary"], "seconds": r["seconds"], "note": r.get("note", ""),
                                    **({"train_log": r["train_log"]} if "train_log" in r else {})}
                                for k, r in results.items()}}
    record["seconds"] = round(time.time() - t_start, 1)
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    (out / "table.md").write_text(table2(record, a))
    print(table2(record, a))
    log(f"wrote {out}/table.md, metrics.json and grids")
    return 0


def table2(record: dict, a) -> str:
    """The paper's Table 2 layout, one table per attack: rows NP, NP+CS; columns same key and
    independent keys, each mean SSIM and PSNR."""
    conds = record["conditions"]
    lines = [f"# Ciphertext-only attacks: mean SSIM / PSNR over {record['test_images']} test images",
             "", f"Data: {json.dumps(record['data'])}; attacker's training images: {record['train_images']}; "
             f"device: {record['device']}; CPU: {record['machine']['cpu']} ({record['machine']['cores']} cores).",
             f"1x1 COA: {record['coa_config']['epochs']} epochs, lr {record['coa_config']['lr']} /10 at "
             f"{record['coa_config']['milestones']}, batch {record['coa_config']['batch_size']}, loss scale "
             f"{record['coa_config']['loss_scale']}. U-Net: {record['unet_config']['epochs']} epochs, width "
             f"{record['unet_config']['width']}, crop {record['unet_config']['crop']}.",
             "SSIM: luminance (BT.601), Gaussian window 11x11 sigma 1.5, data range 255. PSNR over RGB, dB.", ""]
    for attack in a.attacks:
        lines += [f"## {attack}", "", suite_description(attack), "",
                  "| scheme | same key SSIM | same key PSNR | independent keys SSIM | independent keys PSNR |",
                  "|---|---|---|---|---|"]
        for sname in a.schemes:
            cells = []
            for mode in KEY_MODES:
                c = conds.get(f"{sname}-{mode}")
                if c is None or attack not in c["attacks"]:
                    cells += ["-", "-"]
                else:
                    s = c["attacks"][attack]["summary"]
                    cells += [f"{s['ssim']['mean']:.3f}", f"{s['psnr']['mean']:.2f}"]
            lines.append(f"| {SCHEME_NAMES[sname]} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def suite_description(attack: str) -> str:
    from .suite import DESCRIPTIONS

    return DESCRIPTIONS[attack]


if __name__ == "__main__":
    sys.exit(main())
