"""Inversion speed: GOAE.invert latency at batch 1 and batched throughput -> benchmarks/results/inversion.json.

    python benchmarks/inversion.py [--configs tiny,paper] [--threads 1] [--device auto] [--mlflow]

Two modes, as the paper's Table 1 rows: "w+ only" (encoder -> w+ -> render, `use_afa=False`) and the full
GOAE (+ AFA -> F* -> render + occlusion-aware mix, `use_afa=True, use_mix=True`); one timed call is
`GOAE.invert(images, cameras)` under no_grad (images already at the generator's resolution, so no crop or
pose estimation). Configurations: 'tiny' = the embedded default (params.yaml: tiny encoder/AFA, tiny EG3D);
'paper' = SwinV2-B encoder + full AFA + FFHQ-512 EG3D (render 128^2, 48+48 samples, 8XDC), random weights.
Speed does not depend on the weights' values. On CPU the paper config takes tens of seconds per call, so it
gets 1 warm-up and 1-2 timed calls.
"""
from __future__ import annotations

import common  # benchmarks/common.py (also puts the repo root on sys.path)
import torch

from goae.eg3d import camera as cam
from goae.model.afa import AFA
from goae.model.encoder import Encoder
from goae.model.goae import GOAE
from goae.train import common as tc

# (warmup, repeats at batch 1, batched size, warmup, repeats batched) per (config, device type)
PLAN = {("tiny", "cpu"): (2, 5, 8, 1, 3), ("paper", "cpu"): (1, 1, 2, 0, 1),
        ("tiny", "cuda"): (5, 20, 64, 3, 10), ("paper", "cuda"): (5, 20, 32, 3, 10)}


def bench(kind: str, device: torch.device) -> tuple[dict, dict, dict]:
    p = common.load_config(kind, device)
    G, _ = common.build_generator(kind, device)
    torch.manual_seed(0)  # default module inits
    E, A = Encoder(tc.encoder_config(p)), AFA(tc.afa_config(p, G))
    model = GOAE(G, E, A).to(device).eval()
    w1, r1, nb, wb, rb = PLAN[(kind, device.type)]
    res = G.img_resolution
    g = torch.Generator().manual_seed(0)
    img = (torch.rand(nb, 3, res, res, generator=g) * 2 - 1).to(device)
    c = cam.canonical_camera(nb, device=device)
    rg = torch.Generator(device=device).manual_seed(0)
    figures, raw = {}, {}
    for mode, afa in (("wplus", False), ("full", True)):
        for b, w, r in ((1, w1, r1), (nb, wb, rb)):
            print(f"[inversion] {kind} {mode} batch {b}: {w} warm-up + {r} timed", flush=True)
            m = common.measure(lambda: model.invert(img[:b], c[:b], use_afa=afa, use_mix=afa, generator=rg),
                               device, repeats=r, warmup=w)
            raw[f"{mode}_b{b}"] = m
            figures[f"{mode}_b{b}"] = {"batch": b, **common.per_image(m, b)}
            print(f"[inversion]   {figures[f'{mode}_b{b}']}", flush=True)
    config = {"encoder": tc.config_dict(E.cfg) | {"parameters": sum(t.numel() for t in E.parameters())},
              "afa_parameters": sum(t.numel() for t in A.parameters()),
              "generator": common.generator_record(kind) | {"parameters": sum(t.numel() for t in G.parameters())},
              "timed_call": "GOAE.invert(images, cameras, use_afa, use_mix), no_grad, fp32",
              "runtime": {"bf16": False, "compile": False, "tf32": False}}
    return figures, raw, config


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    device = common.device_from(args)
    figures, raw, config = {}, {}, {}
    for kind in args.configs.split(","):
        figures[kind], raw[kind], config[kind] = bench(kind, device)
    common.finish("inversion", args, device, config, figures, raw,
                  "figures are per image: s_per_image = median wall / batch (cpu_s_per_image: process CPU time)")


if __name__ == "__main__":
    main()
