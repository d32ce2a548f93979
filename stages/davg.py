"""DVC stage `davg`: background depth D_avg from canonical front-view samples (paper §4.1)."""
import os

# Before torch loads OpenMP: spinning threads stall for seconds when the 2 cores are shared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import argparse

from goae.data.dataset import write_json_atomic
from goae.model.io import load_generator
from goae.pipeline import stage
from goae.train import common
from goae.train.davg import compute_davg, save_davg


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--generator", required=True, help="the generator folder written by `ingest`")
    ap.add_argument("--out", required=True, help="D_avg folder to write (a DVC out)")
    ap.add_argument("--metrics", required=True, help="summary JSON to write (a DVC metric)")
    a = ap.parse_args(argv)
    with stage("davg", outs=[a.out, a.metrics], torchrun=True) as ctx:
        p, prov = ctx.params, {}
        G, gcfg = load_generator(a.generator, device=ctx.device)
        mask = common.build_mask(p, prov, ctx.device)
        r = compute_davg(G, mask, p.davg.n_samples, p.davg.batch_size, p.davg.seed, ctx.device, ctx.dist)
        if ctx.dist.main:
            save_davg(ctx.outs.dir(a.out), r)
            summary = {"d_avg": r["d_avg"], "mask_rate": r["mask_rate"], "n_samples": r["n_samples"],
                       "resolution": r["resolution"], "mask": prov["mask"], "generator": gcfg.get("provenance")}
            write_json_atomic(ctx.outs.file(a.metrics), summary)
            ctx.metrics({"davg/d_avg": r["d_avg"], "davg/mask_rate": r["mask_rate"]})
            ctx.log(f"D_avg = {r['d_avg']:.4f} (background rate {r['mask_rate']:.3f}, {r['n_samples']} samples)")


if __name__ == "__main__":
    main()
