"""DVC stage `ingest`: render the embedded tiny world, or index the user's folders (with checksums)."""
import os

# Before torch loads OpenMP: spinning threads stall for seconds when the 2 cores are shared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import json

from goae.data import ingest
from goae.pipeline import stage

with stage("ingest", ["data", "generator", "assets"], outs=["data/raw", "models/generator"]) as ctx:
    G, provenance = ingest.write_generator(ctx.params, ctx.outs.dir("models/generator"), ctx.device)
    summary = ingest.ingest(ctx.params, G, ctx.outs.dir("data/raw"), ctx.device)
    ctx.log(f"generator: {provenance}; data: {json.dumps(summary)}")
    ctx.metrics({f"ingest/{k}": float(v if isinstance(v, (int, float)) else len(v)) for k, v in summary.items()})
