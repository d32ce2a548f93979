"""Reliability of the training stages: resume, atomic outs, strict params, NaN guard, tracking failures.

Every test runs the real stage code on a tiny on-disk world (tests/_tiny.py); the subprocess tests run
`python stages/<stage>.py` exactly as DVC does, with a private sqlite MLflow store.
"""
from __future__ import annotations

import json
import math
import os
import runpy
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import _tiny
from _tiny import ROOT, copy_world, curve_steps, load_tensors, tiny_params, write_params

DVC = Path(sys.executable).parent / "dvc"
S1 = Path(".goae-state") / "train_stage1"
GEN = "models/generator"  # the tiny world's generator (tests run in the world folder)
DAVG = "models/davg"      # and its D_avg (stage 2 trains with λ5·L_BG)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-world")
    _tiny.build_world(root)
    _tiny.init_mlflow_db(root)
    return root


@pytest.fixture
def w(world, tmp_path) -> Path:
    return copy_world(world, tmp_path / "w")


@pytest.fixture
def in_process(w, monkeypatch):
    """Run stage scripts in this process (to patch them) in the world's cwd, with its MLflow store;
    restores what a stage changes process-wide (torch threads, mlflow's fluent tracking URI)."""
    monkeypatch.chdir(w)
    for k, v in _tiny.stage_env(w).items():
        if k != "PYTHONPATH" and os.environ.get(k) != v:
            monkeypatch.setenv(k, v)
    threads = torch.get_num_threads()
    try:
        from mlflow.tracking._tracking_service import utils as mlflow_utils
        monkeypatch.setattr(mlflow_utils, "_tracking_uri", mlflow_utils._tracking_uri)
    except (ImportError, AttributeError):
        pass
    yield w
    torch.set_num_threads(threads)


def _run_in_process(stage: str) -> None:
    """The stage script's main() with its dvc.yaml arguments, in this process."""
    argv = _tiny.stage_argv(stage)
    runpy.run_path(argv[1])["main"](argv[2:])


