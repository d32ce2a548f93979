"""D_avg speed: canonical samples per second of goae.train.davg.compute_davg -> benchmarks/results/davg.json.

    python benchmarks/davg.py [--configs tiny,paper] [--threads 1] [--device auto] [--mlflow]

One timed call = compute_davg(n samples): mapping(z, c_front), backbone + volume rendering (+ SR only when
the mask needs the image) and the background mask per batch, float64 sums. 'tiny' = the embedded default (params.yaml: 'depth'
mask); 'paper' = FFHQ-512 EG3D with random weights and the paper's BiSeNet face-parsing mask (random
weights), batch size from the config on GPU, 2 on CPU. The figure that matters is the projection to the
paper's 100k samples (target: <= 5 min on one H100).
"""
from __future__ import annotations

import common  # benchmarks/common.py (also puts the repo root on sys.path)
import torch

from goae.train import common as tc
from goae.train.davg import compute_davg

# (n samples per timed call, batch size, warmup calls, timed calls) per (config, device type); None = config's
PLAN = {("tiny", "cpu"): (64, None, 1, 3), ("paper", "cpu"): (2, 2, 0, 1),
        ("tiny", "cuda"): (2048, None, 1, 3), ("paper", "cuda"): (1024, None, 1, 3)}


def bench(kind: str, device: torch.device) -> tuple[dict, dict, dict]:
    p = common.load_config(kind, device)
    G, _ = common.build_generator(kind, device)
    prov: dict = {}
    mask = tc.build_mask(p, prov, device)
    n, bs, w, r = PLAN[(kind, device.type)]
    bs = bs or p.davg.batch_size
    print(f"[davg] {kind}: {n} samples in batches of {bs}, mask {prov['mask']}: {w} warm-up + {r} timed", flush=True)
    out = {}
    m = common.measure(lambda: out.update(compute_davg(G, mask, n, bs, 0, device, progress=False)), device,
                       repeats=r, warmup=w)
    sps = n / m["median_wall_s"]
    figures = {"samples_per_s": round(sps, 4), "cpu_s_per_sample": round(m["median_cpu_s"] / n, 5),
               "projected_100k_s": round(1e5 / sps, 1), "n_samples": n, "batch_size": bs,
               "mask_rate": round(out["mask_rate"], 4)}
    print(f"[davg]   {figures}", flush=True)
    config = {"generator": common.generator_record(kind), "mask": prov["mask"],
              "super_resolution_rendered": tc.mask_needs_image(mask)}  # the 'depth' mask skips SR
    return figures, {"compute_davg": m}, config


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    device = common.device_from(args)
    figures, raw, config = {}, {}, {}
    for kind in args.configs.split(","):
        figures[kind], raw[kind], config[kind] = bench(kind, device)
    common.finish("davg", args, device, config, figures, raw)


if __name__ == "__main__":
    main()
