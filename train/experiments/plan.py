"""What each experiment runs: shard folders (ppdata commands), training runs, conditions.

Everything here is a frozen description; ``runner`` turns it into paths (content-keyed under
``--work``) and commands. A shard folder is a ``ppdata encrypt`` (optionally with ``--augment``,
the plain-domain framework) and optionally a ``ppdata augment`` of it (the encrypted-domain
framework). A run is one ``python -m train.resnet|densenet`` on a shard folder, evaluated on its
test split (Enc(Q)) and on plain Q.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

SCHEMES = ("plain", "pixel", "icip", "le", "etc", "chaos")
KEY_MODES = ("same", "independent")
MODELS = {"resnet": "train.resnet", "densenet": "train.densenet"}

# augmentation of the training split: name -> (ppdata encrypt --augment SPEC, ppdata augment options, factor).
# The shifts are the paper's set (the original and shifts by 4 right, down and diagonally: each factor
# counts the original; ppdata's default); "-diagonal" is the earlier reading, (+-4, +-4) without the
# original, kept to compare (docs/results.md).
AUGMENTS = {
    "none": (None, None, 1),
    "flip+shift": ("flip,shift", ("--shifts", "paper"), 8),
    "shift": ("shift", ("--no-flip", "--shifts", "paper"), 4),
    "flip": ("flip", ("--shift", "0"), 2),
    "flip+shift-diagonal": ("flip,shift,diagonal", ("--shifts", "diagonal"), 8),
    "shift-diagonal": ("shift,diagonal", ("--no-flip", "--shifts", "diagonal"), 4),
}
SHIFT_SETS = {"flip+shift": "paper", "shift": "paper", "flip+shift-diagonal": "diagonal", "shift-diagonal": "diagonal"}


@dataclass(frozen=True)
class Shards:
    """A shard folder. ``domain``: where ``augment`` happens, "plain" (``ppdata encrypt --augment``,
    every copy under its own key) or "encrypted" (``ppdata augment`` of the encrypted folder)."""

    scheme: str = "plain"
    cs: bool = False
    keys: str = "independent"
    augment: str = "none"
    domain: str = "encrypted"

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {self.scheme!r}")
        if self.keys not in KEY_MODES:
            raise ValueError(f"unknown key mode {self.keys!r}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"unknown augmentation {self.augment!r}")
        if self.domain not in ("plain", "encrypted"):
            raise ValueError(f"unknown augmentation domain {self.domain!r}")
        if self.domain == "plain" and self.augment != "none" and AUGMENTS[self.augment][0] is None:
            raise ValueError(f"augmentation {self.augment!r} exists in the encrypted domain only")

    @property
    def factor(self) -> int:
        return AUGMENTS[self.augment][2]

    @property
    def expanded_by_server(self) -> bool:
        return self.augment != "none" and self.domain == "encrypted"

    def parent(self) -> "Shards":
        """The folder ``ppdata augment`` expands (only when ``expanded_by_server``)."""
        return Shards(self.scheme, self.cs, self.keys, "none", "encrypted")

    def canonical(self) -> dict:
        """The fields that define the content (plain: no keys, no CS)."""
        d = asdict(self)
        if self.scheme == "plain":
            d.update(cs=False, keys=None)
        if self.augment == "none":
            d["domain"] = None
        if self.augment in SHIFT_SETS:  # the set is part of the content (the default changed in ppdata 0.2)
            d["shifts"] = SHIFT_SETS[self.augment]
        return d

    @property
    def slug(self) -> str:
        s = self.scheme
        if self.scheme in ("pixel", "icip"):
            s += "-npcs" if self.cs else "-np"
        if self.scheme != "plain":
            s += "-" + self.keys
        if self.augment != "none":
            s += f"-{self.augment.replace('+', '')}-{'enc' if self.domain == 'encrypted' else 'plain'}"
        return s

    def encrypt_options(self) -> list[str]:
        """Options of ``ppdata encrypt`` for this folder (or its parent), keys excluded."""
        if self.scheme == "plain":
            opts = ["--plain"]
        else:
            opts = ["--scheme", self.scheme]
            if self.scheme in ("pixel", "icip") and self.cs:
                opts.append("--cs")
        if self.augment != "none" and self.domain == "plain":
            opts += ["--augment", AUGMENTS[self.augment][0]]
        return opts

    def augment_options(self) -> list[str]:
        return list(AUGMENTS[self.augment][1])

    @property
    def label(self) -> str:
        if self.scheme == "plain":
            return "plain"
        name = {"pixel": "NP+CS" if self.cs else "NP", "icip": "ICIP NP+CS" if self.cs else "ICIP NP",
                "le": "Tanaka LE", "etc": "EtC", "chaos": "chaos+RC4"}[self.scheme]
        return name


@dataclass(frozen=True)
class Run:
    """One training run: ``model`` on ``train``, evaluated on its test split and on ``evals``.
    ``options``: training options of this run only (after the profile's), e.g. ``--input raw``."""

    model: str
    train: Shards
    adapt: str | None = None
    evals: tuple = (("plain", Shards("plain")),)
    options: tuple = ()

    @property
    def slug(self) -> str:
        return f"{self.model}-{self.train.slug}" + (f"-adapt-{self.adapt}" if self.adapt else "")

    def canonical(self) -> dict:
        d = {"model": self.model, "train": self.train.canonical(), "adapt": self.adapt,
             "evals": [[n, s.canonical()] for n, s in self.evals]}
        if self.options:  # (absent otherwise: the cache keys of runs without options stay as they were)
            d["options"] = list(self.options)
        return d


@dataclass(frozen=True)
class Condition:
    """A bar of a figure: ``name`` is unique within the figure; ``group`` the x-axis label,
    ``series`` the bar within the group."""

    name: str
    group: str
    series: str
    run: Run
    published: float | None = None  # accuracy published for this condition (percent), if any
    budget: str = ""  # cifar10-cpu: "full" (the recipe's) or "small" (SMALL_BUDGET)


@dataclass
class Figure:
    name: str
    title: str
    what: str                       # one paragraph: what the paper's figure shows, our reading
    conditions: list[Condition] = field(default_factory=list)
    metrics: tuple = (("test", "Enc(Q)"),)   # (eval set, label) columns shown per series
    chart: str = "test"             # the eval set drawn in the bar chart
    published_source: str = ""
    kind: str = "classification"    # or "attack"


# ---------------------------------------------------------------------------------------------
# the schemes compared in Figs. 8, 10, 12: (label, Shards fields, adaptation network)

COMPARED = [
    ("NP", dict(scheme="pixel", cs=False), None),
    ("NP+CS", dict(scheme="pixel", cs=True), None),
    ("ICIP NP + adapt.", dict(scheme="icip", cs=False), "icip"),
    ("ICIP NP+CS + adapt.", dict(scheme="icip", cs=True), "icip"),
    ("Tanaka LE + adapt.", dict(scheme="le"), "tanaka"),
    ("EtC", dict(scheme="etc"), None),
    ("chaos+RC4", dict(scheme="chaos"), None),
]
SERIES = {"same": "same key", "independent": "independent keys"}

# Published in the ICIP 2019 version (arXiv 1905.01827; ResNet-18, augmentation on the server,
# one common key): condition name -> top-1 accuracy on Enc(Q), percent.
ICIP2019 = {"plain": 92.98, "np-same": 85.15, "icip-np-same": 86.99, "npcs-same": 82.51, "icip-npcs-same": 86.16,
            "le-same": 56.41, "etc-same": 69.03, "chaos-same": 58.59}
ICIP2019_SOURCE = ("ICIP 2019 version (arXiv 1905.01827), ResNet-18, augmentation on the server, one common key; "
                   "client-side augmentation: NP 92.94%")


def _cond_name(fields: dict, adapt: str | None, keys: str) -> str:
    s = fields["scheme"]
    base = {"pixel": "npcs" if fields.get("cs") else "np",
            "icip": "icip-npcs" if fields.get("cs") else "icip-np"}.get(s, s)
    return f"{base}-{keys}"


def comparison(model: str, domain: str, published: dict | None = None, augment: str = "flip+shift") -> list[Condition]:
    """plain + every compared scheme under both key modes, ``augment`` (flip+shift x8) in ``domain``."""
    conds = [Condition("plain", "plain", "-", Run(model, Shards("plain", augment=augment, domain=domain)),
                       (published or {}).get("plain"))]
    for label, fields, adapt in COMPARED:
        for keys in KEY_MODES:
            name = _cond_name(fields, adapt, keys)
            sh = Shards(keys=keys, augment=augment, domain=domain, **fields)
            conds.append(Condition(name, label, SERIES[keys], Run(model, sh, adapt), (published or {}).get(name)))
    return conds


def augmentation_types(model: str) -> list[Condition]:
    """Fig. 11: no augmentation / shift only / flip only (and flip + shift), server side."""
    groups = [("plain", dict(scheme="plain"), None)] + [
        (f"{lab} ({SERIES[k]})", dict(keys=k, **f), k) for lab, f, _ in COMPARED[:2] for k in KEY_MODES]
    conds = []
    for label, fields, keys in groups:
        for aug in ("none", "shift", "flip", "flip+shift"):
            sh = Shards(augment=aug, domain="encrypted", **fields)
            base = "plain" if keys is None else _cond_name(fields, None, keys)
            conds.append(Condition(f"{base}-{aug.replace('+', '')}", label, aug, Run(model, sh)))
    return conds


# ---------------------------------------------------------------------------------------------
# cifar10-cpu: the paper's claims at the CPU recipe's scale (train/cpu.py), whole CIFAR-10

# the small budget: AirNet at a quarter of the width, 400,000 training images seen (8 epochs of the
# 50,000, or one epoch of a x8 expansion, two of a x4, four of a x2)
SMALL_WIDTHS = "32,128,128"
SMALL_IMAGES_EPOCHS = 8  # epochs of the unexpanded training split
SMALL_BUDGET = (f"AirNet {SMALL_WIDTHS.replace(',', '/')}, {SMALL_IMAGES_EPOCHS * 50}K training images seen "
                f"({SMALL_IMAGES_EPOCHS} epochs of 50K; a x8 expansion 1 epoch, x4 2, x2 4)")
RAW = ("--input", "raw")


def _small(sh: Shards, options: tuple = (), adapt: str | None = None) -> Run:
    """A small-budget run: flip + shift on the device for an unexpanded folder, none for an expansion."""
    epochs = SMALL_IMAGES_EPOCHS // sh.factor
    aug = ("--no-augment",) if sh.factor > 1 else ()
    return Run("resnet", sh, adapt, options=("--widths", SMALL_WIDTHS, "--epochs", str(epochs), *aug, *options))


def cpu_table() -> list[Condition]:
    """The conditions of ``cifar10-cpu`` (issue: the paper's table at CPU scale)."""
    npcs_i = dict(scheme="pixel", cs=True, keys="independent")
    full = [
        Condition("plain", "plain", "full budget", Run("resnet", Shards("plain")), budget="full"),
        Condition("np-independent", "NP, independent keys (fold)", "full budget",
                  Run("resnet", Shards("pixel", cs=False, keys="independent")), budget="full"),
        Condition("npcs-independent", "NP+CS, independent keys (fold)", "full budget",
                  Run("resnet", Shards(**npcs_i)), budget="full"),
        Condition("npcs-independent-raw", "NP+CS, independent keys (raw)", "full budget",
                  Run("resnet", Shards(**npcs_i), options=RAW), budget="full"),
        Condition("npcs-same", "NP+CS, one key (raw)", "full budget",
                  Run("resnet", Shards("pixel", cs=True, keys="same"), options=RAW), budget="full"),
    ]
    small = [Condition("plain-small", "plain", "small budget", _small(Shards("plain")), budget="small"),
             Condition("npcs-independent-small", "NP+CS, independent keys (fold)", "small budget",
                       _small(Shards(**npcs_i)), budget="small")]
    for keys in KEY_MODES:
        k = SERIES[keys]
        if keys == "same":
            small += [Condition("icip-npcs-same", "ICIP NP+CS (raw)", k,
                                _small(Shards("icip", cs=True, keys=keys), RAW), budget="small"),
                      Condition("icip-npcs-same-adapt", "ICIP NP+CS + adapt. (raw)", k,
                                _small(Shards("icip", cs=True, keys=keys), RAW, "icip"), budget="small")]
        small += [Condition(f"etc-{keys}", "EtC", k, _small(Shards("etc", keys=keys)), budget="small"),
                  Condition(f"le-{keys}-adapt", "Tanaka LE + adapt.", k, _small(Shards("le", keys=keys), (), "tanaka"),
                            budget="small"),
                  Condition(f"chaos-{keys}", "chaos+RC4", k, _small(Shards("chaos", keys=keys)), budget="small")]
    for name, aug, domain, label in [
            ("npcs-independent-x8-enc", "flip+shift", "encrypted", "x8 in the encrypted domain, f_d(Enc(T))"),
            ("npcs-independent-x8-plain", "flip+shift", "plain", "x8 in the plain domain, Enc(f_d(T))"),
            ("npcs-independent-none", "none", "encrypted", "no augmentation"),
            ("npcs-independent-shift", "shift", "encrypted", "shift only (x4, encrypted domain)"),
            ("npcs-independent-flip", "flip", "encrypted", "flip only (x2, encrypted domain)")]:
        sh = Shards(augment=aug, domain=domain, **npcs_i)
        run = _small(sh) if aug != "none" else Run("resnet", sh, options=(
            "--widths", SMALL_WIDTHS, "--epochs", str(SMALL_IMAGES_EPOCHS), "--no-augment"))
        small.append(Condition(name, label, "NP+CS, independent keys (fold)", run, budget="small"))
    return full + small


FIGURE_NAMES = ("fig8a", "fig8b", "fig10", "fig11", "fig12", "table2", "cifar10-cpu")


DIAGONAL_NOTE = (" Shift set of the earlier reading (`ppdata augment --shifts diagonal`: flip x the four "
                 "(+-4, +-4) translations, no copy unshifted), to compare with the paper's set: under one common "
                 "key it never shows the model the key in place.")


def figure(name: str, diagonal: bool = False) -> Figure:
    """The definition of experiment ``name`` (one of ``FIGURE_NAMES``); ``diagonal``: the
    expansion uses the earlier reading's shifts (+-4, +-4) instead of the paper's set (fig8a,
    fig8b, fig10, fig12)."""
    if diagonal:
        if name not in ("fig8a", "fig8b", "fig10", "fig12"):
            raise ValueError(f"--diagonal applies to fig8a, fig8b, fig10 and fig12 (the x8 expansion), not {name}")
        fig = figure(name)
        domain = "plain" if name == "fig8a" else "encrypted"
        fig.conditions = comparison("densenet" if name == "fig12" else "resnet", domain,
                                    ICIP2019 if name == "fig8b" else None, augment="flip+shift-diagonal")
        fig.title += ", earlier shift reading (diagonal)"
        fig.what += DIAGONAL_NOTE
        return fig
    if name == "fig8a":
        return Figure("fig8a", "Fig. 8(a): augmentation in the plain domain, Enc(f_d(T)) (ResNet-18)",
                      "Every training image is flipped and shifted by the client *before* encryption "
                      "(`ppdata encrypt --augment flip,shift`, x8), every copy under its own key in independent "
                      "mode. Accuracy on Enc(Q) for plain training, the proposed NP and NP+CS, and the compared "
                      "schemes, under one common key and under independent keys.",
                      comparison("resnet", "plain"))
    if name == "fig8b":
        return Figure("fig8b", "Fig. 8(b): augmentation in the encrypted domain, f_d(Enc(T)) (ResNet-18)",
                      "The server flips and shifts the encrypted images without any key (`ppdata augment`, x8). "
                      "Flip and shift commute with the per-pixel schemes (pixel, icip, chaos: each pixel keeps "
                      "its own key, moved with it) but not with the block-wise ones (EtC, LE), whose expanded "
                      "copies are no longer encryptions of the shifted images. Accuracy on Enc(Q).",
                      comparison("resnet", "encrypted", ICIP2019), published_source=ICIP2019_SOURCE)
    if name == "fig10":
        return Figure("fig10", "Fig. 10: plain test images Q, models trained on encrypted images (ResNet-18)",
                      "The models of Fig. 8(b) (augmentation in the encrypted domain) tested on the plain test "
                      "images Q as well as on Enc(Q). The runs are those of fig8b (same cache keys): running one "
                      "of the two experiments after the other trains nothing new.",
                      comparison("resnet", "encrypted"), metrics=(("test", "Enc(Q)"), ("plain", "plain Q")),
                      chart="plain")
    if name == "fig11":
        return Figure("fig11", "Fig. 11: kind of augmentation (encrypted domain, ResNet-18)",
                      "No augmentation, shift only (x4), flip only (x2) and flip + shift (x8), done by the server "
                      "on the encrypted images (`ppdata augment`), for plain training and the proposed NP and "
                      "NP+CS under both key modes. Accuracy on Enc(Q). The flip + shift runs are those of fig8b.",
                      augmentation_types("resnet"))
    if name == "fig12":
        return Figure("fig12", "Fig. 12: DenseNet-40-12, augmentation in the encrypted domain",
                      "Fig. 8(b)'s conditions with DenseNet (L = 40, k = 12) instead of ResNet-18. Accuracy on "
                      "Enc(Q) and on plain Q.",
                      comparison("densenet", "encrypted"), metrics=(("test", "Enc(Q)"), ("plain", "plain Q")))
    if name == "cifar10-cpu":
        return Figure("cifar10-cpu", "The paper's claims on the whole CIFAR-10, trained on a CPU (train/cpu.py)",
                      "Every condition trains the CPU recipe (`--profile cpu`: airbench94's network and tricks, "
                      "train/cpu.py) on the whole CIFAR-10 copy (50,000 training, 10,000 test images) and is tested "
                      "on Enc(Q) (the folder's own test split, encrypted as the training images were) and on plain "
                      "Q. Full budget: the recipe as it is (AirNet 64/256/256, its epochs), for plain training and "
                      "the proposed NP / NP+CS, under independent keys (fold input, the default) and, to compare, "
                      "NP+CS with stored pixels under independent keys and under one key. Small budget: "
                      f"{SMALL_BUDGET}, for the compared schemes under both key modes and the kinds and domains "
                      "of augmentation of NP+CS under independent keys.",
                      cpu_table(), metrics=(("test", "Enc(Q)"), ("plain", "plain Q")))
    if name == "table2":
        return Figure("table2", "Table 2: ciphertext-only attacks, mean SSIM / PSNR",
                      "The paper's 1x1 locally connected attack (and the attack package's stronger ones) against "
                      "NP and NP+CS under one key and independent keys, run by `python -m attack.coa`.",
                      kind="attack")
    raise ValueError(f"unknown experiment {name!r} (choose from {', '.join(FIGURE_NAMES)})")


# ---------------------------------------------------------------------------------------------
# profiles: the training options per harness profile


@dataclass(frozen=True)
class Profile:
    name: str
    train: tuple          # options for every training command
    model_options: dict   # model -> extra options
    epochs_for_factor: dict | None = None  # augmentation factor -> --epochs (None: the profile's own)

    def options(self, run: Run) -> list[str]:
        opts = list(self.train) + list(self.model_options.get(run.model, ()))
        if self.epochs_for_factor is not None:
            opts += ["--epochs", str(self.epochs_for_factor[run.train.factor])]
        return opts


PROFILES = {
    # the CPU recipe (train/cpu.py); the cifar10-cpu conditions add their budgets (plan.cpu_table)
    "cpu": Profile("cpu", ("--profile", "cpu"), {}),
    # the paper's schedules (train.resnet / train.densenet --profile paper), on the expanded shards
    "paper": Profile("paper", ("--profile", "paper"), {}),
    # minutes per condition on one GPU: 2M training images seen (40 epochs of 50K), no on-device augmentation;
    # the paper's input and evaluation (stored pixels, no test-time flip), not the fast recipe's defaults
    "fast": Profile("fast", ("--profile", "fast", "--no-augment", "--input", "raw", "--no-tta"), {},
                    {1: 40, 2: 20, 4: 10, 8: 5, 10: 4}),
    # seconds per condition on a CPU: tiny networks, one epoch (checks that everything runs)
    "smoke": Profile("smoke", ("--profile", "smoke", "--no-augment"),
                     {"resnet": ("--width", "4"), "densenet": ("--depth", "10", "--growth", "4")}),
}

# table2: options of python -m attack.coa per profile (data options are added by the runner)
ATTACK_PROFILES = {
    # the CPU recipe (train/cpu.py); the cifar10-cpu conditions add their budgets (plan.cpu_table)
    "cpu": Profile("cpu", ("--profile", "cpu"), {}),
    "paper": (),
    "fast": ("--epochs", "20", "--unet-epochs", "10"),
    "smoke": ("--epochs", "1", "--unet-epochs", "1", "--train-limit", "200", "--test-limit", "20",
              "--attacks", "encrypted,fold,coa-1x1"),
}
