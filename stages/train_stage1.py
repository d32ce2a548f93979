"""DVC stage `train_stage1`: geometry-aware encoder + canonical latent discriminator (Eq. 11)."""
import os

# Before torch loads OpenMP: spinning threads stall for seconds when the 2 cores are shared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import sys
import shutil

from goae.data.dataset import write_json_atomic
from goae.train.stages import train_stage1
from goae import tracking
from goae.pipeline import stage
from goae.launch import maybe_torchrun

maybe_torchrun("params.yaml", sys.argv)  # train.gpus*nnodes > 1: re-exec under torchrun
with stage("train_stage1", ["encoder", "loss", "stage1", "train", "runtime", "davg", "assets"],
           outs=["models/stage1", "plots/stage1.csv"]) as ctx:
    out = ctx.outs.dir("models/stage1") if ctx.outs else None
    r = train_stage1(ctx.params, "data/prepared/train", "models/davg/davg.safetensors", out,
                     ".goae-state/train_stage1", ".goae-state/train_stage1/curve.csv", ctx.device, ctx.dist, log=ctx.log,
                     metrics=lambda m, s: ctx.metrics(m, s))
    if ctx.dist.main:
        tracking.set_tags({f"weights.{k}": str(v) for k, v in r["provenance"].items()})
        write_json_atomic(out / "summary.json", {k: v for k, v in r.items()})
        shutil.copyfile(".goae-state/train_stage1/curve.csv", ctx.outs.file("plots/stage1.csv"))
        tracking.log_artifact(ctx.outs.file("plots/stage1.csv"))
