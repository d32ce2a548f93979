"""Background depth D_avg (paper §4.1): the mean background depth of canonical front-view samples.

"We first random sample 0.1 million front images with the canonical pose condition, then we obtain the
depth maps and background regions of these images [...] calculate the average depth D_avg of background
regions." Codes are mapping(z, c_front); renders use c_front; M = 1 on background. Outputs both the
scalar mean and a per-pixel mean map (pixels never background fall back to the scalar), plus the mask
rate. Sums are float64 and all-reduced across ranks, so a torchrun run equals a single process.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from goae.eg3d import camera as cam
from goae.runtime import Dist
from goae.train.common import background_mask, mask_needs_image
from goae.train.loop import all_reduce_sum, step_seed

DAVG_FILE = "davg.safetensors"  # inside the `davg` stage's out folder


def save_davg(folder: str | Path, r: dict) -> None:
    save_file({"d_avg": torch.tensor(r["d_avg"]), "d_avg_map": r["d_avg_map"].contiguous()},
              str(Path(folder) / DAVG_FILE))


def load_davg(folder: str | Path, mode: str, device) -> float | torch.Tensor:
    """Eq. 4's target: the scalar mean (`loss.d_avg: scalar`, paper) or the per-pixel map (`map`)."""
    t = load_file(str(Path(folder) / DAVG_FILE))
    return float(t["d_avg"]) if mode == "scalar" else t["d_avg_map"].to(device)


@torch.no_grad()
def compute_davg(G, mask, n_samples: int, batch_size: int, seed: int, device, d: Dist = Dist(),
                 progress: bool = True) -> dict:
    n_batches = (n_samples + batch_size - 1) // batch_size
    res = int(G.neural_rendering_resolution)
    sum_d = torch.zeros(1, res, res, dtype=torch.float64, device=device)
    cnt = torch.zeros(1, res, res, dtype=torch.float64, device=device)
    pixels = torch.zeros((), dtype=torch.float64, device=device)
    mine = range(d.rank, n_batches, d.world)  # batch b is the same samples whatever the world size
    for b in tqdm(mine, desc="D_avg", disable=not (progress and d.main), unit="batch"):
        bs = min(batch_size, n_samples - b * batch_size)
        g = torch.Generator().manual_seed(step_seed(seed, b))
        z = torch.randn(bs, G.z_dim, generator=g).to(device)
        c = cam.canonical_camera(bs, device=device)
        ws = G.mapping(z, c)  # canonical pose condition (principle 1 of W_c)
        rg = torch.Generator(device=device).manual_seed(step_seed(seed, b, salt=1))
        out = G.synthesis(ws, c, generator=rg, superresolution=mask_needs_image(mask))  # render only what M needs
        depth = out["image_depth"].double()
        m = background_mask(mask, out).double()
        sum_d += (depth * m).sum(0)
        cnt += m.sum(0)
        pixels += m[:, 0].numel()
    for t in (sum_d, cnt, pixels):
        all_reduce_sum(t, d)
    total = cnt.sum()
    scalar = (sum_d.sum() / total).item() if total > 0 else float("nan")
    dmap = torch.where(cnt > 0, sum_d / cnt.clamp_min(1), torch.full_like(sum_d, scalar))
    return {"d_avg": scalar, "d_avg_map": dmap[0].float().cpu(), "mask_rate": (total / pixels).item(),
            "n_samples": n_samples, "resolution": res}
