"""DVC stage `train_stage2`: AFA with the encoder frozen (Eq. 6, L_ΔF, L_BG)."""
import os

# Before torch loads OpenMP: spinning threads stall for seconds when the 2 cores are shared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import sys
import shutil

from goae.data.dataset import write_json_atomic
from goae.train.stages import train_stage2
from goae import tracking
from goae.pipeline import stage
from goae.launch import maybe_torchrun

maybe_torchrun("params.yaml", sys.argv)  # train.gpus*nnodes > 1: re-exec under torchrun
with stage("train_stage2", ["afa", "loss", "stage2", "train", "runtime", "davg", "assets"],
           outs=["models/stage2", "plots/stage2.csv"]) as ctx:
    out = ctx.outs.dir("models/stage2") if ctx.outs else None
    r = train_stage2(ctx.params, "data/prepared/train", "models/stage1", out, ".goae-state/train_stage2",
                     ".goae-state/train_stage2/curve.csv", ctx.device, ctx.dist, log=ctx.log, metrics=lambda m, s: ctx.metrics(m, s),
                     davg_path="models/davg/davg.safetensors")
    if ctx.dist.main:
        tracking.set_tags({f"weights.{k}": str(v) for k, v in r["provenance"].items()})
        write_json_atomic(out / "summary.json", {k: v for k, v in r.items()})
        shutil.copyfile(".goae-state/train_stage2/curve.csv", ctx.outs.file("plots/stage2.csv"))
        tracking.log_artifact(ctx.outs.file("plots/stage2.csv"))
