"""``python -m train.experiments NAME [--profile fast|paper|smoke] [--dry-run] [--data D] [--work W]``."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from ppdata.errors import PpdataError

from .plan import FIGURE_NAMES, PROFILES, figure
from .runner import Harness, attack_available
from .source import default_data, parse_subset, resolve_data, _rel

HELP = """Reproduce one of the paper's experiments: prepare the shards (ppdata, cached by content key
under --work), train every condition (resumable: finished conditions are reused) and write
RESULTS/NAME.csv, RESULTS/NAME.md and RESULTS/NAME.png.

\b
NAME:
  fig8a   augmentation in the plain domain (ppdata encrypt --augment flip,shift; every copy its own key)
  fig8b   augmentation in the encrypted domain (ppdata augment, by the server without keys)
  fig10   plain test images Q: the fig8b models tested on Q (shares fig8b's runs)
  fig11   no augmentation / shift only / flip only / flip + shift (encrypted domain)
  fig12   fig8b with DenseNet-40-12
  table2  ciphertext-only attacks (python -m attack.coa)
  cifar10-cpu  the paper's claims on the whole CIFAR-10 with the CPU recipe (--profile cpu): plain,
          NP, NP+CS (fold, raw, one key) at the recipe's budget; the compared schemes and the kinds
          and domains of augmentation at a small budget; also writes report.md and summary.json
  frontier  privacy against accuracy per scheme and key mode: ppdata audit of the 96x96 photos'
          test split (x: strongest realistic attack's SSIM) against the Enc(Q) accuracy of the
          finished fig8b runs (y; --accuracy CSV files)

\b
Profiles: paper (the paper's schedules), fast (minutes per condition on one GPU: 2M images seen),
cpu (the CPU recipe, train/cpu.py; for cifar10-cpu), smoke (tiny networks, one epoch; CPU, --data sample).

\b
--data: sample | cifar10 | cifar100 | stl10 (torchvision, --root) | a folder with train.tar.gz and
test.tar.gz | an ImageFolder archive or folder with train/ and test/. Default: $PPDATA_DATA/cifar10-jpeg
or ../shared/data/cifar10-jpeg.

\b
Examples:
  python -m train.experiments fig8b --profile fast --dry-run
  python -m train.experiments fig8b --profile smoke --data sample --device cpu
  python -m train.experiments fig8b --profile fast && python -m train.experiments fig10 --profile fast
"""


@click.command(help=HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("name", type=click.Choice([*FIGURE_NAMES, "frontier"]))
@click.option("--profile", type=click.Choice(list(PROFILES)), default="fast", show_default=True)
@click.option("--dry-run", is_flag=True, help="List the conditions and the exact commands; run nothing.")
@click.option("--data", default=None, help="Plain images (see above).")
@click.option("--root", default="data", show_default=True, help="torchvision root for --data cifar10 etc.")
@click.option("--subset", metavar="TRAIN,TEST", help="Only the first TRAIN / TEST images per class (folder archives).")
@click.option("--work", type=click.Path(file_okay=False), default="results/work", show_default=True,
              help="Cache of sources, shards, keys and runs.")
@click.option("--results", type=click.Path(file_okay=False), default="results", show_default=True,
              help="Where NAME.csv, NAME.md and NAME.png go.")
@click.option("--only", metavar="COND,...", help="Only these conditions (names or shell patterns, e.g. 'np*,plain').")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Passed to every training command.")
@click.option("--train-args", default="", metavar="'OPTIONS'",
              help="Extra options appended to every training command (part of the cache key), e.g. '--width 16'.")
@click.option("--format", "fmt", type=click.Choice(["hdf5", "webdataset"]), default="hdf5", show_default=True,
              help="Shard format of the prepared folders.")
@click.option("--diagonal", is_flag=True,
              help="fig8a/fig8b/fig10/fig12: expand with the earlier reading's shifts (+-4, +-4), no unshifted "
                   "copy, instead of the paper's set (the original and shifts by 4 right, down, diagonally).")
@click.option("--report-only", is_flag=True, help="Write the reports from the finished runs; train nothing.")
@click.option("--accuracy", multiple=True, type=click.Path(dir_okay=False),
              help="frontier: cifar10-cpu summary.json or fig8b CSV files with Enc(Q) accuracies (default: "
                   "docs/results/cifar10-cpu/summary.json).")
@click.option("--audits-from", type=click.Path(dir_okay=False),
              help="frontier: take the attacks' SSIM from an earlier frontier.csv instead of running the audits.")
@click.option("--audit-args", default="", metavar="'OPTIONS'",
              help="frontier: extra options for every ppdata audit, e.g. '--learned --budget 15'.")
def main(name, profile, dry_run, data, root, subset, work, results, only, device, train_args, fmt, diagonal,
         report_only, accuracy, audits_from, audit_args):
    from . import report

    if name == "frontier":
        from . import frontier

        command = "python -m train.experiments " + shlex.join(sys.argv[1:])
        try:
            paths = frontier.main(data or default_data("scenes96"), work, results, accuracy, shlex.split(audit_args),
                                  dry_run, command, lambda m: click.echo(m, err=not dry_run), audits_from)
        except PpdataError as e:
            raise click.ClickException(str(e)) from None
        if paths:
            click.echo(f"frontier: wrote {', '.join(_rel(p) for p in paths)}", err=True)
        return

    try:
        fig = figure(name, diagonal)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    try:
        if data is None:  # CIFAR-10 for the classification experiments, the STL-10 stand-in for the attack
            data = default_data("scenes96" if fig.kind == "attack" else "cifar10-jpeg")
        work_p, results_p = Path(work), Path(results)
        src = resolve_data(data, work_p, parse_subset(subset), root)
        h = Harness(fig, profile, src, work_p, results_p, shlex.split(train_args), device,
                    [p for p in only.split(",") if p] if only else None, fmt)
        command = "python -m train.experiments " + shlex.join(sys.argv[1:])
        if fig.kind == "attack":
            return _table2(fig, h, dry_run, report_only, command)
        if dry_run:
            click.echo(h.describe())
            return
        outcomes = h.collect() if report_only else h.execute()
        paths = report.write_all(fig, h, outcomes, command)
        if fig.name == "cifar10-cpu":
            paths += report.cpu_report(fig, h, outcomes, command)
    except PpdataError as e:
        raise click.ClickException(str(e)) from None
    failed = [o for o in outcomes if o.status == "failed"]
    pending = [o for o in outcomes if o.status == "pending"]
    click.echo(f"{name}: {len(outcomes) - len(failed) - len(pending)} of {len(outcomes)} conditions measured; "
               f"wrote {', '.join(_rel(p) for p in paths)}", err=True)
    for o in failed:
        click.echo(f"  failed: {o.condition.name}: {o.error}", err=True)
    if failed:
        sys.exit(1)


def _table2(fig, h: Harness, dry_run: bool, report_only: bool, command: str):
    from . import report
    from .runner import _tee

    out = h.attack_dir()
    cmd = h.attack_command(out)
    available = attack_available()
    if dry_run:
        click.echo(f"# table2: {fig.title}\n# profile {h.profile}; data {h.data.describe()}")
        if not available:
            click.echo("# PENDING: the attack package (python -m attack.coa) is not in this checkout")
        done = (out / "metrics.json").is_file()
        click.echo(("# " if done else "") + shlex.join(cmd))
        return
    if not (out / "metrics.json").is_file():
        if report_only or not available:
            raise PpdataError("table2 is pending: " + ("no finished attack run yet" if available else
                              "the attack package (python -m attack.coa) is not in this checkout") +
                              f"; the command will be: {shlex.join(cmd)}")
        out.mkdir(parents=True, exist_ok=True)
        rc = _tee([sys.executable, *cmd[1:]], out / "console.log")
        if rc != 0:
            raise PpdataError(f"python -m attack.coa exited with {rc}; see {_rel(out / 'console.log')}")
    paths = report.attack_tables(fig, h, out / "metrics.json", command)
    click.echo(f"table2: wrote {', '.join(_rel(p) for p in paths)}", err=True)




if __name__ == "__main__":
    main()
