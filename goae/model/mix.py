"""Occlusion-aware mix tri-plane (paper §4.3, Eqs. 7-8).

Eq. 7's visible set V = {π D(u,v) K^-1 [u,v,1]} is computed as ray_origin + depth·ray_dir per input-view
pixel (the renderer's depth is the distance along the normalised ray, so this is the same point). V has
no volume on a plane, so "tri-plane restricted to V" is read as V's footprint on each plane: every
visible point marks the plane cell it projects to, and the footprint is softened (blur, threshold, blur)
into a mask. Eq. 8 then blends mask·F*-planes + (1-mask)·w+-planes.

Cell mapping: coords g = xyz·2/box_warp ∈ [-1,1]; cell = floor((g+1)/2·res), clamped to [0,res-1].
This is the release's floor((x+0.5)·256) (box_warp 1) and also exactly the texel whose footprint contains
g under grid_sample(align_corners=False) (texel i spans g ∈ [2i/res-1, 2(i+1)/res-1)), so both readings
give the same cells. Out-of-box points are clamped onto the border cells, as the release does.

Plane layout (renderer): plane 0 = (x,y), plane 1 = (x,z), plane 2 = (z,x), as (column, row) coordinates.
Paper default: all three planes, fixed σ. Release (goae/training/goae.py:264-299): plane 0 only, σ ~ U[1,2]
redrawn on every blur call, no depth test; planes 1 and 2 are the F* planes unchanged (mask = 1 there).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from goae.config import MixConfig  # the params `mix` section is the mix's one config (paper defaults)

PLANE_AXES = ((0, 1), (0, 2), (2, 0))  # (column axis, row axis) of planes XY, XZ, ZX


def gaussian_blur(x: torch.Tensor, sigma: float | torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur of [B,C,H,W]; sigma a float or per-(b,c) tensor [B,C] / [B] / [B,1].
    Taps at integer offsets -(k-1)/2..(k-1)/2, normalised to sum 1, reflect padding (torchvision's
    gaussian_blur conventions, which the release calls)."""
    B, C, H, W = x.shape
    half = (kernel - 1) / 2
    t = torch.linspace(-half, half, kernel, dtype=x.dtype, device=x.device)
    if isinstance(sigma, (int, float)):
        # a Python sigma stays a kernel argument: torch.as_tensor(sigma, device=cuda) would copy host
        # memory to the GPU on every call (a stall, and illegal inside a CUDA-graph capture)
        k = torch.exp(-0.5 * (t / float(sigma)) ** 2).expand(B * C, kernel)
    else:
        sig = sigma.to(dtype=x.dtype, device=x.device)
        sig = (sig[:, None] if sig.ndim == 1 else sig).expand(B, C)
        k = torch.exp(-0.5 * (t / sig.reshape(-1, 1)) ** 2)
    k = k / k.sum(-1, keepdim=True)                                  # [B*C, kernel]
    p = kernel // 2
    y = F.pad(x.reshape(1, B * C, H, W), (p, p, p, p), mode="reflect")
    y = F.conv2d(y, k.reshape(B * C, 1, 1, kernel), groups=B * C)   # along W
    y = F.conv2d(y, k.reshape(B * C, 1, kernel, 1), groups=B * C)   # along H
    return y.reshape(B, C, H, W)


def splat_footprint(points: torch.Tensor, H: int, W: int, box_warp: float, planes: tuple[int, ...] = (0, 1, 2),
                    valid: torch.Tensor | None = None) -> torch.Tensor:
    """Binary footprint of points [B,M,3] on each requested plane -> [B,len(planes),H,W] in {0,1}."""
    B, M, _ = points.shape
    ok = torch.isfinite(points).all(-1)
    if valid is not None:
        ok = ok & (valid.reshape(B, M) > 0.5)
    g = torch.where(ok[..., None], points, torch.zeros_like(points)) * (2.0 / box_warp)
    out = []
    for p in planes:
        a_col, a_row = PLANE_AXES[p]
        col = torch.floor((g[..., a_col] + 1) * 0.5 * W).clamp(0, W - 1).long()
        row = torch.floor((g[..., a_row] + 1) * 0.5 * H).clamp(0, H - 1).long()
        hits = torch.zeros(B, H * W, dtype=points.dtype, device=points.device)
        hits.scatter_add_(1, row * W + col, ok.to(points.dtype))
        out.append((hits > 0).to(points.dtype).reshape(B, H, W))
    return torch.stack(out, 1)


