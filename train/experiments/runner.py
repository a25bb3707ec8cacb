"""Paths, commands, caching and execution of an experiment.

Cache: every shard folder and run folder is named by a content key, the SHA-256 of what defines
it (the data's identity: archive names, sizes and modification times or the dataset name; the
scheme, CS, key mode, augmentation and its domain; for runs also the model, adaptation network,
evaluation folders and every training option). Change any of them and a new folder is made;
repeat a command and the finished folders are reused:

- a shard folder is finished when its ``manifest.json`` exists (ppdata writes it last); a folder
  without one is an interrupted run and is written again (``--overwrite``);
- a run is finished when its ``metrics.json`` says ``"complete": true``; a run folder with a
  checkpoint is continued (``--resume``), one without is started again (``--overwrite``).

Commands run as subprocesses, the same ``python -m ppdata ...`` / ``python -m train.resnet ...``
lines that ``--dry-run`` prints (with this interpreter instead of ``python``). ppdata's output goes
to ``WORK/logs/``; a training run's console output is shown and kept in ``RUNDIR/console.log``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ppdata.errors import PpdataError

from .plan import ATTACK_PROFILES, MODELS, PROFILES, Condition, Figure, Run, Shards
from .source import DataSource, _rel

CACHE_VERSION = 1


def content_key(obj) -> str:
    """Ten hex digits of the SHA-256 of ``obj`` as canonical JSON."""
    return hashlib.sha256(json.dumps({"v": CACHE_VERSION, **obj}, sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class Step:
    """One preparation command and the path it produces."""

    what: str
    command: list[str]
    output: Path
    log: Path

    @property
    def done(self) -> bool:
        if self.output.suffix == ".tar":
            return self.output.is_file()
        return (self.output / "manifest.json").is_file()


@dataclass
class Outcome:
    condition: Condition
    run_dir: Path
    status: str                      # done | failed | skipped | pending
    metrics: dict | None = None
    error: str | None = None


@dataclass
class Harness:
    figure: Figure
    profile: str
    data: DataSource
    work: Path
    results: Path
    extra: list[str] = field(default_factory=list)   # appended to every training command
    device: str | None = None
    only: list[str] | None = None
    fmt: str = "hdf5"   # shard format (HDF5: no per-sample tar headers, ~40% less disk for 32x32 images)

    # ---- paths -----------------------------------------------------------------------------

    def shard_key(self, sh: Shards) -> str:
        return content_key({"data": self.data.identity, "shards": sh.canonical(), "format": self.fmt})

    def shard_dir(self, sh: Shards) -> Path:
        return self.work / "shards" / f"{sh.slug}-{self.shard_key(sh)}"

    def key_file(self, sh: Shards) -> Path:
        """The client's key file of a same-key folder (never inside a shard folder)."""
        return self.work / "keys" / f"{sh.slug}-{self.shard_key(sh)}.json"

    def run_options(self, run: Run) -> list[str]:
        return PROFILES[self.profile].options(run) + list(run.options) + list(self.extra)

    def run_dir(self, run: Run) -> Path:
        key = content_key({"data": self.data.identity, "run": run.canonical(), "options": self.run_options(run)})
        return self.work / "runs" / f"{run.slug}-{self.profile}-{key}"

    # ---- commands --------------------------------------------------------------------------

    def shard_steps(self, sh: Shards) -> list[Step]:
        """The commands that build ``sh``, in order (source, encryption, server-side expansion)."""
        steps: list[Step] = []
        if self.data.joined is not None:
            steps.append(Step("join the per-split archives", self.data.prepare_command(), self.data.joined,
                              self.work / "logs" / (self.data.joined.name + ".log")))
        enc = sh.parent() if sh.expanded_by_server else sh
        out = self.shard_dir(enc)
        cmd = ["python", "-m", "ppdata", "encrypt", *self.data.encrypt_args, *enc.encrypt_options(),
               "--format", self.fmt]
        if enc.scheme != "plain":
            cmd += ["--keys", enc.keys]
            if enc.keys == "same":
                cmd += ["--key-file", _rel(self.key_file(enc))]
        cmd += ["--out", _rel(out)]
        steps.append(Step(f"encrypt {enc.slug}", cmd, out, self.work / "logs" / f"{out.name}.log"))
        if sh.expanded_by_server:
            dst = self.shard_dir(sh)
            cmd = ["python", "-m", "ppdata", "augment", _rel(out), *sh.augment_options(), "--out", _rel(dst)]
            steps.append(Step(f"expand {sh.slug} (server side)", cmd, dst, self.work / "logs" / f"{dst.name}.log"))
        return steps

    def train_command(self, run: Run) -> list[str]:
        cmd = ["python", "-m", MODELS[run.model], _rel(self.shard_dir(run.train)), *self.run_options(run)]
        if run.adapt:
            cmd += ["--adapt", run.adapt]
        for name, sh in run.evals:
            cmd += ["--eval", f"{name}={_rel(self.shard_dir(sh))}"]
        if self.device:
            cmd += ["--device", self.device]
        return cmd + ["--out", _rel(self.run_dir(run))]

    def conditions(self) -> list[Condition]:
        conds = self.figure.conditions
        if self.only:
            import fnmatch

            conds = [c for c in conds if any(fnmatch.fnmatchcase(c.name, p) for p in self.only)]
            if not conds:
                raise PpdataError(f"--only {','.join(self.only)}: no condition of {self.figure.name} matches "
                                  f"(conditions: {', '.join(c.name for c in self.figure.conditions)})")
        return conds

    def steps(self) -> list[Step]:
        """Every distinct preparation step of the selected conditions, in order."""
        seen: dict[Path, Step] = {}
        for c in self.conditions():
            for sh in [c.run.train] + [s for _, s in c.run.evals]:
                for st in self.shard_steps(sh):
                    seen.setdefault(st.output, st)
        return list(seen.values())

    # ---- state -----------------------------------------------------------------------------

    @staticmethod
    def run_state(run_dir: Path) -> str:
        """done (metrics.json complete), resume (a checkpoint), restart (files, no checkpoint), new."""
        m = run_dir / "metrics.json"
        if m.is_file():
            try:
                if json.loads(m.read_text()).get("complete"):
                    return "done"
            except (OSError, json.JSONDecodeError):
                pass
        if (run_dir / "checkpoint.pt").is_file():
            return "resume"
        if any((run_dir / n).exists() for n in ("metrics.json", "log.csv")):
            return "restart"
        return "new"

    def state_command(self, run: Run) -> list[str]:
        cmd = self.train_command(run)
        state = self.run_state(self.run_dir(run))
        if state == "resume":
            cmd.append("--resume")
        elif state == "restart":
            cmd.append("--overwrite")
        return cmd

    # ---- dry run ---------------------------------------------------------------------------

    def describe(self) -> str:
        conds = self.conditions()
        steps = self.steps()
        states = [self.run_state(self.run_dir(c.run)) for c in conds]
        lines = [f"# {self.figure.name}: {self.figure.title}",
                 f"# profile {self.profile}; data {self.data.describe()}; work {_rel(self.work)}; "
                 f"results {_rel(self.results)}",
                 f"# {len(conds)} conditions: {states.count('done')} done, {states.count('resume')} to resume, "
                 f"{len(conds) - states.count('done') - states.count('resume')} to run; "
                 f"{len(steps)} preparation steps, {sum(s.done for s in steps)} cached", "",
                 "# preparation (cached steps are commented out)"]
        if any("--key-file" in st.command and not st.done for st in steps):
            lines.append(shlex.join(["mkdir", "-p", _rel(self.work / "keys")]) + "   # client-side key files")
        for st in steps:
            lines.append(("# " if st.done else "") + shlex.join(st.command))
        lines += ["", "# conditions"]
        for i, (c, s) in enumerate(zip(conds, states), 1):
            lines.append(f"# [{i}/{len(conds)}] {c.name}: {c.group} / {c.series}: {s}")
            lines.append(("# " if s == "done" else "") + shlex.join(self.state_command(c.run)))
        return "\n".join(lines)

    # ---- execution -------------------------------------------------------------------------

    def _exec(self, cmd: list[str]) -> list[str]:
        return [sys.executable, *cmd[1:]] if cmd and cmd[0] == "python" else cmd

    def run_step(self, st: Step, say) -> None:
        st.log.parent.mkdir(parents=True, exist_ok=True)
        cmd = list(st.command)
        if st.output.exists() and st.output.is_dir() and any(st.output.iterdir()):
            cmd.append("--overwrite")  # an interrupted folder of ours
        say(f"  {st.what}: {shlex.join(cmd)}")
        if "--key-file" in cmd:
            Path(cmd[cmd.index("--key-file") + 1]).parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(st.log, "w") as log:
            r = subprocess.run(self._exec(cmd), stdout=log, stderr=subprocess.STDOUT, env=_child_env())
        if r.returncode != 0:
            tail = st.log.read_text(errors="replace").strip().splitlines()[-5:]
            raise PpdataError(f"{st.what} failed (exit {r.returncode}); {_rel(st.log)}:\n    " + "\n    ".join(tail))
        say(f"    done in {time.perf_counter() - t0:.1f}s")

    def run_condition(self, c: Condition, say) -> Outcome:
        rd = self.run_dir(c.run)
        if self.run_state(rd) == "done":
            say(f"  reusing {_rel(rd)} (finished)")
            return Outcome(c, rd, "done", json.loads((rd / "metrics.json").read_text()))
        for sh in [c.run.train] + [s for _, s in c.run.evals]:
            for st in self.shard_steps(sh):
                if not st.done:
                    self.run_step(st, say)
        cmd = self.state_command(c.run)
        say(f"  {shlex.join(cmd)}")
        rd.mkdir(parents=True, exist_ok=True)
        rc = _tee(self._exec(cmd), rd / "console.log")
        if rc != 0:
            return Outcome(c, rd, "failed", error=f"training exited with {rc}; see {_rel(rd / 'console.log')}")
        return Outcome(c, rd, "done", json.loads((rd / "metrics.json").read_text()))

    def execute(self, say=lambda m: print(m, file=sys.stderr, flush=True)) -> list[Outcome]:
        """Run every selected condition (finished ones are reused); failures do not stop the others."""
        out: list[Outcome] = []
        conds = self.conditions()
        for i, c in enumerate(conds, 1):
            say(f"[{i}/{len(conds)}] {self.figure.name} {c.name} ({c.group} / {c.series})")
            try:
                o = self.run_condition(c, say)
            except PpdataError as e:
                o = Outcome(c, self.run_dir(c.run), "failed", error=str(e))
            except KeyboardInterrupt:
                say("Interrupted: run the same command again to continue (finished conditions are reused).")
                raise
            if o.error:
                say(f"  FAILED: {o.error}")
            out.append(o)
        return out

    def collect(self) -> list[Outcome]:
        """The outcomes as they stand on disk, without running anything (for reports)."""
        res = []
        for c in self.conditions():
            rd = self.run_dir(c.run)
            if self.run_state(rd) == "done":
                res.append(Outcome(c, rd, "done", json.loads((rd / "metrics.json").read_text())))
            else:
                res.append(Outcome(c, rd, "pending"))
        return res

    # ---- table2 (the attack package) ------------------------------------------------------

    def attack_command(self, out: Path) -> list[str]:
        cmd = ["python", "-m", "attack.coa", *ATTACK_PROFILES[self.profile]]
        if self.data.kind == "sample":
            cmd += ["--source", "sample"]
        elif self.data.kind == "split-archives":
            a = {p.name.split(".")[0]: p for p in self.data.archives}
            if self.data.subset:
                raise PpdataError("table2: --subset does not apply; limit the attack with "
                                  "--train-args '--train-limit N --test-limit M'")
            cmd += ["--source", "folder", "--train", _rel(a["train"]), "--test", _rel(a["test"])]
        elif self.data.kind == "torchvision":
            cmd += ["--source", self.data.spec, "--root", self.data.encrypt_args[-1]]
        else:
            raise PpdataError(f"table2: --data {self.data.spec}: give sample, a torchvision name or a folder with "
                              f"train and test archives")
        if self.device:
            cmd += ["--device", self.device]
        cmd += list(self.extra)
        return cmd + ["--out", _rel(out)]

    def attack_dir(self) -> Path:
        key = content_key({"data": self.data.identity, "attack": list(ATTACK_PROFILES[self.profile]) + self.extra})
        return self.work / "attack" / f"coa-{self.profile}-{key}"


def attack_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("attack.coa") is not None
    except (ImportError, ValueError):
        return False


def _child_env() -> dict:
    """The environment of the subprocesses: ours, with this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        env["PYTHONPATH"] = os.pathsep.join([root, *parts])
    return env


def _tee(cmd: list[str], log_path: Path) -> int:
    """Run ``cmd``, copying its output (stdout and stderr) to our stderr and to ``log_path``."""
    with open(log_path, "ab") as log:
        log.write(f"$ {shlex.join(cmd)}\n".encode())
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_child_env())
        assert p.stdout is not None
        try:
            while chunk := p.stdout.read1(65536):
                sys.stderr.buffer.write(chunk)
                sys.stderr.buffer.flush()
                log.write(chunk)
        except KeyboardInterrupt:
            p.wait()
            raise
        return p.wait()
