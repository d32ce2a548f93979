"""Training speed: images/s of a stage-1 and a stage-2 step -> benchmarks/results/training.json.

    python benchmarks/training.py [--configs tiny,paper] [--threads 1] [--device auto] [--paper-steps 2] [--mlflow]

Runs the real goae.train.stages.train_stage1 / train_stage2 (D step with lazy R1, encoder step with
L_rec = L2 + LPIPS + ID, L_adv, L_BG, L_w+; then AFA with L_rec + L_dF) in a temporary folder holding a
random-weight generator, random training images and a constant D_avg. Per-step wall times come from the
metrics callback (rank 0, every step); the first step is reported apart ("cold": allocator and kernel
warm-up), the rest give img/s = global batch / median step time. 'tiny' = params.yaml (batch 4);
'paper' = configs/paper-ffhq512.yaml (SwinV2-B, full AFA, FFHQ-512 EG3D, BiSeNet mask, random weights) at
batch 4 on GPU and batch 1 on CPU, for a couple of steps (minutes per step there).
"""
from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import common  # benchmarks/common.py (also puts the repo root on sys.path)
import torch
from safetensors.torch import save_file

from goae.data.dataset import save_png, write_dataset_json, write_json_atomic
from goae.eg3d import camera as cam
from goae.train import common as tc
from goae.train.stages import train_stage1, train_stage2

# (batch, steps) per (config, device type); the paper CPU steps come from --paper-steps
PLAN = {("tiny", "cpu"): (4, 6), ("paper", "cpu"): (1, None), ("tiny", "cuda"): (4, 30), ("paper", "cuda"): (4, 20)}


def make_workspace(folder: Path, kind: str, device, n_images: int) -> None:
    """models/generator (+ source.json), data/train (random images, canonical labels), davg.safetensors."""
    G, cfg = common.build_generator(kind, "cpu")
    tc.save_module(folder / "models" / "generator" / "generator", G, cfg)
    write_json_atomic(folder / "models" / "generator" / "source.json", {"provenance": cfg["provenance"]})
    g = torch.Generator().manual_seed(0)
    lab = cam.canonical_camera(1)[0].tolist()
    names = [f"img{i:03d}.png" for i in range(n_images)]
    for n in names:
        save_png(folder / "data" / "train" / n, torch.rand(3, G.img_resolution, G.img_resolution, generator=g) * 2 - 1)
    write_dataset_json(folder / "data" / "train", [(n, lab) for n in names])
    r = int(G.neural_rendering_resolution)
    save_file({"d_avg": torch.tensor(2.7), "d_avg_map": torch.full((1, r, r), 2.7)}, str(folder / "davg.safetensors"))


def step_figures(stamps: list[float], start: float, batch: int) -> dict:
    steps = [stamps[0] - start] + [b - a for a, b in zip(stamps, stamps[1:])]
    warm = steps[1:] or steps
    med = statistics.median(warm)
    return {"batch": batch, "steps": len(steps), "cold_step_s": round(steps[0], 4), "step_s": round(med, 4),
            "img_per_s": round(batch / med, 4), "all_steps_s": [round(s, 4) for s in steps]}


def bench(kind: str, device: torch.device, paper_steps: int) -> tuple[dict, dict, dict]:
    batch, steps = PLAN[(kind, device.type)]
    steps = steps or paper_steps
    sched = [0, 0, 0]  # progressive stage 3 (all w+ rows active) from step 1 on: the steady state
    p = common.load_config(kind, device, stage1={"iters": steps, "batch_size": batch},
                           stage2={"iters": steps, "batch_size": batch}, encoder={"schedule": sched},
                           train={"gpus": 1, "nnodes": 1, "checkpoint_every": 10 ** 6, "log_every": 1, "resume": False})
    cwd = os.getcwd()
    figures, raw = {}, {}
    with tempfile.TemporaryDirectory(prefix=f"goae-bench-train-{kind}-") as tmp:
        t = Path(tmp)
        make_workspace(t, kind, device, n_images=max(4, batch))
        os.chdir(t)
        try:
            for stage in ("stage1", "stage2"):
                stamps: list[float] = []

                def metrics(m, s, stamps=stamps):
                    common.sync(device)
                    stamps.append(time.perf_counter())

                print(f"[training] {kind} {stage}: batch {batch}, {steps} steps", flush=True)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                if stage == "stage1":
                    fn = lambda: train_stage1(p, "data/train", ".", "out1", ".state1", "curve1.csv",  # noqa: E731
                                              device, generator="models/generator", log=lambda *_: None,
                                              metrics=metrics)
                else:
                    fn = lambda: train_stage2(p, "data/train", "out1", "out2", ".state2", "curve2.csv", device,  # noqa: E731
                                              generator="models/generator", davg_dir=".", log=lambda *_: None,
                                              metrics=metrics)
                t0 = time.perf_counter()
                summary = fn()
                # the loop starts after model building; Trainer.run's own clock gives its length
                start = stamps[-1] - steps * batch / summary["img_per_s"]
                f = step_figures(stamps, start, batch)
                f["setup_s"] = round(start - t0, 2)
                if device.type == "cuda":
                    f["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
                f["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
                figures[stage] = f
                raw[stage] = {"final_losses": summary["final"], "provenance": summary.get("provenance")}
                print(f"[training]   {f}", flush=True)
        finally:
            os.chdir(cwd)
    config = {"generator": common.generator_record(kind), "encoder": p.encoder.size, "afa": p.afa.size,
              "davg_mask": p.davg.mask, "encoder_schedule": sched, "loss": vars(p.loss),
              "runtime": {"device": device.type, "bf16_active": device.type == "cuda" and p.runtime.bf16,
                          "tf32": p.runtime.tf32, "compile": p.runtime.compile}}
    return figures, raw, config


def main() -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--paper-steps", type=int, default=2, help="steps per stage for the paper config on CPU")
    args = ap.parse_args()
    device = common.device_from(args)
    figures, raw, config = {}, {}, {}
    for kind in args.configs.split(","):
        figures[kind], raw[kind], config[kind] = bench(kind, device, args.paper_steps)
    common.finish("training", args, device, config, figures, raw,
                  "img_per_s = batch / median step wall time after the first step (single process)")


if __name__ == "__main__":
    main()
