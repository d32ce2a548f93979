"""What every DVC stage script shares: strict params first, tracking check, child run, atomic outs.

A stage script is a `main()` that parses its paths (given once, in its `dvc.yaml` cmd) and runs
`with stage("name", outs=[...]) as ctx: ...`. Order matters for reliability:
1. params are parsed strictly (a bad value fails in a second, naming the key, before any work), and
   `ctx.params` is a `ParamsView` restricted to the keys `dvc.yaml` lists for the stage: reading any other
   key fails (DVC would not re-run the stage when it changes);
2. the tracking store is checked (an unreachable store fails at start, with no outs written);
3. the stage's outs are built in temporary siblings and moved into place only on success, so an
   interrupted stage leaves its outs absent (DVC then reports it as changed), never half-written.

With `GOAE_PARAMS_AUDIT=<dir>` a finished stage writes `<dir>/<stage>.json` (declared and read keys); the
pipeline test uses it to prove every declared key is read. `training_main` is the one runner of both
training stage scripts.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import yaml

from goae import tracking
from goae.config import load_params
from goae.fileio import write_json_atomic
from goae.launch import maybe_torchrun
from goae.params_view import ParamsView, stage_values
from goae.runtime import Dist, init_distributed, pick_device

AUDIT_ENV = "GOAE_PARAMS_AUDIT"


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
    params: ParamsView
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


def declared_params(name: str, dvc_yaml: str | Path) -> list[str] | None:
    """The params keys `dvc.yaml` lists for stage `name` (None: no such file or stage, e.g. a test driver)."""
    try:
        spec = yaml.safe_load(Path(dvc_yaml).read_text()) or {}
    except FileNotFoundError:
        return None
    st = (spec.get("stages") or {}).get(name)
    return None if st is None else stage_params(st)


def stage_params(st: dict) -> list[str]:
    """A dvc.yaml stage's params entries: `- key` (params.yaml) or `- other.yaml: [key, ...]`."""
    keys: list[str] = []
    for entry in st.get("params") or []:
        keys += [str(k) for v in entry.values() for k in v] if isinstance(entry, dict) else [str(entry)]
    return keys


@contextlib.contextmanager
def stage(name: str, keys: list[str] | None = None, outs: list[str] = (), params_path: str = "params.yaml",
          tags: dict | None = None, torchrun: bool = False) -> Iterator[StageContext]:
    """`keys`: the params keys (or whole sections) the stage may read; None = its `dvc.yaml` entry (beside
    the params file), unrestricted when there is none. `torchrun`: relaunch under torchrun when
    `train.gpus * train.nnodes > 1` (goae.launch)."""
    try:
        params = load_params(params_path)
        declared = keys if keys is not None else declared_params(name, Path(params_path).with_name("dvc.yaml"))
        view = ParamsView(params, declared, stage=name)
    except Exception as e:
        print(f"[{name}] invalid params: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if torchrun:
        maybe_torchrun(view, sys.argv)  # train.gpus*nnodes > 1: re-exec under torchrun (never returns)
    raw = yaml.safe_load(Path(params_path).read_text()) or {}
    d = init_distributed()
    if d.main:
        try:
            tracking.check_tracking_available()
        except tracking.TrackingUnavailable as e:
            print(f"[{name}] {e}", file=sys.stderr)
            raise SystemExit(3) from None
    device = pick_device(view.runtime)
    outs_obj = AtomicOutputs(*outs) if (outs and d.main) else None
    run = tracking.stage_run(name, stage_values(view), params=raw, tags=tags) if d.main else _noop_ctx()
    ctx = StageContext(name, view, raw, device, d, outs_obj)
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
    if d.main and os.environ.get(AUDIT_ENV):
        write_json_atomic(Path(os.environ[AUDIT_ENV]) / f"{name}.json",
                          {"declared": sorted(view.declared or ()), "read": sorted(view.reads)})


def training_main(name: str, train: Callable, input_flag: str, input_help: str, argv=None,
                  keyword_inputs: dict[str, str] | None = None) -> None:
    """The runner of both training stage scripts: paths from the command line, torchrun relaunch, the
    stage context, then the summary, curve (a DVC plot) and weight tags. `train(p, data, <input>, out,
    state, curve, device, d, generator=..., log=..., metrics=...)` is goae.train.stages.train_stage1/2;
    `keyword_inputs` ({"--davg-dir": help}) are further optional paths passed as `davg_dir=`."""
    ap = argparse.ArgumentParser(prog=f"stages/{name}.py", description=f"DVC stage {name}")
    ap.add_argument("--data", required=True, help="prepared training split (EG3D dataset.json + images)")
    ap.add_argument("--generator", required=True, help="the generator folder written by `ingest`")
    ap.add_argument(input_flag, required=True, help=input_help)
    keyword_inputs = keyword_inputs or {}
    for flag, help_ in keyword_inputs.items():
        ap.add_argument(flag, default=None, help=help_)
    dest = lambda flag: flag.lstrip("-").replace("-", "_")  # noqa: E731  (argparse's attribute name)
    ap.add_argument("--out", required=True, help="weights folder (a DVC out)")
    ap.add_argument("--curve", required=True, help="loss curve CSV (a DVC plot)")
    ap.add_argument("--state", required=True, help="resume checkpoints (kept between runs, not a DVC out)")
    a = ap.parse_args(argv)
    with stage(name, outs=[a.out, a.curve], torchrun=True) as ctx:
        out = ctx.outs.dir(a.out) if ctx.outs else None
        curve = Path(a.state) / "curve.csv"
        r = train(ctx.params, a.data, getattr(a, dest(input_flag)), out, a.state, curve,
                  ctx.device, ctx.dist, generator=a.generator, log=ctx.log, metrics=ctx.metrics,
                  **{dest(f): getattr(a, dest(f)) for f in keyword_inputs})
        if ctx.dist.main:
            tracking.set_tags({f"weights.{k}": str(v) for k, v in r["provenance"].items()})
            write_json_atomic(out / "summary.json", dict(r))
            shutil.copyfile(curve, ctx.outs.file(a.curve))
            tracking.log_artifact(ctx.outs.file(a.curve))
