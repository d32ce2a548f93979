"""What every DVC stage script shares: strict params first, tracking check, child run, atomic outs.

A stage script is `with stage("name", ["section", ...]) as ctx: ...`. Order matters for reliability:
1. params are parsed strictly (a bad value fails in a second, naming the key, before any work);
2. the tracking store is checked (an unreachable store fails at start, with no outs written);
3. the stage's outs are built in temporary siblings and moved into place only on success, so an
   interrupted stage leaves its outs absent (DVC then reports it as changed), never half-written.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

from goae import tracking
from goae.config import Params, load_params, section
from goae.train.loop import Dist, init_distributed, pick_device


class AtomicOutputs:
    """Build outs in `.<name>.tmp` siblings; `commit()` swaps them in; failures leave outs absent."""

    def __init__(self, *outs: str | Path):
        self.outs = [Path(o) for o in outs]
        self.tmp = {o: o.parent / f".{o.name}.tmp" for o in self.outs}
        for o in self.outs:
            _remove(o)           # a stale out must not survive a failed re-run
            _remove(self.tmp[o])
            o.parent.mkdir(parents=True, exist_ok=True)

    def dir(self, out: str | Path) -> Path:
        t = self.tmp[Path(out)]
        t.mkdir(parents=True, exist_ok=True)
        return t

    def file(self, out: str | Path) -> Path:
        return self.tmp[Path(out)]

    def commit(self) -> None:
        for o in self.outs:
            t = self.tmp[o]
            if not t.exists():
                raise RuntimeError(f"stage did not produce its out {o}")
        for o in self.outs:
            os.replace(self.tmp[o], o)

    def abort(self) -> None:
        for t in self.tmp.values():
            _remove(t)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


@dataclass
class StageContext:
    name: str
    params: Params
    raw_params: dict
    device: object
    dist: Dist
    outs: AtomicOutputs | None
    t0: float = field(default_factory=time.time)

    def log(self, msg: str) -> None:
        if self.dist.main:
            print(f"[{self.name}] {msg}", flush=True)

    def metrics(self, values: dict, step: int | None = None) -> None:
        if self.dist.main:
            tracking.log_metrics(values, step=step)


def _noop_ctx():
    return contextlib.nullcontext(None)


@contextlib.contextmanager
def stage(name: str, sections: list[str], outs: list[str] = (), params_path: str = "params.yaml",
          tags: dict | None = None) -> Iterator[StageContext]:
    try:
        params = load_params(params_path)
    except Exception as e:
        print(f"[{name}] invalid params: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    raw = yaml.safe_load(Path(params_path).read_text()) or {}
    d = init_distributed()
    if d.main:
        try:
            tracking.check_tracking_available()
        except tracking.TrackingUnavailable as e:
            print(f"[{name}] {e}", file=sys.stderr)
            raise SystemExit(3) from None
    device = pick_device(params.runtime)
    outs_obj = AtomicOutputs(*outs) if (outs and d.main) else None
    run = tracking.stage_run(name, section(params, *sections), params=raw, tags=tags) if d.main else _noop_ctx()
    ctx = StageContext(name, params, raw, device, d, outs_obj)
    try:
        with run:
            yield ctx
            if outs_obj is not None:
                outs_obj.commit()
            ctx.log(f"done in {time.time() - ctx.t0:.1f} s")
    except BaseException:
        if outs_obj is not None:
            outs_obj.abort()
        if not isinstance(sys.exc_info()[1], SystemExit):
            traceback.print_exc()
        raise
