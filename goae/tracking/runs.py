"""Pipeline and stage runs: one parent run per pipeline execution (keyed by the DVC experiment name,
or git revision + params hash), one child per stage, and the post-run tagging with DVC's experiment commits."""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from goae.config import flatten
from goae.config import params_hash as _params_hash
from goae.tracking.store import (MAX_PARAM_LEN, MAX_PARAMS_PER_BATCH, _attempt, _batches, _client, _env, _root,
                                 check_tracking_available, experiment_id, experiment_name, tracking_uri)


@dataclass(frozen=True)
class StageRun:
    run_id: str
    parent_id: str


def _git(*args: str, cwd: str | os.PathLike | None = None) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_rev() -> str:
    return _git("rev-parse", "HEAD") or "nogit"


def load_params(path: str | os.PathLike = "params.yaml") -> dict:
    """The experiment's params: read from the cwd (an executor copy under --temp), not DVC_ROOT."""
    import yaml
    p = Path(path)
    return (yaml.safe_load(p.read_text()) or {}) if p.is_file() else {}


def params_hash(params: Mapping) -> str:
    """Short hash of the parsed params (comments and key order do not count): the plain-repro run key."""
    return _params_hash(params, 10)


def _safe(s: str) -> str:
    return re.sub(r"['\\]", "_", s)  # the search filter grammar has no string escapes


def pipeline_key(params: Mapping | None = None) -> str:
    if os.environ.get("PIPELINE_RUN_KEY"):
        return _safe(os.environ["PIPELINE_RUN_KEY"])
    if os.environ.get("DVC_EXP_NAME"):
        return _safe(f"exp:{os.environ['DVC_EXP_NAME']}")
    params = load_params() if params is None else params
    return f"repro:{git_rev()[:8]}:{params_hash(params)}"




def _param_str(v: Any) -> str:
    s = json.dumps(v, default=str) if isinstance(v, (list, tuple, type(None))) else str(v)
    return s[:MAX_PARAM_LEN]


def _log_params(client, run_id: str, params: Mapping | None, *, swallow: bool = True) -> None:
    from mlflow.entities import Param
    items = [Param(k, _param_str(v)) for k, v in flatten(params or {}).items()]
    for chunk in _batches(items, MAX_PARAMS_PER_BATCH):
        _attempt("logging params", lambda c=chunk: client.log_batch(run_id, params=c), swallow=swallow)


def _common_tags(params: Mapping, key: str) -> dict[str, str]:
    rev = git_rev()
    return {"dvc.pipeline_key": key, "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
            "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV") or rev,
            "git.rev": rev, "params.hash": params_hash(params)}


def get_or_create_parent(params: Mapping) -> str:
    """Run id of the RUNNING pipeline run for this key, created (with all params) if none.

    A FINISHED/FAILED parent is never reused: the evaluate stage finishes the parent, so a later
    stage with the same key (e.g. `dvc repro` of uncommitted edits) is a new execution.
    """
    client = _client()
    exp = experiment_id(client)
    key = pipeline_key(params)
    flt = (f"tags.`dvc.pipeline_key` = '{key}' and tags.`dvc.role` = 'pipeline' "
           "and attributes.status = 'RUNNING'")
    found = _attempt("searching the pipeline run", swallow=False, fn=lambda: client.search_runs(
        [exp], flt, order_by=["attributes.start_time ASC"], max_results=1))
    if found:
        return found[0].info.run_id
    name = key[4:] if key.startswith("exp:") else key
    tags = {**_common_tags(params, key), "dvc.role": "pipeline"}
    run = _attempt("creating the pipeline run", swallow=False,
                   fn=lambda: client.create_run(exp, tags=tags, run_name=name))
    _log_params(client, run.info.run_id, params, swallow=False)
    return run.info.run_id


@contextlib.contextmanager
def stage_run(stage: str | None = None, stage_params: Mapping | None = None, *,
              params: Mapping | None = None, tags: Mapping[str, str] | None = None
              ) -> Iterator[StageRun]:
    """Child run for one DVC stage; the fluent API (`mlflow.log_metric`, autolog) logs into it.

    `params` is the whole params.yaml (read from the cwd when None); `stage_params` the stage's own.
    """
    check_tracking_available()
    import mlflow
    stage = stage or os.environ.get("DVC_STAGE") or "stage"
    params = load_params() if params is None else params
    parent = get_or_create_parent(params)
    client = _client()
    mlflow.set_tracking_uri(tracking_uri())
    child_tags = {**_common_tags(params, pipeline_key(params)), "dvc.role": "stage",
                  "dvc.stage": stage, **(tags or {})}
    run_id = mlflow.start_run(run_name=stage, experiment_id=experiment_id(client),
                              parent_run_id=parent, tags=child_tags).info.run_id
    status = "FINISHED"
    try:
        _log_params(client, run_id, stage_params)
        yield StageRun(run_id, parent)
    except BaseException as e:
        # Without this a failed pipeline leaves its parent RUNNING forever.
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        _attempt(f"marking the pipeline run {status}", lambda: client.set_terminated(parent, status))
        raise
    finally:  # not `with start_run()`: a store hiccup at the very end must not fail finished work
        _attempt(f"marking the stage run {status}", lambda: _end_run(client, run_id, status))


def _end_run(client, run_id: str, status: str) -> None:
    import mlflow
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run(status)  # pops the fluent run stack first, then marks the run
    else:  # a retry after end_run popped the stack but failed to write
        client.set_terminated(run_id, status)



# ----------------------------------------------------------------------------- post-run sync

_EXP_REF = re.compile(r"refs/exps/([0-9a-f]{2})/([0-9a-f]{38})/([^/]+)")


def sync_exp_refs(root: str | os.PathLike | None = None) -> int:
    """Tag pipeline runs with the experiment commit DVC made after they ended; idempotent.

    Refs are `refs/exps/<baseline[:2]>/<baseline[2:]>/<name>`; a run matches on dvc.exp_name and
    dvc.baseline_rev. Returns the number of runs tagged.
    """
    root = _root(root)
    out = _git("for-each-ref", "--format=%(objectname) %(refname)", "refs/exps", cwd=root) or ""
    refs = [(sha, ref, _EXP_REF.fullmatch(ref)) for sha, ref in (ln.split(" ", 1)
                                                                 for ln in out.splitlines() if " " in ln)]
    refs = [(sha, ref, m) for sha, ref, m in refs if m]
    if not refs:
        return 0
    _env()
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri(root))
    exp = client.get_experiment_by_name(experiment_name())
    if exp is None:
        return 0
    n = 0
    for sha, ref, m in refs:
        baseline, name = m[1] + m[2], m[3]
        runs = client.search_runs([exp.experiment_id], f"tags.`dvc.role` = 'pipeline' and "
                                  f"tags.`dvc.exp_name` = '{_safe(name)}'", max_results=1000)
        for r in runs:
            t = r.data.tags
            if t.get("dvc.baseline_rev") not in (None, "", baseline) or t.get("dvc.exp_rev") == sha:
                continue
            client.set_tag(r.info.run_id, "dvc.exp_rev", sha)
            client.set_tag(r.info.run_id, "dvc.exp_ref", ref)
            n += 1
    return n
