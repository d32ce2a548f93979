"""DVC stage `ingest`: render the embedded tiny world, or index the user's folders (with checksums)."""
import os

# Before torch loads OpenMP: spinning threads stall for seconds when the 2 cores are shared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import argparse
import json

from goae.data import ingest
from goae.pipeline import stage


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw", required=True, help="raw data folder to write (a DVC out)")
    ap.add_argument("--generator", required=True, help="generator folder to write (a DVC out)")
    a = ap.parse_args(argv)
    with stage("ingest", outs=[a.raw, a.generator]) as ctx:
        G, provenance = ingest.write_generator(ctx.params, ctx.outs.dir(a.generator), ctx.device)
        summary = ingest.ingest(ctx.params, G, ctx.outs.dir(a.raw), ctx.device)
        ctx.log(f"generator: {provenance}; data: {json.dumps(summary)}")
        ctx.metrics({f"ingest/{k}": float(v if isinstance(v, (int, float)) else len(v)) for k, v in summary.items()})


if __name__ == "__main__":
    main()
