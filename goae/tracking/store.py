"""MLflow store access: where the store is, a fast health check, the client and retries. Runs and
logging (goae.tracking.runs, goae.tracking.log) build on it. mlflow is imported lazily (~1.5 s)."""
from __future__ import annotations

import os
import sqlite3
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Iterator

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
