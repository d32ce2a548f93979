"""Params as one DVC stage sees them: every `section.key` read is recorded, and reading an undeclared key fails.

DVC re-runs a stage when one of the params keys listed for it in `dvc.yaml` changes, so that list must be
exactly what the stage's code reads. `goae.pipeline` hands each stage a `ParamsView` restricted to its
`dvc.yaml` keys: a read outside them raises `UndeclaredParam` at once (so a missing declaration cannot go
unnoticed), and the keys actually read are recorded so the pipeline test can check that nothing is
declared that the code never reads. Library code needs no change: a view answers `p.loss.lambda5` like
`Params` does. Code that depends on a whole section (e.g. rendering the embedded world from `data`)
says so with `whole_section(p, "data")`, which counts as reading every key of it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from goae.config import ConfigError, Params, flatten, to_dict


class UndeclaredParam(RuntimeError):
    """A stage read a params key its dvc.yaml entry does not list (DVC would not re-run it on a change).
    Not an AttributeError, so `getattr(x, key, default)` cannot swallow it."""


def _expand(params: Params, declared: Iterable[str]) -> frozenset[str]:
    """Section names expand to all their keys; unknown sections/keys fail naming the entry."""
    out: set[str] = set()
    for entry in declared:
        name, _, key = str(entry).partition(".")
        sec = getattr(params, name, None)
        if sec is None or not dataclasses.is_dataclass(sec):
            raise ConfigError(f"declared params: unknown section {name!r} in {entry!r}")
        fields = [f.name for f in dataclasses.fields(sec)]
        if key and key not in fields:
            raise ConfigError(f"declared params: unknown key {entry!r} (known: {fields})")
        out.update([f"{name}.{key}"] if key else (f"{name}.{f}" for f in fields))
    return frozenset(out)


class _SectionView:
    __slots__ = ("_view", "_name", "_obj")

    def __init__(self, view: "ParamsView", name: str, obj: Any):
        object.__setattr__(self, "_view", view)
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_obj", obj)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        value = getattr(self._obj, key)  # AttributeError for a key no config has
        self._view._read(f"{self._name}.{key}")
        return value

    def __setattr__(self, key, value):
        raise AttributeError(f"params are read-only ({self._name}.{key})")

    def __repr__(self) -> str:
        return f"<params {self._name} as seen by stage {self._view.stage}>"


class ParamsView:
    """Read-only `Params` for one stage. `declared=None`: every key allowed (still recorded)."""

    def __init__(self, params: Params, declared: Iterable[str] | None = None, stage: str = "stage"):
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "stage", stage)
        object.__setattr__(self, "declared", None if declared is None else _expand(params, declared))
        object.__setattr__(self, "reads", set())

    def _read(self, key: str) -> None:
        if self.declared is not None and key not in self.declared:
            raise UndeclaredParam(f"stage {self.stage!r} reads params key {key!r}, which its dvc.yaml entry "
                                  f"does not list under params: add it there (DVC would not re-run the stage "
                                  f"when it changes)")
        self.reads.add(key)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _SectionView(self, name, getattr(self.params, name))

    def __setattr__(self, key, value):
        raise AttributeError("params are read-only")

    def unread(self) -> list[str]:
        """Declared keys the stage has not read (so far)."""
        return sorted((self.declared or frozenset()) - self.reads)


def whole_section(p, name: str):
    """The plain config object of section `name`, counted as reading all of its keys."""
    if isinstance(p, ParamsView):
        sec = getattr(p.params, name)
        for f in dataclasses.fields(sec):
            p._read(f"{name}.{f.name}")
        return sec
    return getattr(p, name)


def depends_on(p, *keys: str) -> None:
    """Count `keys` as read: the stage's result depends on them even in a run whose settings leave them
    unused (e.g. `assets.inception` with `eval.fid: false`), so dvc.yaml declares them and DVC re-runs the
    stage when they change. Undeclared keys fail here, as a read would."""
    if isinstance(p, ParamsView):
        for key in keys:
            p._read(key)


def stage_values(p, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """`{dotted key: value}` of what a stage depends on: its declared keys for a restricted view, every
    key otherwise (a plain `Params`, e.g. in tests). Read without recording: it is the fingerprint of
    the declaration, which the pipeline test proves equal to what the code reads."""
    params = p.params if isinstance(p, ParamsView) else p
    flat = flatten(to_dict(params))
    keys = p.declared if isinstance(p, ParamsView) and p.declared is not None else flat.keys()
    skip = set(exclude)
    return {k: flat[k] for k in sorted(keys) if k not in skip}
