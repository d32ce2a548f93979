"""goae.tracking against a throwaway sqlite store (one DB per module: creating it costs seconds)."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import warnings

import numpy as np
import pytest

from goae import tracking

mlflow = pytest.importorskip("mlflow")
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

ENV_KEYS = ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "PIPELINE_RUN_KEY", "DVC_STAGE",
            "MLFLOW_EXPERIMENT_NAME", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlstore")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("DVC_ROOT", str(root))
        for k in ENV_KEYS:
            mp.delenv(k, raising=False)
        client = MlflowClient(uri)
        client.search_experiments()  # creates the tables once for the whole module
        yield root, client


@pytest.fixture
def env(store, monkeypatch, request, tmp_path):
    root, client = store
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", request.node.name)
    monkeypatch.chdir(tmp_path)  # not a git repo, no params.yaml: nothing leaks in from the checkout
    yield root, client
    assert mlflow.active_run() is None


def runs(client, flt=""):
    exp = client.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    return client.search_runs([exp.experiment_id], flt, max_results=1000)


def test_parent_by_key_params_and_child_tags(env, monkeypatch, tmp_path):
    root, client = env
    params = {"data": {"res": 64, "paths": ["a", "b"]},
              "many": {f"p{i:03d}": i * 0.5 for i in range(150)}}  # > 100: needs 2 batches
    monkeypatch.setenv("DVC_EXP_NAME", "exp-a")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "f" * 40)
    with tracking.stage_run("train_stage1", {"lr": 1e-4}, params=params) as r1:
        tracking.log_metrics({"loss": {"total": 2.0}}, step=1)
    with tracking.stage_run("train_stage2", {"lr": 5e-5}, params=params) as r2:
        pass
    assert r1.parent_id == r2.parent_id and r1.run_id != r2.run_id
    p = client.get_run(r1.parent_id)
    assert p.data.tags["dvc.role"] == "pipeline" and p.data.tags["dvc.pipeline_key"] == "exp:exp-a"
    assert p.data.tags["dvc.exp_name"] == "exp-a" and p.data.tags["dvc.baseline_rev"] == "f" * 40
    assert p.data.tags["git.rev"] == "nogit" and p.data.tags["params.hash"] == tracking.params_hash(params)
    assert p.info.run_name == "exp-a" and p.info.status == "RUNNING"
    assert len(p.data.params) == 152 and p.data.params["many.p149"] == "74.5"
    assert p.data.params["data.paths"] == '["a", "b"]' and p.data.params["data.res"] == "64"
    c1 = client.get_run(r1.run_id)
    assert c1.data.tags["dvc.role"] == "stage" and c1.data.tags["dvc.stage"] == "train_stage1"
    assert c1.data.tags["mlflow.parentRunId"] == r1.parent_id and c1.info.status == "FINISHED"
    assert c1.data.params == {"lr": "0.0001"} and c1.data.metrics == {"loss.total": 2.0}
    assert client.get_run(r2.run_id).data.tags["dvc.stage"] == "train_stage2"
    monkeypatch.setenv("DVC_EXP_NAME", "exp-b")
    with tracking.stage_run("train_stage2", {}, params=params) as r3:
        pass
    assert r3.parent_id != r1.parent_id
    assert len(runs(client, "tags.`dvc.role` = 'pipeline'")) == 2
    assert list(tmp_path.iterdir()) == []  # no run id (or anything else) written to the workspace


def test_pipeline_key_priority(env, monkeypatch, tmp_path):
    a, b = {"x": {"y": 1}}, {"x": {"y": 2}}
    ka = tracking.pipeline_key(a)
    assert ka.startswith("repro:nogit:") and len(ka.split(":")[2]) == 10
    assert ka != tracking.pipeline_key(b)
    (tmp_path / "params.yaml").write_text("# comment\nx:\n  y: 1\n")
    assert tracking.pipeline_key() == ka  # parsed params count, not formatting
    monkeypatch.setenv("DVC_EXP_NAME", "it's")
    assert tracking.pipeline_key(a) == "exp:it_s"  # quote cannot break the search filter
    monkeypatch.setenv("PIPELINE_RUN_KEY", "ci-42")
    assert tracking.pipeline_key(a) == "ci-42"
    assert tracking.flatten({"a": {"b": {"c": 1}}, "d": [1]}) == {"a.b.c": 1, "d": [1]}


def test_exception_marks_parent_failed(env, monkeypatch):
    _, client = env
    monkeypatch.setenv("PIPELINE_RUN_KEY", "boom")
    with pytest.raises(ZeroDivisionError):
        with tracking.stage_run("train_stage1", {}, params={}) as r:
            1 / 0
    assert client.get_run(r.parent_id).info.status == "FAILED"
    assert client.get_run(r.run_id).info.status == "FAILED"
    with tracking.stage_run("train_stage1", {}, params={}) as r2:  # a re-run is a new execution
        pass
    assert r2.parent_id != r.parent_id


def test_unreachable_or_broken_store_fails_fast(env, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    ran = []
    t0 = time.perf_counter()
    with pytest.raises(tracking.TrackingUnavailable, match="unreachable"):
        with tracking.stage_run("s", {}, params={}):
            ran.append(1)
    assert time.perf_counter() - t0 < 15 and not ran
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/missing/mlflow.db")
    with pytest.raises(tracking.TrackingUnavailable, match="missing or not writable"):
        tracking.check_tracking_available()
    (tmp_path / "bad.db").write_bytes(b"this is not a sqlite database" * 100)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/bad.db")
    with pytest.raises(tracking.TrackingUnavailable, match="cannot be opened"):
        tracking.check_tracking_available()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/new.db")
    tracking.check_tracking_available()  # a new DB in a writable folder is fine (MLflow creates it)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.tracking_uri() == f"sqlite:///{os.environ['DVC_ROOT']}/mlflow.db"


def test_log_metrics_retries_then_only_warns(env, monkeypatch):
    _, client = env
    monkeypatch.setattr(tracking.store, "RETRY_DELAYS_S", (0.01, 0.01, 0.01))
    real, calls = MlflowClient.log_batch, []

    def flaky(fails, code):
        def log_batch(self, run_id, metrics=(), **kw):
            calls.append(1)
            if metrics and len(calls) <= fails:
                raise MlflowException("database is locked", error_code=code)
            return real(self, run_id, metrics=metrics, **kw)
        return log_batch

    with tracking.stage_run("s", {}, params={}) as r:
        monkeypatch.setattr(MlflowClient, "log_batch", flaky(2, TEMPORARILY_UNAVAILABLE))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a retried success must not warn
            tracking.log_metrics({"loss": 0.25}, step=7)
        assert len(calls) == 3
        calls.clear()
        monkeypatch.setattr(MlflowClient, "log_batch", flaky(99, TEMPORARILY_UNAVAILABLE))
        with pytest.warns(tracking.TrackingWarning, match="logging metrics failed"):
            tracking.log_metrics({"loss": 0.5}, step=8)
        assert len(calls) == 4  # 1 + 3 retries, then give up without raising
        calls.clear()
        monkeypatch.setattr(MlflowClient, "log_batch", flaky(99, INVALID_PARAMETER_VALUE))
        with pytest.warns(tracking.TrackingWarning):
            tracking.log_metrics({"loss": 0.75}, step=9)
        assert len(calls) == 1  # a permanent error is not retried
        monkeypatch.setattr(MlflowClient, "log_batch", real)
        real_term, term_calls = MlflowClient.set_terminated, []

        def set_terminated(self, run_id, status=None, **kw):  # a hiccup while closing the run
            term_calls.append(status)
            if len(term_calls) == 1:
                raise MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE)
            return real_term(self, run_id, status, **kw)
        monkeypatch.setattr(MlflowClient, "set_terminated", set_terminated)
    assert term_calls == ["FINISHED", "FINISHED"]  # retried, and the stage did not fail
    assert client.get_run(r.run_id).info.status == "FINISHED"
    hist = client.get_metric_history(r.run_id, "loss")
    assert [(m.step, m.value) for m in hist] == [(7, 0.25)]


def test_finish_parent_copies_curves_and_artifacts(env, monkeypatch, tmp_path):
    root, client = env
    monkeypatch.setenv("PIPELINE_RUN_KEY", "full")
    steps = np.arange(0, 3000, 2)  # 1500 rows x 2 columns: > 1000 metrics per batch
    csv = tmp_path / "stage1.csv"
    csv.write_text("step,loss,id,phase\n" + "".join(f"{s},{1 / (1 + s)},{s % 7},warm\n" for s in steps))
    tsv = tmp_path / "stage2.tsv"
    tsv.write_text("loss\n0.5\n0.25\n")
    (tmp_path / "eval.json").write_text(json.dumps({"lpips": 0.1}))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    imgs = np.linspace(-1, 1, 5 * 3 * 4 * 4).reshape(5, 3, 4, 4)
    with tracking.stage_run("evaluate", {}, params={"a": 1}) as r:
        tracking.set_tags({"weights.generator": "ffhqrebalanced512-128.pkl:0123456789ab"})
        tracking.log_image_grid("recon", imgs)
        tracking.log_artifact(tmp_path / "eval.json")
        with pytest.warns(tracking.TrackingWarning, match="note='text' is not a number"):
            tracking.finish_parent({"celeba": {"lpips": 0.1, "id": 0.8}, "note": "text"},
                                   curves={"stage1": csv, "stage2": tsv},
                                   artifacts=[tmp_path / "eval.json"])
    p = client.get_run(r.parent_id)
    assert p.info.status == "FINISHED"
    assert p.data.metrics["celeba.lpips"] == 0.1 and "note" not in p.data.metrics
    hist = client.get_metric_history(r.parent_id, "stage1/loss")
    assert [m.step for m in hist] == steps.tolist()
    np.testing.assert_allclose([m.value for m in hist], 1 / (1 + steps))
    assert "stage1/phase" not in p.data.metrics  # a text column is not a curve
    assert [(m.step, m.value) for m in client.get_metric_history(r.parent_id, "stage2/loss")] \
        == [(0, 0.5), (1, 0.25)]
    assert sorted(a.path for a in client.list_artifacts(r.parent_id)) == ["dvc", "eval.json"]
    assert p.info.artifact_uri.startswith((root / "mlartifacts").as_uri())
    c = client.get_run(r.run_id)
    assert c.data.tags["weights.generator"] == "ffhqrebalanced512-128.pkl:0123456789ab"
    assert [a.path for a in client.list_artifacts(r.run_id, "images")] == ["images/recon.png"]
    grid = tracking.image_grid(imgs)
    assert grid.shape == (8, 12, 3) and grid[0, 0, 0] == 0 and grid[-1, -1].sum() == 0  # 3x2, 6th empty
    assert grid[4:8, 4:8].max() == 255  # 5th image (last) at row 1, col 1 holds the +1 end
    tracking.log_metrics({"after": 1.0})  # no active run: a silent no-op
    assert "after" not in client.get_run(r.run_id).data.metrics


def _git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


def test_sync_exp_refs_tags_once(env, monkeypatch, tmp_path):
    _, client = env
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "f").write_text("x")
    _git(repo, "add", "f")
    _git(repo, "commit", "-qm", "base")
    base = _git(repo, "rev-parse", "HEAD")
    _git(repo, "commit", "-q", "--allow-empty", "-m", "exp")
    exp_sha = _git(repo, "rev-parse", "HEAD")
    ref = f"refs/exps/{base[:2]}/{base[2:]}/lam5-3"
    _git(repo, "update-ref", ref, exp_sha)
    monkeypatch.setenv("DVC_EXP_NAME", "lam5-3")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", base)
    with tracking.stage_run("s", {}, params={}) as r:
        tracking.finish_parent({})
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)  # same name on another baseline
    with tracking.stage_run("s", {}, params={}) as other:
        pass
    assert other.parent_id != r.parent_id
    assert tracking.sync_exp_refs(repo) == 1
    assert "dvc.exp_rev" not in client.get_run(other.parent_id).data.tags
    t = client.get_run(r.parent_id).data.tags
    assert t["dvc.exp_rev"] == exp_sha and t["dvc.exp_ref"] == ref
    assert tracking.sync_exp_refs(repo) == 0  # idempotent
    assert tracking.sync_exp_refs(tmp_path) == 0  # not a git repo


@pytest.mark.slow  # 6-9 s on an idle machine, 25 s measured with the 2 cores shared
def test_server_serves_runs_over_rest(env, monkeypatch, tmp_path):
    root, client = env
    monkeypatch.setenv("PIPELINE_RUN_KEY", "rest")
    with tracking.stage_run("evaluate", {}, params={"k": 1}) as r:
        tracking.finish_parent({"rmse": 0.42})
    port = free_port()
    server_env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", os.environ["MLFLOW_TRACKING_URI"],
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as h:
                    if h.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", base)
        tracking.check_tracking_available()  # the health probe accepts a live server
        exp_id = client.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"]).experiment_id
        body = json.dumps({"experiment_ids": [exp_id],
                           "filter": "tags.`dvc.role` = 'pipeline'"}).encode()
        req = urllib.request.Request(base + "/api/2.0/mlflow/runs/search", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            found = json.load(resp)["runs"]
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # its own session: only the server and its workers
            proc.wait(5)
    assert [f["info"]["run_id"] for f in found] == [r.parent_id]
    info, data = found[0]["info"], found[0]["data"]
    assert info["status"] == "FINISHED"
    assert {m["key"]: m["value"] for m in data["metrics"]} == {"rmse": 0.42}
    assert {t["key"]: t["value"] for t in data["tags"]}["dvc.pipeline_key"] == "rest"
