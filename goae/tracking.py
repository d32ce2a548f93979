"""MLflow tracking for the DVC pipeline: one parent run per pipeline execution, one child per stage.

Knows runs, params and files, never model internals. Depends only on mlflow (imported lazily: the
import alone costs ~1.5 s), PyYAML and the standard library.

Layout (../shared/docs/dvc-mlflow.md §3):
- store: `MLFLOW_TRACKING_URI`, else `sqlite:///<ROOT>/mlflow.db` with ROOT = `DVC_ROOT` (the original
  repo root even inside `--temp`/queue executors) or the cwd. Always absolute: a relative URI under
  `dvc exp run --temp` lands in the executor copy, which DVC deletes.
- parent: found by tag `dvc.pipeline_key` (PIPELINE_RUN_KEY > `exp:<DVC_EXP_NAME>` >
  `repro:<git rev[:8]>:<params hash>`). No run id is ever written to a file: that would dirty DVC deps.
- child: `stage_run(stage, stage_params)`; a failure marks the parent FAILED and re-raises.
- logging helpers retry transient store errors with backoff, then only warn: a tracking hiccup must
  never cost the caller hours of training. Outside `stage_run` they are no-ops.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

DEFAULT_EXPERIMENT = "goae"
HEALTH_TIMEOUT_S = 5.0
RETRY_DELAYS_S = (0.5, 2.0, 5.0)  # a sqlite lock or a server restart usually clears within seconds
MAX_PARAMS_PER_BATCH = 100        # MLflow log_batch limits
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_LEN = 6000
# MLflow error codes that no retry can fix (everything else, e.g. TEMPORARILY_UNAVAILABLE for
# "database is locked" or a connection error, is retried).
_PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
              "INVALID_STATE", "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED"}


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be used; raised at stage start, before any work."""


class TrackingWarning(UserWarning):
    """A logging call failed after its retries; the run goes on without that record."""


@dataclass(frozen=True)
class StageRun:
    run_id: str
    parent_id: str


# ----------------------------------------------------------------------------- environment