def _equal_tensors(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_outs(root: Path, stage: str = "stage1") -> None:
    """Neither the outs nor anything that could pass for them (tmp siblings are named `.x.tmp`)."""
    assert not (root / "models" / stage).exists()
    assert not (root / "plots" / f"{stage}.csv").exists()


# ------------------------------------------------------------------------------- resume

@pytest.mark.slow
def test_stage1_sigkill_and_resume_is_bit_exact(world, tmp_path):
    params = tiny_params(stage1={"iters": 4})          # checkpoints after steps 2 and 4 (final)
    ref, run = copy_world(world, tmp_path / "ref"), copy_world(world, tmp_path / "run")
    write_params(ref, params)
    write_params(run, params)
    ref_proc = _tiny.start_stage(ref, "train_stage1")  # the uninterrupted run, alongside
    try:
        # Killed once step 2 is done: the checkpoint holds step 2, step 2's work is lost and redone.
        _tiny.run_stage_killed(run, "train_stage1", after_step=2)
        state = json.loads((run / S1 / "state.json").read_text())
        assert state["step"] == 2, "killed after a checkpoint, not between two"
        ckpt = load_tensors(run / S1 / state["tensors"])
        _no_outs(run)
        r = _tiny.run_stage(run, "train_stage1")
        assert r.returncode == 0, r.stderr[-3000:]
        assert "resume: continuing from step 2" in r.stdout
    finally:
        try:
            ref_rc = ref_proc.wait(timeout=300)
        finally:
            if ref_proc.poll() is None:
                ref_proc.kill()
    assert ref_rc == 0, (ref / "train_stage1.log").read_text()[-3000:]
    for name in ("encoder", "discriminator"):
        a = load_tensors(ref / "models" / "stage1" / f"{name}.safetensors")
        b = load_tensors(run / "models" / "stage1" / f"{name}.safetensors")
        assert _equal_tensors(a, b) == [], f"{name}: resumed weights differ from the uninterrupted run"
    # Not vacuous: steps 2-3 (redone after the kill) moved the encoder away from the step-2 checkpoint.
    final = load_tensors(run / "models" / "stage1" / "encoder.safetensors")
    moved = [k for k, v in final.items() if not torch.equal(v, ckpt[f"encoder.{k}"])]
    assert moved, "training did not change the encoder after the checkpoint"
    # The loss curve (a DVC plot) is the uninterrupted one: no duplicated or missing steps.
    assert (run / "plots" / "stage1.csv").read_text() == (ref / "plots" / "stage1.csv").read_text()
    assert curve_steps(run / "plots" / "stage1.csv") == [0, 1, 2, 3]


@pytest.mark.slow
def test_stage2_interrupt_and_resume_is_bit_exact(w, monkeypatch):
    from goae.config import params_from_dict
    from goae.train import common, stages

    monkeypatch.chdir(w)
    p = params_from_dict(tiny_params(stage2={"iters": 3, "batch_size": 1}))
    E = common.build_encoder(p, {})
    common.save_module(w / "models" / "stage1" / "encoder", E, {"encoder": common.config_dict(E.cfg)})
    data, s1 = "data/prepared/train", "models/stage1"
    cpu = torch.device("cpu")
    ref = stages.train_stage2(p, data, s1, w / "ref", w / "ref-state", w / "ref.csv", cpu, generator=GEN, davg_dir=DAVG)
    assert ref["steps_run"] == 3

    real = stages.check_finite

    def dies_at_step_2(step, terms, ckpt):  # an interruption inside step 2, after the step-2 checkpoint
        if step == 2:
            raise KeyboardInterrupt
        return real(step, terms, ckpt)

    monkeypatch.setattr(stages, "check_finite", dies_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        stages.train_stage2(p, data, s1, w / "out", w / "state", w / "curve.csv", cpu, generator=GEN, davg_dir=DAVG)
    assert not (w / "out" / "afa.safetensors").exists()
    monkeypatch.setattr(stages, "check_finite", real)
    logs = []
    r = stages.train_stage2(p, data, s1, w / "out", w / "state", w / "curve.csv", cpu, generator=GEN, davg_dir=DAVG,
                            log=logs.append)
    assert r["steps_run"] == 1 and any("continuing from step 2" in m for m in logs), logs
    diff = _equal_tensors(load_tensors(w / "ref" / "afa.safetensors"), load_tensors(w / "out" / "afa.safetensors"))
    assert diff == [], f"resumed AFA differs from the uninterrupted run in {diff[:5]}"
    assert (w / "curve.csv").read_text() == (w / "ref.csv").read_text()


@pytest.mark.slow
def test_stage2_snapshot_equals_shorter_run(w, monkeypatch):
    """benchmarks/ablation.py --sweep evaluates the AFA after n steps of one long run as the n-step budget:
    that is only honest if the snapshot is bit-identical to a run of n steps, whatever the callback does."""
    from goae.config import params_from_dict
    from goae.train import common, stages

    monkeypatch.chdir(w)
    p3 = params_from_dict(tiny_params(stage2={"iters": 3, "batch_size": 1}))
    p2 = params_from_dict(tiny_params(stage2={"iters": 2, "batch_size": 1}))
    E = common.build_encoder(p3, {})
    common.save_module(w / "models" / "stage1" / "encoder", E, {"encoder": common.config_dict(E.cfg)})
    data, s1 = "data/prepared/train", "models/stage1"
    snaps = {}

    def on_step(n, afa):
        snaps[n] = {k: v.detach().clone() for k, v in afa.state_dict().items()}
        torch.rand(7)  # a callback that draws from the global RNG must not shift the next steps

    stages.train_stage2(p3, data, s1, w / "long", w / "long-state", w / "long.csv", torch.device("cpu"), generator=GEN,
                        davg_dir=DAVG, on_step=on_step)
    assert sorted(snaps) == [1, 2, 3]
    stages.train_stage2(p2, data, s1, w / "short", w / "short-state", w / "short.csv", torch.device("cpu"),
                        generator=GEN, davg_dir=DAVG)
    short = load_tensors(w / "short" / "afa.safetensors")
    assert _equal_tensors(short, snaps[2]) == []
    assert _equal_tensors(load_tensors(w / "long" / "afa.safetensors"), snaps[3]) == []
    assert _equal_tensors(short, snaps[3]) != []   # and the third step did change something


@pytest.mark.slow
def test_resume_only_when_params_and_inputs_are_unchanged(w, monkeypatch):
    """Unchanged → resume; a changed stage param, D_avg or training set → start fresh, saying so.
    (DVC re-runs the stage when any of them changes: resuming then would keep weights trained on
    the old inputs.)"""
    from safetensors.torch import save_file

    from goae.config import params_from_dict
    from goae.data.world import render_world
    from goae.params_view import ParamsView
    from goae.pipeline import declared_params
    from goae.train import common, stages

    monkeypatch.chdir(w)
    changed = False

    def train(**over):
        logs = []
        over = {"loss": {"lambda5": 3.0}, **over} if changed else over
        # as the pipeline passes them: the stage's dvc.yaml keys only (goae.pipeline.stage)
        p = ParamsView(params_from_dict(tiny_params(stage1={"iters": 1, "batch_size": 1}, **over)),
                       declared_params("train_stage1", ROOT / "dvc.yaml"), "train_stage1")
        r = stages.train_stage1(p, "data/prepared/train", "models/davg", w / "out", S1,
                                S1 / "curve.csv", torch.device("cpu"), generator=GEN, log=logs.append)
        return r["steps_run"], " | ".join(logs)

    assert train()[0] == 1
    n, log = train()
    assert n == 0 and "continuing from step 1" in log                        # unchanged: resumed
    assert train(eval={"n_celeba": 2})[0] == 0                              # not a stage-1 param
    assert train(loss={"lambda7": 0.001})[0] == 0                           # a stage-2 weight
    assert train(train={"log_every": 3})[0] == 0                            # logging only
    n, log = train(loss={"lambda5": 3.0})
    assert n == 1 and "params changed" in log and "starting fresh" in log, log
    assert curve_steps(S1 / "curve.csv") == [0]                             # fresh curve, from step 0
    changed = True                                                          # λ5 = 3 from here on
    t = load_tensors(w / "models" / "davg" / "davg.safetensors")
    save_file({k: v * 0.9 for k, v in t.items()}, str(w / "models" / "davg" / "davg.safetensors"))
    n, log = train()
    assert n == 1 and "starting fresh" in log, f"a new D_avg resumed old weights: {log}"
    shutil.rmtree(w / "data" / "prepared")
    G, _ = common.load_generator("models/generator")
    render_world(G, params_from_dict(tiny_params(data={"seed": 1})).data, w / "data" / "prepared", "cpu", batch=4)
    n, log = train()
    assert n == 1 and "starting fresh" in log, f"a new training set resumed old weights: {log}"


# --------------------------------------------------------------------------- atomic outs

@pytest.mark.slow
def test_interrupted_stage_leaves_outs_absent_and_dvc_reports_it(world, tmp_path):
    repo = copy_world(world, tmp_path / "repo")
    write_params(repo, tiny_params(stage1={"iters": 2}))
    (repo / "stages").mkdir()
    shutil.copy(ROOT / "stages" / "train_stage1.py", repo / "stages")
    pipeline = {"stages": {"train_stage1": {
        "cmd": yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train_stage1"]["cmd"],
        "deps": ["stages/train_stage1.py", "data/prepared", "models/generator", "models/davg"],
        "params": ["encoder", "loss", "stage1", "train", "runtime", "davg", "assets"],
        "outs": ["models/stage1"], "plots": [{"plots/stage1.csv": {"cache": False}}]}}}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    env = _tiny.stage_env(repo, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")

    def dvc(*args):
        return subprocess.run([str(DVC), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300)

    assert dvc("init", "--no-scm", "-q").returncode == 0
    r = dvc("repro")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert json.loads(dvc("status", "--json").stdout or "{}") == {}
    # Re-executed from scratch (no resume state) and killed during its first step.
    shutil.rmtree(repo / ".goae-state")
    _tiny.run_stage_killed(repo, "train_stage1", after_step=0)
    _no_outs(repo)
    leftovers = sorted(p.name for d in ("models", "plots") if (repo / d).is_dir() for p in (repo / d).iterdir()
                       if p.name not in ("generator", "davg"))
    assert all(n.startswith(".") and n.endswith(".tmp") for n in leftovers), leftovers
    status = json.loads(dvc("status", "--json").stdout)
    changed = {k: v for entry in status.get("train_stage1", []) if isinstance(entry, dict)
               for k, v in entry.get("changed outs", {}).items()}
    assert changed.get("models/stage1") == "deleted", status


def test_killed_stage_leftovers_are_cleared_by_the_next_run(tmp_path):
    from goae.pipeline import AtomicOutputs

    (tmp_path / "models" / ".stage1.tmp").mkdir(parents=True)
    (tmp_path / "models" / ".stage1.tmp" / "encoder.safetensors").write_bytes(b"half")
    (tmp_path / "models" / "stage1").mkdir()            # a stale out from an older run
    outs = AtomicOutputs(tmp_path / "models" / "stage1", tmp_path / "plots" / "stage1.csv")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == []
    outs.dir(tmp_path / "models" / "stage1")
    with pytest.raises(RuntimeError, match="plots/stage1.csv"):
        outs.commit()                                    # one out missing: nothing is moved into place
    assert not (tmp_path / "models" / "stage1").exists()
    outs.file(tmp_path / "plots" / "stage1.csv").write_text("step\n")
    outs.commit()
    assert (tmp_path / "models" / "stage1").is_dir() and (tmp_path / "plots" / "stage1.csv").is_file()
    assert not list(tmp_path.rglob("*.tmp"))


# --------------------------------------------------------------------------- strict params

def test_bad_params_fail_fast_naming_the_key(tmp_path):
    cases = {"value": ({"loss": {"lambda5": "abc"}}, "loss.lambda5"),
             "typo": ({"loss": {"lamda5": 5.0}}, "loss.lamda5"),
             "range": ({"train": {"checkpoint_every": 0}}, "train.checkpoint_every")}
    procs = {}
    for name, (over, _) in cases.items():
        d = tmp_path / name
        d.mkdir()
        write_params(d, tiny_params(**over))
        procs[name] = (time.time(), subprocess.Popen(
            _tiny.stage_argv("train_stage1"), cwd=d, env=_tiny.stage_env(d),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for name, (t0, proc) in procs.items():
        out, err = proc.communicate(timeout=120)
        elapsed = time.time() - t0
        key = cases[name][1]
        assert proc.returncode == 2, (name, out[-1000:], err[-2000:])
        assert key in err and "invalid params" in err, err[-2000:]
        assert "Traceback" not in err                   # a message, not a stack trace
        assert elapsed < 60, f"{name}: {elapsed:.1f} s"  # imports only; no model, data or store touched
        d = tmp_path / name
        assert sorted(p.name for p in d.iterdir()) == ["params.yaml"], "work happened before the check"


# ------------------------------------------------------------------------------- NaN guard

@pytest.mark.parametrize("where", ["loss", "gradients"])
def test_non_finite_stops_with_step_and_terms_keeping_last_checkpoint(in_process, monkeypatch, where):
    """A NaN loss, or NaN gradients behind a finite loss (0/0 in a backward), at step 3 of 6."""
    from mlflow.tracking import MlflowClient

    from goae import losses
    from goae.config import load_params
    from goae.model.encoder import Encoder
    from goae.train import common
    from goae.train.loop import NonFiniteLoss, TrainState

    w = in_process
    calls = []
    real = losses.ReconstructionLoss.forward

    def nan_at_step_3(self, img, target):          # one reconstruction per stage-1 step
        out = real(self, img, target)
        calls.append(1)
        if len(calls) == 4 and where == "loss":
            out = {**out, "l2": out["l2"] * float("nan"), "rec": out["rec"] * float("nan")}
        elif len(calls) == 4:   # d sqrt(u)/du = inf at u = 0, times du/dimg = 0: NaN, with a loss of + 0
            out = {**out, "rec": out["rec"] + (img.flatten()[0] * 0).sqrt()}
        return out

    monkeypatch.setattr(losses.ReconstructionLoss, "forward", nan_at_step_3)
    with pytest.raises(NonFiniteLoss) as ei:
        _run_in_process("train_stage1")
    e = ei.value
    assert e.step == 3 and "step 3" in str(e) and str(S1) in str(e) and "bg=" in str(e)
    if where == "loss":
        assert math.isnan(e.terms["rec"]) and math.isnan(e.terms["total"]) and math.isfinite(e.terms["bg"])
        assert "non-finite loss" in str(e) and "rec=nan" in str(e)
    else:
        assert all(math.isfinite(v) for v in e.terms.values()) and e.terms["nonfinite_grad_tensors"] > 0
        assert "non-finite encoder gradients" in str(e)
    _no_outs(w)
    assert not [p for d in ("models", "plots") if (w / d).is_dir() for p in (w / d).glob(".*.tmp")]
    assert curve_steps(w / S1 / "curve.csv") == [0, 1, 2]   # no NaN row
    # The last good checkpoint (step 2) is intact (sha1 checked), loads strictly, and is finite.
    meta = json.loads((w / S1 / "state.json").read_text())
    step, objs = TrainState(w / S1).load(meta["params_hash"], log=lambda m: None)
    assert step == 2
    E = Encoder(common.encoder_config(load_params("params.yaml")))
    E.load_state_dict(objs["encoder"], strict=True)
    assert all(torch.isfinite(t).all() for t in E.state_dict().values())
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id],
                              "tags.`dvc.stage` = 'train_stage1'")
    assert [r.info.status for r in runs] == ["FAILED"]


# A fully transparent ray (Σw == 0) once back-propagated 0/0 = NaN from depth = Σw·t / Σw (also in the
# official code); the renderer keeps the official forward (+inf, then clamped) with finite gradients.
def test_fully_transparent_rays_have_finite_depth_gradients(world):
    from goae.eg3d import camera as cam
    from goae.train import common

    G, _ = common.load_generator(world / "models" / "generator")
    with torch.no_grad():
        G.decoder.net[2].bias[0] -= 1e3        # raw density ≪ 0: softplus underflows, Σw == 0 on every ray
    ws = G.backbone.mapping.w_avg.reshape(1, 1, -1).repeat(1, G.backbone.num_ws, 1).clone().requires_grad_(True)
    out = G.synthesis(ws, cam.canonical_camera(1), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["image_depth"]).all()           # the forward is fine (clamped to the ray range)
    out["image_depth"].sum().backward()                        # L_BG (Eq. 4) back-propagates exactly this
    assert torch.isfinite(ws.grad).all()


# ------------------------------------------------------------------------------- tracking

def test_unreachable_tracking_store_fails_at_start(w):
    with socket.socket() as hole:                        # accepts connections, never answers
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        uris = {"refused": f"http://127.0.0.1:{_free_port()}", "silent": f"http://127.0.0.1:{hole.getsockname()[1]}"}
        procs = {k: (time.time(), subprocess.Popen(
            _tiny.stage_argv("train_stage1"), cwd=w,
            env=_tiny.stage_env(w, MLFLOW_TRACKING_URI=u), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            for k, u in uris.items()}
        for k, (t0, proc) in procs.items():
            out, err = proc.communicate(timeout=120)
            elapsed = time.time() - t0
            assert proc.returncode == 3, (k, err[-2000:])
            assert "unreachable" in err and uris[k] in err and "Traceback" not in err, err[-2000:]
            assert elapsed < 40, f"{k}: {elapsed:.1f} s"  # not MLflow's minutes of HTTP retries
    _no_outs(w)
    assert not (w / ".goae-state").exists() and not list((w / "models").glob(".*.tmp"))


@pytest.mark.slow
def test_tracking_hiccup_mid_run_is_retried_and_training_completes(in_process, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
    from mlflow.tracking import MlflowClient

    from goae import tracking

    w = in_process
    write_params(w, tiny_params(stage1={"iters": 3}))
    monkeypatch.setattr(tracking.store, "RETRY_DELAYS_S", (0.01, 0.01, 0.01))
    real = MlflowClient.log_batch
    attempts: dict[int, int] = {}

    def flaky(self, run_id, metrics=(), *a, **kw):
        steps = {m.step for m in metrics if m.key == "stage1/total"}
        if steps:
            (step,) = steps
            attempts[step] = attempts.get(step, 0) + 1
            # step 1: two transient failures, then the store is back; step 2: down for every retry
            if (step == 1 and attempts[step] <= 2) or step == 2:
                raise MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE)
        return real(self, run_id, metrics, *a, **kw)

    monkeypatch.setattr(MlflowClient, "log_batch", flaky)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run_in_process("train_stage1")
    assert attempts == {0: 1, 1: 3, 2: 4}
    assert any(issubclass(c.category, tracking.TrackingWarning) for c in caught)
    assert (w / "models" / "stage1" / "encoder.safetensors").is_file() and (w / "plots" / "stage1.csv").is_file()
    assert json.loads((w / S1 / "state.json").read_text())["step"] == 3
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id],
                                "tags.`dvc.stage` = 'train_stage1'")
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "stage1/total")) == [0, 1]
