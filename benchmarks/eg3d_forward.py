"""CPU time of one EG3D generator forward, goae.eg3d vs the official baseline -> benchmarks/results/eg3d_forward.json.

    python benchmarks/eg3d_forward.py [--fixtures ../shared/fixtures/eg3d] [--repeats 5] [--warmup 2]

Each timed call is `G(z, c, noise_mode='const')` (mapping + synthesis) under no_grad, batch 1, as in the
official timing runs: the tiny fixture config (render 32^2, 12+12 samples, 2X SR) and the full FFHQ-512
config (random init, render 128^2, 48+48 samples, 8XDC SR). Median of `repeats` after `warmup` calls,
at 1 and 2 threads; wall and process-CPU seconds are both recorded (the CPU time is the robust figure
on a shared machine, where 2-thread wall times swing by up to 5x).
The official numbers cannot be re-run here (no official code in this project); they come from the
fixture README / eg3d_cpu_timings.json, measured with torch 2.13.0+cpu.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from goae.eg3d.generator import TriPlaneGenerator  # noqa: E402

# Official NVlabs/eg3d @7cf1fd1, CPU ref ops, torch 2.13.0+cpu, same 2-core box class
# (../shared/fixtures/eg3d/README.md "Timings"; raw runs in eg3d_cpu_timings.json).
OFFICIAL_S = {"tiny": {1: 0.198, 2: 0.126}, "full": {1: 9.72, 2: 8.06}}
OFFICIAL_NOTE = ("official: 1 thread = median of 3 (run6_1thread, stable); 2 threads = the quietest 2-thread run "
                 "(median of first 3, run1/run4), other 2-thread runs were 1.1-5x slower under load. Measured with "
                 "torch 2.13.0+cpu, which the fixture README finds 0-21% (about 10% on the full config) faster than "
                 "torch 2.14 on identical code, so ratios against it are conservative for us.")
FRONT_C = [1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 2.7, 0, 0, 0, 1, 4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1]


def time_forward(G, threads: int, repeats: int, warmup: int) -> dict:
    torch.set_num_threads(threads)
    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0))
    c = torch.tensor([FRONT_C])
    wall, cpu = [], []
    with torch.no_grad():
        for i in range(warmup + repeats):
            torch.manual_seed(100 + i)
            t0, c0 = time.perf_counter(), time.process_time()
            G(z, c, noise_mode="const")
            if i >= warmup:
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    return {"wall_s": [round(t, 4) for t in wall], "cpu_s": [round(t, 4) for t in cpu],
            "median_wall_s": round(statistics.median(wall), 4), "median_cpu_s": round(statistics.median(cpu), 4),
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def stage_breakdown(G) -> dict:
    """CPU seconds of each stage for one call (after the timed calls, so warm), like the official runs."""
    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0))
    c = torch.tensor([FRONT_C])
    res = G.neural_rendering_resolution
    out = {}

    def clock(name, fn):
        c0 = time.process_time()
        r = fn()
        out[name] = round(time.process_time() - c0, 4)
        return r

    with torch.no_grad():
        ws = clock("mapping", lambda: G.mapping(z, c))
        planes = clock("backbone", lambda: G.backbone.synthesis(ws, noise_mode="const"))
        rays = clock("ray_sampler", lambda: G.ray_sampler(c[:, :16].view(-1, 4, 4), c[:, 16:].view(-1, 3, 3), res))
        feat, _, _ = clock("renderer", lambda: G.renderer(planes.view(1, 3, 32, 256, 256), G.decoder, *rays,
                                                           G.rendering_kwargs))
        fi = feat.permute(0, 2, 1).reshape(1, -1, res, res).contiguous()
        clock("superresolution", lambda: G.superresolution(fi[:, :3], fi, ws, noise_mode="none"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixtures", type=Path, default=ROOT.parent / "shared" / "fixtures" / "eg3d")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--configs", nargs="+", default=["tiny", "full"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eg3d_forward.json")
    a = ap.parse_args(argv)
    tiny = json.loads((a.fixtures / "eg3d_tiny_config.json").read_text())
    full = json.loads((a.fixtures / "eg3d_ffhq512_manifest.json").read_text())
    cfgs = {"tiny": tiny, "full": {"init_kwargs": full["init_kwargs"],
                                   "neural_rendering_resolution": full["neural_rendering_resolution"]}}
    results = {}
    for name in a.configs:
        G = TriPlaneGenerator.from_config(cfgs[name]).eval().requires_grad_(False)  # random init (seed 0)
        for th in a.threads:
            r = time_forward(G, th, a.repeats, a.warmup)
            off = OFFICIAL_S[name][th]
            r.update(official_s=off, ratio_wall=round(r["median_wall_s"] / off, 3),
                     ratio_cpu=round(r["median_cpu_s"] / off, 3), stage_cpu_s_one_call=stage_breakdown(G))
            results[f"{name}_b1_{th}thread"] = r
            print(f"{name:5s} B=1 {th} thread(s): wall {r['median_wall_s']:.3f} s  cpu {r['median_cpu_s']:.3f} s  "
                  f"official {off:.3f} s  ratio wall {r['ratio_wall']:.2f} cpu {r['ratio_cpu']:.2f}  "
                  f"load {r['load_average_after']}  stages(cpu) {r['stage_cpu_s_one_call']}", flush=True)
        del G
    out = {"what": "G(z, c, noise_mode='const') under no_grad, batch 1; median of repeats after warm-ups",
           "repeats": a.repeats, "warmup": a.warmup, "results": results,
           "target": "ours <= 0.5x official (1 thread is the primary figure)",
           "official_note": OFFICIAL_NOTE,
           "official_stage_s_1thread_full": {"mapping": 0.002, "backbone": 1.41, "renderer": 3.92,
                                             "superresolution": 4.45},
           "load_note": ("load_average_after is the 1/5/15-min load of the box; on the shared 2-core machine a load "
                         "of 5-7 (other jobs) roughly doubles 1-thread wall time over CPU time and makes 2-thread runs "
                         "stall in OpenMP barriers (thousands of small ops each wait for a descheduled thread); "
                         "compare 2-thread figures only from a quiet machine."),
           "ratio_note": ("ratio_wall = our median wall / official wall; ratio_cpu = our median process CPU time / "
                          "official wall (official 1-thread CPU time was within 2% of its wall time)."),
           "torch": torch.__version__, "torch_cuda_build": torch.version.cuda,
           "mkldnn": torch.backends.mkldnn.is_available(),
           "nnpack": torch._nnpack_available(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
           "python": platform.python_version()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