def _sigmas(cfg: MixConfig, shape: tuple[int, int], generator: torch.Generator | None, device) -> torch.Tensor | float:
    if cfg.blur == "fixed":
        return cfg.sigma
    if cfg.blur != "random":
        raise ValueError(f"blur must be 'fixed' or 'random', got {cfg.blur!r}")
    if generator is None:
        raise ValueError("blur='random' needs an explicit torch.Generator")
    # (a CPU generator with CUDA planes copies these 2 x [B,C] draws to the device: the release option only)
    lo, hi = cfg.sigma_range
    u = torch.rand(shape, generator=generator, device=generator.device)
    return (lo + (hi - lo) * u).to(device)


def visibility_masks(depth: torch.Tensor, ray_origins: torch.Tensor, ray_directions: torch.Tensor, H: int, W: int,
                     box_warp: float, cfg: MixConfig = MixConfig(), valid: torch.Tensor | None = None,
                     generator: torch.Generator | None = None, render_res: int | None = None) -> torch.Tensor:
    """Soft mask of the visible set V on each plane -> [B,3,1,H,W] (no gradient).

    depth [B,M,1] input-view depth along the rays, ray_origins/directions [B,M,3], valid optional
    [B,M(,1)] (0 = do not splat, e.g. background pixels)."""
    if cfg.planes not in ("all", "xy"):
        raise ValueError(f"planes must be 'all' or 'xy', got {cfg.planes!r}")
    planes = (0, 1, 2) if cfg.planes == "all" else (0,)
    # fp32 even under a bf16/fp16 autocast (the fast inversion): blur-then-threshold is a binary decision
    # per cell, and half-precision blur sums would flip cells near the threshold
    amp_off = torch.autocast(depth.device.type if depth.device.type in ("cuda", "cpu") else "cpu", enabled=False)
    with torch.no_grad(), amp_off:
        points = ray_origins + depth.detach() * ray_directions  # Eq. 7: back-projected visible points
        # At the release's 128² render on 256² planes neighbouring hits are ~1 texel apart and the blur
        # closes the gaps (factor 1: the release splat itself). At coarser renders (the embedded world's
        # 32²) hits lie ~5 texels apart, blur below the threshold and leave V empty, so the footprint is
        # taken on a grid as coarse as the render (factor plane/render), then upsampled.
        k = min(H, W) // render_res if render_res and 2 * render_res < min(H, W) else 1
        m = splat_footprint(points.float(), H // k, W // k, box_warp, planes, valid)
        if k > 1:
            m = F.interpolate(m, size=(H, W), mode="nearest")
        shape = tuple(m.shape[:2])
        m = gaussian_blur(m, _sigmas(cfg, shape, generator, m.device), cfg.kernel)
        m = (m > cfg.threshold).to(m.dtype)
        m = gaussian_blur(m, _sigmas(cfg, shape, generator, m.device), cfg.kernel)  # soft edges
        if len(planes) == 1:  # 'xy': planes 1, 2 keep F* (mask 1)
            m = torch.cat([m, torch.ones_like(m).expand(-1, 2, -1, -1)], 1)
        return m.unsqueeze(2)


def occlusion_aware_mix(planes_fstar: torch.Tensor, planes_wplus: torch.Tensor, depth: torch.Tensor,
                        ray_origins: torch.Tensor, ray_directions: torch.Tensor, box_warp: float,
                        cfg: MixConfig = MixConfig(), valid: torch.Tensor | None = None,
                        generator: torch.Generator | None = None,
                        render_res: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8: tri-plane_mix = F*-planes on V + w+-planes on O. planes_* [B,3,C,H,W].
    Returns (planes_mix [B,3,C,H,W], masks [B,3,1,H,W]); gradients flow to both plane sets."""
    if planes_fstar.shape != planes_wplus.shape or planes_fstar.ndim != 5 or planes_fstar.shape[1] != 3:
        raise ValueError(f"planes must both be [B,3,C,H,W], got {tuple(planes_fstar.shape)}, "
                         f"{tuple(planes_wplus.shape)}")
    H, W = planes_fstar.shape[-2:]
    masks = visibility_masks(depth, ray_origins, ray_directions, H, W, box_warp, cfg, valid, generator, render_res)
    masks = masks.to(planes_fstar.dtype)
    planes_mix = masks * planes_fstar + (1 - masks) * planes_wplus  # Eq. 8
    return planes_mix, masks
