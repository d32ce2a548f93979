"""Tiny on-disk worlds for tests that run stages: generator, training images, D_avg, params.yaml.

`build_world(root)` lays out, under `root`, exactly what the stages read from their cwd:
    models/generator/{generator.safetensors,generator.json,source.json}   (via ingest.write_generator)
    data/prepared/train/{dataset.json,img*.png,...}                       (render_world, pose-labelled)
    models/davg/davg.safetensors                                          ({'d_avg', 'd_avg_map'})
    params.yaml                                                           (committed one, sizes shrunk)
Building takes ~2 s; tests copy one template per session (`copy_world`) instead of rebuilding.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# Sizes only, plus one weight: λ3 = 0 skips the ArcFace ID term, whose random IR-SE50 costs ~6 s to
# build and ~4 s per training step on a busy CPU (tests/test_losses.py covers it). Every other loss
# weight keeps the committed (paper) value, so L2, LPIPS, L_adv, L_BG, L_w+ and R1 all run.
TINY_GENERATOR = dict(img_resolution=128, channel_base=256, channel_max=16, neural_rendering_resolution=16,
                      depth_resolution=6, depth_resolution_importance=6, w_avg_samples=50)
TINY_OVERRIDES = {
    "generator": TINY_GENERATOR,
    "data": {"n_train": 4, "n_celeba": 1, "n_mead_ids": 1, "mead_yaws_deg": [0.0], "photos": False, "gap": 0.0},
    "davg": {"n_samples": 8, "batch_size": 4},
    # No progressive-stage switch within a test's few steps: see test_reliability's renderer xfail.
    "encoder": {"size": "tiny", "schedule": [50, 100, 150]},
    "afa": {"size": "tiny"},
    "loss": {"lambda3": 0.0},
    "train": {"checkpoint_every": 2, "log_every": 1},
    "stage1": {"iters": 6, "batch_size": 2},
    "stage2": {"iters": 4, "batch_size": 2},
    "runtime": {"device": "cpu", "threads": 1},
}


def tiny_params(**sections) -> dict:
    """The committed params.yaml with TINY_OVERRIDES, then `sections` ({'loss': {'lambda5': 3}}) merged in."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for over in (TINY_OVERRIDES, sections):
        for sec, vals in over.items():
            raw[sec] = {**raw.get(sec, {}), **vals}
    return raw


def write_params(root: Path, raw: dict) -> None:
    (Path(root) / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def build_world(root: str | Path, n_train: int = 4) -> Path:
    import torch
    from safetensors.torch import save_file

    from goae.config import params_from_dict
    from goae.data.ingest import write_generator
    from goae.data.world import render_world

    root = Path(root)
    raw = tiny_params(data={"n_train": n_train})
    p = params_from_dict(raw)
    G, _ = write_generator(p, root / "models" / "generator", "cpu")
    render_world(G, p.data, root / "data" / "prepared", "cpu", batch=4)
    r = G.neural_rendering_resolution
    davg = root / "models" / "davg"
    davg.mkdir(parents=True)
    # A plausible background depth (the tiny world's ray_end is 3.3); its value only has to be finite.
    save_file({"d_avg": torch.tensor(3.0), "d_avg_map": torch.full((r, r), 3.0)}, str(davg / "davg.safetensors"))
    write_params(root, raw)
    return root


def init_mlflow_db(root: Path) -> None:
    """Create the MLflow tables once (~7 s on a busy CPU); worlds copied from the template reuse them."""
    code = "import sys; from mlflow.tracking import MlflowClient; MlflowClient(sys.argv[1]).search_experiments()"
    subprocess.run([PY, "-c", code, f"sqlite:///{Path(root) / 'mlflow.db'}"], check=True, capture_output=True,
                   env=stage_env(root), timeout=180)


def copy_world(template: Path, dst: Path) -> Path:
    shutil.copytree(template, dst, dirs_exist_ok=True)
    return dst


# ---------------------------------------------------------------------------- running stages

def stage_env(root: Path, **extra: str) -> dict:
    """What `dvc repro` gives a stage, plus a private MLflow store and the checkout on PYTHONPATH."""
    env = dict(os.environ)
    env.update(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=f"sqlite:///{Path(root) / 'mlflow.db'}",
               MLFLOW_EXPERIMENT_NAME="test", PIPELINE_RUN_KEY="test", DVC_ROOT=str(root),
               MLFLOW_DISABLE_TELEMETRY="true", HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1",
               OMP_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def stage_argv(stage: str) -> list[str]:
    """The stage's `dvc.yaml` cmd (its paths are written there only), with this checkout's script."""
    import shlex
    args = shlex.split(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["cmd"])
    assert args[0] == "python" and args[1].endswith(".py"), args
    return [PY, str(ROOT / args[1]), *args[2:]]


def run_stage(root: Path, stage: str, timeout: float = 240, **env) -> subprocess.CompletedProcess:
    """The stage's dvc.yaml cmd in `root` (the stage scripts of this checkout)."""
    return subprocess.run(stage_argv(stage), cwd=root, env=stage_env(root, **env),
                          capture_output=True, text=True, timeout=timeout)


def start_stage(root: Path, stage: str, **env) -> subprocess.Popen:
    """Like run_stage, in the background; output goes to `<root>/<stage>.log`."""
    with open(Path(root) / f"{stage}.log", "w") as f:
        return subprocess.Popen(stage_argv(stage), cwd=root,
                                env=stage_env(root, **env), stdout=f, stderr=subprocess.STDOUT)


def curve_steps(path: Path) -> list[int]:
    try:
        lines = Path(path).read_text().strip().splitlines()[1:]
    except FileNotFoundError:
        return []
    return [int(ln.split(",")[0]) for ln in lines if ln]


def run_stage_killed(root: Path, stage: str, after_step: int, timeout: float = 240, **env) -> str:
    """Start a training stage, SIGKILL it as soon as its curve (flushed every step with log_every=1)
    shows `after_step` done; returns its output. Fails if the stage ended before it could be killed."""
    curve = Path(root) / ".goae-state" / stage / "curve.csv"
    log = Path(root) / f"{stage}.killed.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(stage_argv(stage), cwd=root, env=stage_env(root, **env),
                                stdout=f, stderr=subprocess.STDOUT)
        t0 = time.time()
        try:
            while after_step not in curve_steps(curve):
                if proc.poll() is not None:
                    raise AssertionError(f"{stage} exited ({proc.returncode}) before step {after_step}:\n"
                                         + log.read_text()[-3000:])
                if time.time() - t0 > timeout:
                    raise AssertionError(f"{stage} did not reach step {after_step} in {timeout} s")
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"{stage} was not killed (rc {proc.returncode})"
    return log.read_text()


def load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path))
