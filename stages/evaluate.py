"""DVC stage `evaluate`: Table 1 protocols (CelebA reconstruction, MEAD novel views) for every method."""
import os

# Before torch loads OpenMP: spinning threads stall for seconds when the 2 cores are shared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import argparse
import shutil
import tempfile
from pathlib import Path

from goae import tracking
from goae.metrics import report
from goae.metrics.protocols import run_evaluation
from goae.model.io import load_generator
from goae.pipeline import stage


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--generator", required=True, help="the generator folder written by `ingest`")
    ap.add_argument("--stage1", required=True, help="stage-1 weights folder")
    ap.add_argument("--stage2", required=True, help="stage-2 weights folder")
    ap.add_argument("--celeba", required=True, help="prepared CelebA split (input-view protocol)")
    ap.add_argument("--mead", required=True, help="prepared MEAD split (novel-view protocol)")
    ap.add_argument("--curves", nargs="*", default=[], help="training loss curves logged to the pipeline run")
    ap.add_argument("--metrics", required=True, help="eval.json to write (a DVC metric)")
    ap.add_argument("--table", required=True, help="Table-1 markdown to write")
    ap.add_argument("--grids", required=True, help="sample grid folder to write")
    a = ap.parse_args(argv)
    with stage("evaluate", outs=[a.metrics, a.table, a.grids]) as ctx:
        if not ctx.dist.main:
            raise SystemExit("evaluate runs on one process (no torchrun)")
        G, gcfg = load_generator(a.generator, device=ctx.device)
        ev = run_evaluation(ctx.params, G, gcfg.get("provenance"), a.stage1, a.stage2, a.celeba, a.mead,
                            ctx.device, log=ctx.log)
        eval_json, table = ctx.outs.file(a.metrics), ctx.outs.file(a.table)
        report.write_eval_json(eval_json, ev.results, ev.protocol, ev.weights)
        table.write_text(report.table1_markdown(ev.results, ev.protocol, ev.weights))
        report.save_grids(ev.samples, ctx.outs.dir(a.grids))
        flat = report.flat_metrics(ev.results)
        ctx.metrics(flat)
        tracking.set_tags({f"weights.{k}": str(v)[:5000] for k, v in ev.weights.items() if k != "methods"})
        ctx.log("\n" + table.read_text())
        curves = {Path(c).stem: c for c in a.curves if Path(c).is_file()}
        with tempfile.TemporaryDirectory() as tmp:  # outs are still `.x.tmp` siblings: log them under their names
            arts = [shutil.copyfile(src, Path(tmp) / Path(out).name) for src, out in
                    ((table, a.table), (eval_json, a.metrics))]
            tracking.finish_parent(flat, curves=curves, artifacts=arts)


if __name__ == "__main__":
    main()
