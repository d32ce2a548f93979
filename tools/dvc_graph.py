"""Code deps of the DVC stages, computed from imports (so editing any module a stage runs re-runs it).

For each stage of `dvc.yaml`, the script named in its `cmd` is parsed and every `goae` import is followed
(module level and inside functions, since a lazy import still runs that code), giving the set of files
inside `goae/` the stage can execute, package `__init__.py` files included. A stage's code deps are its
script plus those files; a folder may stand for files when every file under it is in the set.

    python tools/dvc_graph.py            # print each stage's computed code deps
    python tools/dvc_graph.py --check    # exit 1 when dvc.yaml misses (or has extra) code deps
    python tools/dvc_graph.py --write    # rewrite the code deps in dvc.yaml (data deps are kept)
"""
from __future__ import annotations

import argparse
import ast
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "goae"


def _module_file(mod: str, root: Path) -> Path | None:
    base = root.joinpath(*mod.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _imports(path: Path, root: Path) -> set[str]:
    """Dotted `goae...` modules imported anywhere in `path` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    rel = path.relative_to(root).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parent.parts)
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # `from goae.x import y`: y may be a module
    return {m for m in out if m == PKG or m.startswith(PKG + ".")}


def closure(script: str | Path, root: Path = ROOT) -> set[str]:
    """Files (relative posix paths) under goae/ that running `script` can execute."""
    todo, seen = [Path(root) / script], set()
    files: set[Path] = set()
    while todo:
        f = todo.pop()
        for mod in _imports(f, root):
            parts = mod.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
                sub = ".".join(parts[:i])
                if sub in seen:
                    continue
                seen.add(sub)
                mf = _module_file(sub, root)
                if mf is not None and mf not in files:
                    files.add(mf)
                    todo.append(mf)
    return {f.relative_to(root).as_posix() for f in files}


def compress(files: set[str], root: Path = ROOT) -> list[str]:
    """Folders whose every file is in `files` stand for them (shortest list, same coverage)."""
    out = set(files)
    for d in sorted({str(Path(f).parent.as_posix()) for f in files}, key=lambda s: -s.count("/")):
        folder = root / d
        everything = {p.relative_to(root).as_posix() for p in folder.rglob("*") if p.is_file()
                      and "__pycache__" not in p.parts}
        inside = {f for f in out if f == d or f.startswith(d + "/")}
        if everything and {e for e in everything} <= {f for f in files} | _covered(inside, root):
            out -= inside
            out.add(d)
    return sorted(out)


def _covered(entries: set[str], root: Path) -> set[str]:
    got = set()
    for e in entries:
        p = root / e
        got |= {q.relative_to(root).as_posix() for q in p.rglob("*") if q.is_file()} if p.is_dir() else {e}
    return got


def stage_script(cmd: str) -> str:
    """The script a `python stages/x.py ...` cmd runs."""
    args = shlex.split(cmd)
    return next(a for a in args if a.endswith(".py"))


def load_dvc_yaml(path: Path) -> dict:
    import yaml
    return yaml.safe_load(path.read_text())


def is_code_dep(dep: str) -> bool:
    return dep == PKG or dep.startswith(PKG + "/") or (dep.startswith("stages/") and dep.endswith(".py"))


def expected(spec: dict, root: Path = ROOT) -> dict[str, list[str]]:
    """Stage -> its code deps: script + compressed goae closure."""
    out = {}
    for name, st in spec["stages"].items():
        script = stage_script(st["cmd"])
        out[name] = [script] + compress(closure(script, root), root)
    return out


def check(spec: dict, root: Path = ROOT) -> dict[str, dict[str, list[str]]]:
    """Per stage: closure files the declared deps do not cover ('missing'), and code deps outside the
    closure ('extra'). Empty dict = dvc.yaml is current."""
    problems = {}
    for name, st in spec["stages"].items():
        script = stage_script(st["cmd"])
        need = closure(script, root) | {script}
        declared = {d for d in (st.get("deps") or []) if is_code_dep(d)}
        covered = _covered(declared, root)
        missing = sorted(need - covered)
        extra = sorted(d for d in declared if not (_covered({d}, root) & need))
        over = sorted(f for f in covered - need if f.endswith(".py"))  # a folder dep that covers unused modules
        if missing or extra or over:
            problems[name] = {"missing": missing, "extra": sorted(set(extra) | set(over))}
    return problems


def params_problems(spec: dict, audit_dir: str | Path) -> dict[str, dict[str, list[str]]]:
    """Compare each stage's dvc.yaml params with what it read in a run (the `GOAE_PARAMS_AUDIT` files
    goae.pipeline writes). 'unread': declared keys the code never read (a whole section listed instead of
    its keys is one of them: declarations are per key); 'undeclared': keys read but not listed (a stage
    restricted by dvc.yaml already fails on the first one; this also covers unrestricted runs);
    'no audit': the stage did not run. Empty dict = every stage declares exactly what it reads."""
    from goae.pipeline import stage_params
    out = {}
    for name, st in spec["stages"].items():
        f = Path(audit_dir) / f"{name}.json"
        if not f.is_file():
            out[name] = {"no audit": [str(f)]}
            continue
        declared, read = set(stage_params(st)), set(json.loads(f.read_text())["read"])
        if declared != read:
            out[name] = {"unread": sorted(declared - read), "undeclared": sorted(read - declared)}
    return out


def write(path: Path, root: Path = ROOT) -> None:
    """Replace each stage's code deps (first, in order) and keep its data deps, comments and layout."""
    from ruamel.yaml import YAML
    y = YAML()
    y.preserve_quotes = True
    y.width = 120
    y.indent(mapping=2, sequence=4, offset=2)
    doc = y.load(path.read_text())
    exp = expected(load_dvc_yaml(path), root)
    for name, st in doc["stages"].items():
        data = [d for d in (st.get("deps") or []) if not is_code_dep(d)]
        st["deps"] = exp[name] + data
    with open(path, "w") as f:
        y.dump(doc, f)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dvc-yaml", default=str(ROOT / "dvc.yaml"))
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true")
    g.add_argument("--write", action="store_true")
    a = ap.parse_args(argv)
    path = Path(a.dvc_yaml)
    if a.write:
        write(path)
        return 0
    spec = load_dvc_yaml(path)
    if a.check:
        problems = check(spec)
        for name, pr in problems.items():
            print(f"{name}: missing {pr['missing']} extra {pr['extra']}")
        return 1 if problems else 0
    for name, deps in expected(spec).items():
        print(name, *deps, sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
