"""DVC stage `prepare`: EG3D crops + camera labels per split (labelled images pass through)."""
import os

# Before torch loads OpenMP: spinning threads stall for seconds when the 2 cores are shared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import argparse

from goae.data import prepare
from goae.pipeline import stage


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw", required=True, help="raw data folder (written by `ingest`)")
    ap.add_argument("--out", required=True, help="prepared data folder to write (a DVC out)")
    a = ap.parse_args(argv)
    with stage("prepare", outs=[a.out]) as ctx:
        reports = prepare.prepare_all(ctx.params, a.raw, ctx.outs.dir(a.out), ctx.device, log=ctx.log)
        for split, r in reports.items():
            ctx.log(f"{split}: {r['ok']} ok, {r['skipped']} skipped")
            ctx.metrics({f"prepare/{split}/ok": r["ok"], f"prepare/{split}/skipped": r["skipped"]})


if __name__ == "__main__":
    main()
