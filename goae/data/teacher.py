"""The embedded world's teacher: the shipped tiny EG3D plus a per-identity detail field in 3D (`data.gap`).

Why: when the data are rendered by the very generator being inverted, w+ can express every image exactly
and GOAE's F* has nothing real to add; real photos hold detail no w+ reproduces. The teacher adds such
detail, and keeps what makes the embedded world useful: renders from any camera are exactly consistent
(novel-view ground truth is exact) and depths are the teacher's own.

The detail lives on the tri-plane, i.e. in 3D: a point's feature is the mean of its three plane samples,
so a perturbation of the planes is a 3D field that every camera sees the same way. Per identity it is a
sum of random 2D sinusoids on each of the XY, XZ and ZX planes, each with a random direction in the
32 feature channels. The XZ and ZX planes carry it over their whole z range, so the back and sides a
near-frontal input view does not see hold detail of their own, unrelated to the visible detail (separate
random draws): nothing seen in the input view predicts it, which is where GOAE's occlusion-aware mix
should keep w+ rather than F* edits made for the visible side.

Scale: the detail's RMS per channel is `gap` times the std of the clean planes' features (per identity),
so `gap` is dimensionless; gap 0 is the plain generator, bit for bit.
"""
from __future__ import annotations

import math

import torch

# Spatial frequencies of the detail in cycles across the box (plane side). The neural render is 32² rays
# over a face about half the image wide, so 3-9 cycles per box stay well above aliasing while being far
# finer than the tiny generator's smooth plane features.
FREQ_RANGE = (3.0, 9.0)
N_WAVES = 12  # sinusoids per plane


def detail_planes(seed: int, channels: int, res: int, device="cpu") -> torch.Tensor:
    """Unit-RMS detail field of one identity -> [3, channels, res, res] (deterministic in `seed`)."""
    g = torch.Generator().manual_seed(int(seed))
    t = (torch.arange(res, dtype=torch.float64) + 0.5) / res  # texel centres, box fraction in [0, 1)
    v, u = torch.meshgrid(t, t, indexing="ij")                  # rows, columns
    planes = []
    for _ in range(3):
        freq = FREQ_RANGE[0] + (FREQ_RANGE[1] - FREQ_RANGE[0]) * torch.rand(N_WAVES, generator=g, dtype=torch.float64)
        theta = 2 * math.pi * torch.rand(N_WAVES, generator=g, dtype=torch.float64)
        phase = 2 * math.pi * torch.rand(N_WAVES, generator=g, dtype=torch.float64)
        direction = torch.randn(N_WAVES, channels, generator=g, dtype=torch.float64)
        arg = (freq * torch.cos(theta))[:, None, None] * u + (freq * torch.sin(theta))[:, None, None] * v
        waves = torch.sin(2 * math.pi * arg + phase[:, None, None])          # [N, res, res]
        planes.append(torch.einsum("nhw,nc->chw", waves, direction))
    d = torch.stack(planes)                                                  # [3, C, res, res]
    d = d / d.pow(2).mean(dim=(0, 2, 3), keepdim=True).sqrt()               # unit RMS per channel
    return d.float().to(device)


def add_detail(planes: torch.Tensor, seeds: list[int], gap: float) -> torch.Tensor:
    """planes [B,3,C,H,W] or [B,3C,H,W] of the clean generator -> teacher planes (same shape)."""
    if gap < 0:
        raise ValueError(f"data.gap must be >= 0, got {gap}")
    if gap == 0:
        return planes
    B = planes.shape[0]
    if len(seeds) != B:
        raise ValueError(f"need one detail seed per identity: {len(seeds)} seeds for a batch of {B}")
    shape = planes.shape
    p = planes.reshape(B, 3, -1, shape[-2], shape[-1])
    if shape[-1] != shape[-2]:
        raise ValueError(f"tri-planes must be square, got {tuple(shape)}")
    detail = torch.stack([detail_planes(s, p.shape[2], shape[-1], p.device) for s in seeds]).to(p.dtype)
    scale = p.std(dim=(1, 3, 4), keepdim=True)                             # [B,1,C,1,1] clean feature spread
    return (p + gap * scale * detail).reshape(shape)
