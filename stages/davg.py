"""DVC stage `davg`: background depth D_avg from canonical front-view samples (paper §4.1)."""
import os

# Before torch loads OpenMP: spinning threads stall for seconds when the 2 cores are shared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import sys
from safetensors.torch import save_file
import torch

from goae.data.dataset import write_json_atomic
from goae.train import common
from goae.train.davg import compute_davg
from goae.pipeline import stage
from goae.launch import maybe_torchrun

maybe_torchrun("params.yaml", sys.argv)  # train.gpus*nnodes > 1: re-exec under torchrun
with stage("davg", ["davg", "runtime"], outs=["models/davg", "metrics/davg.json"]) as ctx:
    p, prov = ctx.params, {}
    G, gcfg = common.load_generator(device=ctx.device)
    mask = common.build_mask(p, prov, ctx.device)
    r = compute_davg(G, mask, p.davg.n_samples, p.davg.batch_size, p.davg.seed, ctx.device, ctx.dist)
    if ctx.dist.main:
        save_file({"d_avg": torch.tensor(r["d_avg"]), "d_avg_map": r["d_avg_map"].contiguous()},
                  str(ctx.outs.dir("models/davg") / "davg.safetensors"))
        summary = {"d_avg": r["d_avg"], "mask_rate": r["mask_rate"], "n_samples": r["n_samples"],
                   "resolution": r["resolution"], "mask": prov["mask"], "generator": gcfg.get("provenance")}
        write_json_atomic(ctx.outs.file("metrics/davg.json"), summary)
        ctx.metrics({"davg/d_avg": r["d_avg"], "davg/mask_rate": r["mask_rate"]})
        ctx.log(f"D_avg = {r['d_avg']:.4f} (background rate {r['mask_rate']:.3f}, {r['n_samples']} samples)")
