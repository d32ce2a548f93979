"""DVC stage `evaluate`: Table 1 protocols (CelebA reconstruction, MEAD novel views) for every method."""
import os

# Before torch loads OpenMP: spinning threads stall for seconds when the 2 cores are shared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import shutil
import tempfile
from pathlib import Path

from goae import tracking
from goae.metrics import report
from goae.metrics.protocols import run_evaluation
from goae.pipeline import stage
from goae.train import common

OUTS = ["metrics/eval.json", "metrics/table1.md", "reports/grids"]

with stage("evaluate", ["eval", "mix", "runtime", "assets"], outs=OUTS) as ctx:
    if not ctx.dist.main:
        raise SystemExit("evaluate runs on one process (no torchrun)")
    G, gcfg = common.load_generator(device=ctx.device)
    ev = run_evaluation(ctx.params, G, gcfg.get("provenance"), "models/stage1", "models/stage2",
                        "data/prepared/celeba", "data/prepared/mead", ctx.device, log=ctx.log)
    eval_json, table = ctx.outs.file("metrics/eval.json"), ctx.outs.file("metrics/table1.md")
    report.write_eval_json(eval_json, ev.results, ev.protocol, ev.weights)
    table.write_text(report.table1_markdown(ev.results, ev.protocol, ev.weights))
    report.save_grids(ev.samples, ctx.outs.dir("reports/grids"))
    flat = report.flat_metrics(ev.results)
    ctx.metrics(flat)
    tracking.set_tags({f"weights.{k}": str(v)[:5000] for k, v in ev.weights.items() if k != "methods"})
    ctx.log("\n" + table.read_text())
    curves = {k: f"plots/{k}.csv" for k in ("stage1", "stage2") if Path(f"plots/{k}.csv").is_file()}
    with tempfile.TemporaryDirectory() as tmp:  # outs are still `.x.tmp` siblings: log them under their names
        arts = [shutil.copyfile(src, Path(tmp) / Path(out).name) for src, out in
                ((table, "metrics/table1.md"), (eval_json, "metrics/eval.json"))]
        tracking.finish_parent(flat, curves=curves, artifacts=arts)
