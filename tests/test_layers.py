"""The layers: the client runs without torch, ppdata imports neither train nor attack, no package
has an import cycle, and a missing extra is named in one line."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ppdata", "train", "attack")


SITECUSTOMIZE = textwrap.dedent("""
    # makes the modules named in PPDATA_BLOCK unimportable, as if not installed
    import importlib.abc, os, sys
    _blocked = set(filter(None, os.environ.get("PPDATA_BLOCK", "").split(",")))
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in _blocked:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, _Block())
""")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("site")
    (d / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return d


def _run(site: Path, block: list[str], args: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``python ARGS`` with the modules ``block`` unimportable."""
    env = {"PYTHONPATH": f"{site}:{REPO}", "PATH": "/usr/bin:/bin", "PPDATA_BLOCK": ",".join(block)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env)


def _modules(package: str) -> list[str]:
    root = REPO / package
    return sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                  for p in root.rglob("*.py") if p.name != "__main__.py")


def test_every_ppdata_module_imports_with_train_and_attack_unimportable(site):
    code = textwrap.dedent(f"""
        import importlib, sys
        for m in {_modules("ppdata")!r}:
            importlib.import_module(m)
        assert not any(k.split(".")[0] in ("train", "attack", "torch") for k in sys.modules), \\
            sorted(k for k in sys.modules if k.split(".")[0] in ("train", "attack", "torch"))
        print("ok")
    """)
    p = _run(site, ["train", "attack", "torch", "torchvision"], ["-c", code])
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def _imports(path: Path, top_level_only: bool) -> list[tuple[str, int]]:
    """Absolute module names imported by ``path`` (relative imports resolved), with line numbers."""
    tree = ast.parse(path.read_text())
    mod = ".".join(path.relative_to(REPO).with_suffix("").parts)
    pkg = mod.rsplit(".", 1)[0] if path.name != "__init__.py" else mod.removesuffix(".__init__")
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            out.append((name, node.lineno))
            out += [(f"{name}.{a.name}", node.lineno) for a in node.names]
    return out


def test_core_reaches_up_only_from_the_cli_and_only_lazily():
    bad = []
    for path in (REPO / "ppdata").rglob("*.py"):
        for name, line in _imports(path, top_level_only=False):
            if name.split(".")[0] in ("train", "attack"):
                lazy = (name, line) not in _imports(path, top_level_only=True)
                if not (path.name == "cli.py" and lazy):
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not bad, bad


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles_inside_a_package(package):
    mods = set(_modules(package))
    graph = {}
    for m in mods:
        path = REPO / Path(*m.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        deps = set()
        for name, _ in _imports(path, top_level_only=True):
            while name and name not in mods:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name and name != m and not m.startswith(name + "."):  # a submodule importing its parent
                deps.add(name)                                     # package's __init__ is not a cycle
        graph[m] = deps
    seen, stack = {}, []

    def visit(m):
        seen[m] = 1
        stack.append(m)
        for d in graph[m]:
            if seen.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in seen:
                visit(d)
        stack.pop()
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m)


EXTRAS_BLOCK = ["torch", "torchvision", "skimage", "scipy", "matplotlib"]  # what the extras install
CLIENT_BLOCK = ["torch", "torchvision", "train", "attack", "skimage", "scipy", "matplotlib"]


def test_the_client_runs_with_torch_unimportable(site, tmp_path):
    """encrypt, augment, info, preview, decrypt: the data owner's whole job without torch."""
    steps = [["encrypt", "sample", "--cs", "--keep-keys", "k.json"], ["augment", "shards"],
             ["info", "shards", "--verify"], ["preview", "shards", "-o", "g.png", "--plain", "sample"],
             ["decrypt", "shards", "--keys", "k.json", "--out", "plain", "--format", "png"],
             ["encrypt", "sample", "--format", "hdf5", "--scheme", "etc", "--out", "etc"]]
    for args in steps:
        p = _run(site, CLIENT_BLOCK, ["-m", "ppdata", "-q", *args], cwd=tmp_path)
        assert p.returncode == 0, (args, p.stderr)
    assert (tmp_path / "g.png").is_file() and len(list((tmp_path / "plain" / "test").rglob("*.png"))) == 100


def test_a_missing_extra_is_named_in_one_line(site, tmp_path):
    assert _run(site, CLIENT_BLOCK, ["-m", "ppdata", "-q", "encrypt", "sample"], cwd=tmp_path).returncode == 0
    p = _run(site, CLIENT_BLOCK, ["-m", "ppdata", "audit", "shards", "--plain", "sample", "--out", "r"], cwd=tmp_path)
    assert p.returncode == 1 and "pip install 'ppdata[attack]'" in p.stderr, p.stderr
    assert p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr
    for module, extra in (("train.resnet", "train"), ("train.experiments", "train"), ("attack.coa", "attack")):
        p = _run(site, EXTRAS_BLOCK, ["-m", module, "--help"], cwd=tmp_path)
        assert p.returncode == 1 and f"pip install 'ppdata[{extra}]'" in p.stderr, (module, p.stderr)
        assert "Traceback" not in p.stderr and p.stderr.strip().count("\n") == 0
