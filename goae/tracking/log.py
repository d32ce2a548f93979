"""Logging into the active stage run (metrics, tags, artifacts, image grids) and finishing the pipeline
run (final metrics, curves copied from the DVC plots, artifacts). Every call is a no-op outside a stage
run and never raises: a tracking hiccup must not cost hours of training."""
from __future__ import annotations

import csv
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

from goae.config import flatten
from goae.tracking.store import MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH, TrackingWarning, _attempt, _batches, _client


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
