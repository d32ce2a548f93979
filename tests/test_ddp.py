"""torchrun (2 CPU processes, gloo) equals one process with the same global batch: stage 1 and D_avg.

Also the driver: `python tests/test_ddp.py stage1 PARAMS TAG` runs a few stage-1 steps the way
stages/train_stage1.py does (goae.launch.maybe_torchrun first, then goae.pipeline.stage with MLflow), so
with train.gpus=2 it re-executes itself under torch.distributed.run.

What makes the two runs comparable (and what this test therefore relies on):
- every random draw of a step is made for the *global* batch from a rank-independent seed and each rank
  takes its rows (batch indices, w_c codes for D, the renderer's jitter/importance uniforms); module
  inits are seeded and broadcast from rank 0;
- the one per-rank source left is the global RNG behind dropout (the masks of a [2,..] and a [4,..]
  tensor cannot coincide), so the driver builds the tiny encoder with dropout=0 (drop_path is 0 already);
- every loss term is a mean over equally sized local batches, so the mean of rank gradients is the
  global-batch gradient. The renderer's batch-coupled depth clamp only changes fully transparent rays'
  depth value (clamped: no gradient).
Two numerical effects that are not DDP are kept out of the comparison:
- Adam -> SGD (same lr) in the driver. Adam's first step is lr*g/(|g|+eps) ~ lr*sign(g): weights whose
  gradient is ~0 up to float noise move by +-lr depending on summation order ([4,..] vs 2x[2,..]).
  Measured with Adam, lr 1e-4: losses equal to 6 digits at step 0, weights apart by 2.2e-4 after 3 steps.
  With SGD the weights are linear in the averaged gradients, so 1e-5 tests the averaging.
- progressive stages 1-2 only. The tiny random SwinV2's last blocks (4x4 tokens, trained from stage 3 on)
  is ill-conditioned after a few updates: in ONE process, perturbing the weights by 1.2e-7 (summation
  noise) changed its LayerNorm weight gradients by 11% (measured). With stage 3 at step 2 (SGD lr 1e-3)
  the two runs ended 7e-5 apart for that reason.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _tiny import stage_argv

ROOT = Path(__file__).resolve().parents[1]

TINY_GENERATOR = dict(seed=0, img_resolution=128, channel_base=256, channel_max=16, neural_rendering_resolution=16,
                      depth_resolution=6, depth_resolution_importance=6, w_avg_samples=50)
TINY_DATA = dict(source="embedded", seed=0, n_train=4, n_celeba=1, n_mead_ids=1, mead_yaws_deg=[0.0], photos=False)


def _params(gpus: int, opacity_min: float = 0.5, **over) -> dict:
    p = {"data": TINY_DATA, "generator": TINY_GENERATOR,
         "davg": {"n_samples": 12, "batch_size": 4, "seed": 3, "mask": "depth", "opacity_min": opacity_min},
         "encoder": {"size": "tiny", "drop_path_rate": 0.0, "schedule": [0, 1, 10]},  # stages 1, 2, 2 (docstring)
         "loss": {"r1_interval": 2,            # R1 on steps 0 and 2
                  "lambda3": 0.0},             # no ID term: IR-SE50 would triple the run time (per-sample, eval BN)
         "train": {"gpus": gpus, "nnodes": 1, "checkpoint_every": 2, "log_every": 1, "resume": False},
         "stage1": {"iters": 3, "batch_size": 4, "lr": 5e-4, "d_lr": 5e-4, "seed": 0},  # SGD (see above)
         "runtime": {"device": "cpu", "threads": 1, "bf16": False, "tf32": False, "compile": False,
                     "fp16_sr": False}}
    p.update(over)
    return p


def _env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK",
                                                             "TORCHELASTIC_RUN_ID", "MASTER_ADDR")}
    env.update(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}", OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true", PIPELINE_RUN_KEY=f"ddp-test-{tmp.name}")
    return env


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 300) -> str:
    t0 = time.time()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    print(f"{Path(cmd[1]).name} {' '.join(cmd[2:3])}: {time.time() - t0:.1f} s")
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return r.stdout + r.stderr


def _write_params(path: Path, params: dict) -> Path:
    import yaml
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, float]:
    """models/generator (as `ingest` writes it), data/raw/train (4 images) and a D_avg file, in a tmp dir;
    plus the 'depth' mask threshold: the median opacity of canonical renders (about half is background)."""
    from safetensors.torch import save_file

    from goae.config import params_from_dict
    from goae.data.ingest import write_generator
    from goae.data.world import render_world
    from goae.train import common
    from goae.train.davg import compute_davg

    from goae.eg3d import camera as cam
    root = tmp_path_factory.mktemp("ddp_world")
    G, _ = write_generator(params_from_dict(_params(1)), root / "models" / "generator", "cpu")
    with torch.no_grad():
        c = cam.canonical_camera(4)
        z = torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(5))
        ws = G.synthesis(G.mapping(z, c), c, generator=torch.Generator().manual_seed(6))["weights_sum"]
    opacity = round(ws.median().item(), 4)
    p = params_from_dict(_params(1, opacity))
    render_world(G, p.data, root / "data" / "raw", "cpu", batch=4)
    r = compute_davg(G, common.build_mask(p, {}, "cpu"), 8, 4, 0, "cpu", progress=False)
    save_file({"d_avg": torch.tensor(r["d_avg"]), "d_avg_map": r["d_avg_map"].contiguous()},
              str(root / "davg.safetensors"))
    return root, opacity


def _mlflow_runs(tmp: Path, name: str) -> list:
    from mlflow.tracking import MlflowClient
    c = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    exp = c.get_experiment_by_name("goae")
    return c.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'") if exp else []


def test_torchrun_command_and_guard(tmp_path):
    """The launcher argv for one node, c10d and static multi-node rendezvous; no re-exec when not asked."""
    from goae.config import params_from_dict
    from goae.launch import maybe_torchrun, torchrun_command
    cmd = torchrun_command(2, 1, ["stages/davg.py"], env={})
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1", "--standalone",
                       "stages/davg.py"]
    cmd = torchrun_command(8, 2, ["s.py", "x"], env={"GOAE_RDZV_ENDPOINT": "h0:29400", "GOAE_TORCHRUN_ARGS": "--max_restarts=1"})
    assert cmd[4:] == ["--nnodes=2", "--rdzv_backend=c10d", "--rdzv_endpoint=h0:29400", "--rdzv_id=goae",
                       "--max_restarts=1", "s.py", "x"]
    cmd = torchrun_command(8, 2, ["s.py"], env={"MASTER_ADDR": "h0", "NODE_RANK": "1"})
    assert "--master_addr=h0" in cmd and "--master_port=29500" in cmd and "--node_rank=1" in cmd
    with pytest.raises(RuntimeError, match="GOAE_RDZV_ENDPOINT"):
        torchrun_command(8, 2, ["s.py"], env={})
    assert maybe_torchrun(params_from_dict(_params(1)), ["missing.py"]) is None        # one process: runs on
    bad = tmp_path / "params.yaml"
    bad.write_text("train: {gpus: zero}\n")
    assert maybe_torchrun(bad, ["missing.py"]) is None                                 # the stage reports it
    with pytest.raises(FileNotFoundError):
        maybe_torchrun(params_from_dict(_params(2)), [str(tmp_path / "missing.py")])


@pytest.mark.slow
def test_davg_two_ranks_equal_one(world, tmp_path):
    """The real stages/davg.py, once as plain Python (train.gpus=1) and once relaunched by
    maybe_torchrun under torchrun (train.gpus=2): same D_avg scalar and map."""
    from safetensors.torch import load_file
    world, opacity = world
    env, out = _env(tmp_path), {}
    for gpus in (1, 2):
        cwd = tmp_path / f"g{gpus}"
        (cwd / "models").mkdir(parents=True)
        (cwd / "models" / "generator").symlink_to(world / "models" / "generator")
        _write_params(cwd / "params.yaml", _params(gpus, opacity))
        log = _run(stage_argv("davg"), cwd, env)
        assert ("torch.distributed.run" in log) == (gpus == 2), log[-2000:]
        out[gpus] = (load_file(str(cwd / "models" / "davg" / "davg.safetensors")),
                     json.loads((cwd / "metrics" / "davg.json").read_text()))
    (t1, m1), (t2, m2) = out[1], out[2]
    assert m1["n_samples"] == m2["n_samples"] == 12 and 0 < m1["mask_rate"] < 1
    print(f"D_avg: {float(t1['d_avg']):.6f} vs {float(t2['d_avg']):.6f}, map max diff "
          f"{(t1['d_avg_map'] - t2['d_avg_map']).abs().max().item():.3g}, mask rate {m1['mask_rate']:.3f}")
    assert abs(float(t1["d_avg"]) - float(t2["d_avg"])) <= 1e-6
    assert (t1["d_avg_map"] - t2["d_avg_map"]).abs().max().item() <= 1e-6
    assert abs(m1["mask_rate"] - m2["mask_rate"]) <= 1e-9
    assert t1["d_avg_map"].std() > 0  # a real map, not the scalar fallback everywhere
    assert len(_mlflow_runs(tmp_path, "davg")) == 2  # one stage run per execution: rank 0 only


@pytest.mark.slow
def test_stage1_two_ranks_equal_one(world, tmp_path):
    """3 stage-1 steps, global batch 4: one process vs torchrun --nproc_per_node=2 (2 images per rank)."""
    from safetensors.torch import load_file
    world, opacity = world
    env = _env(tmp_path)
    res = {}
    for gpus in (1, 2):
        tag = f"g{gpus}"
        pf = _write_params(world / f"params_{tmp_path.name}_{tag}.yaml", _params(gpus, opacity))
        t0 = time.time()
        log = _run([sys.executable, str(Path(__file__).resolve()), "stage1", str(pf), f"{tmp_path.name}_{tag}"],
                   world, env)
        assert ("torch.distributed.run" in log) == (gpus == 2), log[-2000:]
        out = world / f"out_{tmp_path.name}_{tag}"
        res[gpus] = {"E": load_file(str(out / "encoder.safetensors")),
                     "D": load_file(str(out / "discriminator.safetensors")),
                     "summary": json.loads((out / "summary.json").read_text()), "s": time.time() - t0}
    assert res[1]["summary"]["world"] == 1 and res[2]["summary"]["world"] == 2
    # same init in both runs (seeded, rank 0's broadcast), and training moved it far beyond the tolerance
    init = {g: load_file(str(world / f"out_{tmp_path.name}_g{g}" / "encoder_init.safetensors")) for g in (1, 2)}
    assert all(torch.equal(init[1][k], init[2][k]) for k in init[1])
    moved = max((res[1]["E"][k] - init[1][k]).abs().max().item() for k in init[1])
    assert moved > 3e-4
    for net in ("E", "D"):
        a, b = res[1][net], res[2][net]
        assert a.keys() == b.keys()
        err = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
        print(f"stage1 {net}: max |single - torchrun| = {err:.3g} (weights moved up to {moved:.3g})")
        assert err <= 1e-5 and err <= 2e-2 * moved, f"{net}: max |single - torchrun| = {err:.3g}"
    # the logged loss curves (rank 0, mean over ranks) equal the single-process ones at every step
    c1, c2 = (world / f".state_{tmp_path.name}_g{g}" / "curve.csv" for g in (1, 2))
    rows1, rows2 = ([[float(x) for x in r.split(",")] for r in c.read_text().split()[1:]] for c in (c1, c2))
    assert len(rows1) == len(rows2) == 3
    rel = [max(abs(x - y) / max(1.0, abs(x)) for x, y in zip(r1, r2)) for r1, r2 in zip(rows1, rows2)]
    # step 0: same weights, so equal up to the CSV's 6 digits; later steps inherit the ~1e-6 weight noise
    assert rel[0] <= 1e-5 and max(rel) <= 1e-4, f"loss curves differ by {rel} (relative, per step)"
    runs = _mlflow_runs(tmp_path, f"ddp_stage1_{tmp_path.name}_g2")
    assert len(runs) == 1 and "stage1/total" in runs[0].data.metrics


# ------------------------------------------------------------------------------------------- driver

def _driver(argv: list[str]) -> None:
    mode, params_path, tag = argv[1], argv[2], argv[3]
    assert mode == "stage1"
    from goae.launch import maybe_torchrun
    maybe_torchrun(params_path, argv)
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    from goae.data.dataset import write_json_atomic
    from goae.pipeline import stage
    from goae.train import common
    from goae.train.stages import train_stage1

    base = common.encoder_config
    common.encoder_config = lambda p: dataclasses.replace(base(p), dropout=0.0)  # see the module docstring
    torch.optim.Adam = lambda params, lr: torch.optim.SGD(params, lr=lr)       # ditto (this process only)
    build, init = common.build_encoder, {}

    def build_and_keep(p, prov):  # the encoder's initial weights, for the test's "training happened" check
        E = build(p, prov)
        init.update({k: v.detach().clone() for k, v in E.state_dict().items() if v.is_floating_point()})
        return E
    common.build_encoder = build_and_keep
    with stage(f"ddp_stage1_{tag}", ["encoder", "loss", "stage1", "train", "runtime", "davg", "assets"],
               outs=[f"out_{tag}"], params_path=params_path, torchrun=True) as ctx:
        out = ctx.outs.dir(f"out_{tag}") if ctx.outs else None
        r = train_stage1(ctx.params, "data/raw/train", ".", out, f".state_{tag}",
                         f".state_{tag}/curve.csv", ctx.device, ctx.dist, generator="models/generator", log=ctx.log,
                         metrics=ctx.metrics)
        if ctx.dist.main:
            write_json_atomic(out / "summary.json", {"world": ctx.dist.world, "final": r["final"],
                                                     "img_per_s": r["img_per_s"]})
            save_file(init, str(out / "encoder_init.safetensors"))


if __name__ == "__main__":
    _driver(sys.argv)
