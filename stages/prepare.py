"""DVC stage `prepare`: EG3D crops + camera labels per split (labelled images pass through)."""
import os

# Before torch loads OpenMP: spinning threads stall for seconds when the 2 cores are shared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from goae.data import prepare
from goae.pipeline import stage

with stage("prepare", ["prepare"], outs=["data/prepared"]) as ctx:
    reports = prepare.prepare_all(ctx.params, "data/raw", ctx.outs.dir("data/prepared"), ctx.device, log=ctx.log)
    for split, r in reports.items():
        ctx.log(f"{split}: {r['ok']} ok, {r['skipped']} skipped")
        ctx.metrics({f"prepare/{split}/ok": r["ok"], f"prepare/{split}/skipped": r["skipped"]})