def _env() -> None:
    # Inside functions, not at import: importing goae must have no side effects.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _root(root: str | os.PathLike | None = None) -> Path:
    return Path(root or os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri(root: str | os.PathLike | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{_root(root) / 'mlflow.db'}"


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


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
    """sha1 of the parsed params (canonical JSON), so comments and key order do not count."""
    blob = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def _safe(s: str) -> str:
    return re.sub(r"['\\]", "_", s)  # the search filter grammar has no string escapes


def pipeline_key(params: Mapping | None = None) -> str:
    if os.environ.get("PIPELINE_RUN_KEY"):
        return _safe(os.environ["PIPELINE_RUN_KEY"])
    if os.environ.get("DVC_EXP_NAME"):
        return _safe(f"exp:{os.environ['DVC_EXP_NAME']}")
    params = load_params() if params is None else params
    return f"repro:{git_rev()[:8]}:{params_hash(params)}"


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys (`train1.lr`); lists stay one value."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _param_str(v: Any) -> str:
    s = json.dumps(v, default=str) if isinstance(v, (list, tuple, type(None))) else str(v)
    return s[:MAX_PARAM_LEN]


# ----------------------------------------------------------------------------- store access

def _client():
    _env()
    from mlflow.tracking import MlflowClient  # stores are cached per URI inside mlflow
    return MlflowClient(tracking_uri())


def _transient(e: BaseException) -> bool:
    return getattr(e, "error_code", None) not in _PERMANENT


def _attempt(what: str, fn, *, swallow: bool = True):
    """fn() with retries on transient errors; afterwards warn (swallow) or raise."""
    for delay in (*RETRY_DELAYS_S, None):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - store errors come in many types
            if delay is None or not _transient(e):
                if not swallow:
                    raise
                warnings.warn(f"goae.tracking: {what} failed, continuing without it "
                              f"({type(e).__name__}: {e})", TrackingWarning, stacklevel=3)
                return None
            time.sleep(delay)


def _batches(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _log_params(client, run_id: str, params: Mapping | None, *, swallow: bool = True) -> None:
    from mlflow.entities import Param
    items = [Param(k, _param_str(v)) for k, v in flatten(params or {}).items()]
    for chunk in _batches(items, MAX_PARAMS_PER_BATCH):
        _attempt("logging params", lambda c=chunk: client.log_batch(run_id, params=c), swallow=swallow)


def check_tracking_available(uri: str | None = None) -> None:
    """Fail fast (seconds, not the 249 s of MLflow's HTTP retries) when the store is unusable."""
    _env()
    uri = uri or tracking_uri()
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme == "sqlite":
        path = uri.split("://", 1)[1].split("?", 1)[0][1:]  # drop the empty netloc's '/'
        if path in ("", ":memory:"):
            return
        db = Path(path).resolve()
        if not db.parent.is_dir() or not os.access(db.parent, os.W_OK | os.X_OK):
            raise TrackingUnavailable(f"MLflow store {uri}: directory {db.parent} is missing or "
                                      "not writable")
        if db.exists():
            try:
                con = sqlite3.connect(f"{db.as_uri()}?mode=rw", uri=True, timeout=5)
                try:
                    con.execute("SELECT count(*) FROM sqlite_master").fetchone()
                finally:
                    con.close()
            except sqlite3.Error as e:
                raise TrackingUnavailable(f"MLflow store {uri} cannot be opened: {e}") from e
    elif scheme in ("http", "https"):
        # Later calls go through our own retries: cap MLflow's (7 retries, 120 s timeout by default).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S) as r:
                status = r.status
        except (urllib.error.URLError, OSError, ValueError) as e:
            status = e
        if status != 200:
            raise TrackingUnavailable(
                f"MLflow tracking server {uri} is unreachable ({status}). Start it, or unset "
                f"MLFLOW_TRACKING_URI so stages log to sqlite:///{_root() / 'mlflow.db'}")
    elif scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        raise TrackingUnavailable(f"MLflow store {uri}: the file store is in maintenance mode in "
                                  "MLflow 3 and raises; use a sqlite:/// URI")


def experiment_id(client=None) -> str:
    """Id of the experiment, created with an absolute artifact location on first use."""
    from mlflow.exceptions import MlflowException
    client = client or _client()
    name = experiment_name()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        uri = tracking_uri()
        # Local stores: pin artifacts to the repo root (a --temp executor's cwd is deleted later).
        # A remote server picks its own (proxied) artifact root.
        loc = None if uri.startswith(("http:", "https:")) else (_root() / "mlartifacts").as_uri()
        try:
            return client.create_experiment(name, artifact_location=loc)
        except MlflowException:  # created concurrently by a parallel queue worker
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise TrackingUnavailable(f"MLflow experiment {name!r} is deleted: restore it "
                                  "(`mlflow experiments restore`) or set MLFLOW_EXPERIMENT_NAME")
    return exp.experiment_id


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


# ----------------------------------------------------------------------------- logging helpers

def _run_id(run_id: str | None) -> str | None:
    if run_id is not None:
        return run_id
    if "mlflow" not in sys.modules:  # no stage_run can be active; skip the 1.5 s import
        return None
    import mlflow
    active = mlflow.active_run()
    return active.info.run_id if active else None


def _metric_list(metrics: Mapping, step: int | None, ts: int | None = None):
    from mlflow.entities import Metric
    ts = ts or int(time.time() * 1000)
    out = []
    for k, v in flatten(metrics).items():
        try:
            out.append(Metric(k, float(v), ts, int(step or 0)))
        except (TypeError, ValueError):
            warnings.warn(f"goae.tracking: metric {k}={v!r} is not a number; skipped",
                          TrackingWarning, stacklevel=3)
    return out


def _log_metric_list(client, run_id: str, items: list, what: str) -> None:
    for chunk in _batches(items, MAX_METRICS_PER_BATCH):
        _attempt(what, lambda c=chunk: client.log_batch(run_id, metrics=c))


def log_metrics(metrics: Mapping[str, Any], step: int | None = None, *,
                run_id: str | None = None) -> None:
    """Log numbers (nested dicts -> dotted names) to the active stage run; never raises.

    One store transaction per call (~10 ms on sqlite, more under load): log every N steps and pass
    all of a step's numbers in one dict rather than calling per number.
    """
    if (run_id := _run_id(run_id)) is None:
        return
    _log_metric_list(_client(), run_id, _metric_list(metrics, step), "logging metrics")


def set_tags(tags: Mapping[str, Any], *, run_id: str | None = None) -> None:
    """E.g. weights provenance: {'weights.generator': 'ffhqrebalanced512-128.pkl:<sha256[:12]>'}."""
    if (run_id := _run_id(run_id)) is None:
        return
    from mlflow.entities import RunTag
    client = _client()
    items = [RunTag(k, str(v)) for k, v in tags.items()]
    for chunk in _batches(items, MAX_PARAMS_PER_BATCH):
        _attempt("setting tags", lambda c=chunk: client.log_batch(run_id, tags=c))


def log_artifact(path: str | os.PathLike, artifact_path: str | None = None, *,
                 run_id: str | None = None) -> None:
    """Copy a file (or a whole directory) into the run's artifacts; never raises."""
    if (run_id := _run_id(run_id)) is None:
        return
    client, p = _client(), Path(path)
    if p.is_dir():
        _attempt(f"logging artifacts {p}", lambda: client.log_artifacts(run_id, str(p), artifact_path))
    elif p.is_file():
        _attempt(f"logging artifact {p}", lambda: client.log_artifact(run_id, str(p), artifact_path))
    else:
        warnings.warn(f"goae.tracking: artifact {p} does not exist; skipped", TrackingWarning,
                      stacklevel=2)


def image_grid(images, nrow: int | None = None):
    """NCHW float images in [-1, 1] (numpy or torch) -> one HWC uint8 grid, row-major."""
    import numpy as np
    a = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if a.ndim == 3:
        a = a[None]
    n, c, h, w = a.shape
    if c == 1:
        a = np.repeat(a, 3, axis=1)
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * h, nrow * w, 3), np.uint8)
    u8 = np.clip(np.rint((a[:, :3] + 1) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    for i, im in enumerate(u8):
        r, col = divmod(i, nrow)
        grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = im
    return grid


def log_image_grid(name: str, images, nrow: int | None = None, *,
                   run_id: str | None = None) -> None:
    """Tile a batch into `images/<name>.png` of the active run; never raises."""
    if (run_id := _run_id(run_id)) is None:
        return
    grid, client = image_grid(images, nrow), _client()
    _attempt(f"logging image {name}",
             lambda: client.log_image(run_id, grid, artifact_file=f"images/{name}.png"))


def _is_number(x: Any) -> bool:
    try:
        float(x)
        return True
    except (TypeError, ValueError):
        return False


def _read_curve(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    return (list(rows[0].keys()) if rows else []), rows


def finish_parent(final_metrics: Mapping[str, Any], curves: Mapping[str, str | os.PathLike] | None = None,
                  artifacts: Iterable[str | os.PathLike] = (), *, parent_id: str | None = None) -> None:
    """Last stage: final metrics, curves copied from DVC history CSV/TSV files, artifacts, FINISHED.

    Each curve column `c` of `curves[name]` becomes metric `name/c` with the `step` column as step
    (the row index when there is none), so the MLflow UI charts every pipeline run's training.
    """
    client = _client()
    if parent_id is None:
        child = _run_id(None)
        if child is None:
            raise RuntimeError("finish_parent needs parent_id or an active stage_run")
        run = _attempt("reading the stage run", lambda: client.get_run(child))
        parent_id = run.data.tags.get("mlflow.parentRunId") if run else None
        if parent_id is None:
            return  # warned already (or a stage without parent: nothing to finish)
    _log_metric_list(client, parent_id, _metric_list(final_metrics, 0), "logging final metrics")
    ts = int(time.time() * 1000)
    for name, path in (curves or {}).items():
        cols, rows = _read_curve(Path(path))
        items = []
        for i, row in enumerate(rows):
            step = int(float(row["step"])) if row.get("step") not in (None, "") else i
            vals = {f"{name}/{c}": row[c] for c in cols if c != "step" and _is_number(row[c])}
            items += _metric_list(vals, step, ts)
        _log_metric_list(client, parent_id, items, f"copying curve {name}")
    for p in artifacts:
        log_artifact(p, run_id=parent_id)
    for f in ("dvc.yaml", "dvc.lock"):  # the pipeline definition that produced these numbers
        if Path(f).is_file():
            log_artifact(f, "dvc", run_id=parent_id)
    _attempt("marking the pipeline run FINISHED", lambda: client.set_terminated(parent_id, "FINISHED"))


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


if __name__ == "__main__":  # python -m goae.tracking sync [ROOT]
    if sys.argv[1:2] != ["sync"]:
        sys.exit("usage: python -m goae.tracking sync [ROOT]")
    print(f"tagged {sync_exp_refs(sys.argv[2] if len(sys.argv) > 2 else None)} pipeline run(s)")
