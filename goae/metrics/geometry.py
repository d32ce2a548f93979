"""Geometry error (Table 1 "Geo. Err."): rendered depth vs pseudo-GT depth of a 3D face reconstruction.

Paper §5.2: "normalize all depth maps to zero means and unit variance to calculate geometry error by
using average L2 distance". Our reading, fixed here:
  * region: the given face mask at the pseudo-GT resolution (default: pixels where the pseudo-GT
    depth is non-zero -- Deep3DFaceRecon renders 0 outside the face), intersected with the pixels
    where both depths are finite;
  * each depth is normalised over that region: (d - mean) / std (population std);
  * per image: mean over region pixels of the squared difference of the normalised depths
    (= 2 * (1 - Pearson correlation), range [0, 4]); the table entry is the mean over images.
  Invariant to any offset and any positive scale of either depth; both must use the same sign
  convention (larger = farther), a negated depth gives a large error.
Pseudo-GT maps on disk (`<split>/depth/<stem>.npy`, any resolution, one per image) follow the split's
`depth/convention.json` (`DepthConvention`; defaults when absent): `kind` "ray" (distance along the unit
ray, what EG3D renders and the embedded world writes) or "z" (camera-space z, e.g. Deep3DFaceRecon's
rendered depth: the render is converted with `ray_to_z` at the target camera first); `far` "positive"
(larger = farther) or "negative" (the map is negated on load); pixels that are non-finite or <= 0 after
that are undefined (Deep3DFaceRecon renders 0 off the face) and never enter the region.
Resolution: the rendered depth is brought to the pseudo-GT size by validity-weighted area averaging
(adaptive average pooling of d*valid divided by that of valid; a pixel stays valid if >= half of its
area was), so background never bleeds into the face; upsampling degenerates to nearest.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DepthConvention:
    kind: str = "ray"          # "ray": distance along the normalised ray | "z": camera-space z-depth
    far: str = "positive"      # "positive": larger = farther | "negative": the map is negated on load

    @classmethod
    def read(cls, folder: str | Path) -> "DepthConvention":
        """`<folder>/convention.json` ({"kind": ..., "far": ...}), unknown keys/values refused; defaults if absent."""
        f = Path(folder) / "convention.json"
        if not f.is_file():
            return cls()
        raw = json.loads(f.read_text())
        unknown = set(raw) - {"kind", "far"}
        c = cls(**{k: v for k, v in raw.items() if k not in unknown})
        if unknown or c.kind not in ("ray", "z") or c.far not in ("positive", "negative"):
            raise ValueError(f"{f}: expected {{'kind': 'ray'|'z', 'far': 'positive'|'negative'}}, got {raw}")
        return c

    def reference(self, d: torch.Tensor) -> torch.Tensor:
        """The stored map as 'larger = farther' with undefined pixels as NaN."""
        d = -d if self.far == "negative" else d
        return torch.where(torch.isfinite(d) & (d > 0), d, torch.nan)

    def describe(self) -> str:
        return f"{self.kind} depth, {self.far} = farther; <= 0 / non-finite = undefined"


def ray_to_z(depth: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Ray distance [B,1,r,r] -> camera-space z at the cameras `labels` [B,25] (normalised intrinsics, the
    pixel-centre rays of goae.eg3d's ray sampler): z = t / |((u-cx)/fx, (v-cy)/fy, 1)| (skew ignored)."""
    b, _, h, w = depth.shape
    K = labels[:, 16:25].reshape(b, 3, 3).to(depth)
    v, u = torch.meshgrid((torch.arange(h, device=depth.device) + 0.5) / h,
                          (torch.arange(w, device=depth.device) + 0.5) / w, indexing="ij")
    x = (u[None] - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]
    y = (v[None] - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]
    return depth / torch.sqrt(1 + x.square() + y.square())[:, None]


def load_depth(path: str | Path, scale: float = 1.0, key: str | None = None) -> torch.Tensor:
    """Read a depth map [H, W] float32 from `.npy`, 16-bit `.png` (value * scale) or `.safetensors`.

    `.safetensors`: tensor `key`, else `depth`, else the file's only tensor. Scale multiplies every format.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        d = np.load(p, allow_pickle=False)
    elif suffix == ".png":
        import cv2

        d = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if d is None:
            raise ValueError(f"{p}: unreadable PNG")
        if d.dtype != np.uint16 or d.ndim != 2:
            raise ValueError(f"{p}: depth PNG must be single-channel 16-bit, got {d.dtype} {d.shape}")
    elif suffix == ".safetensors":
        from safetensors.numpy import load_file

        tensors = load_file(str(p))
        name = key or ("depth" if "depth" in tensors else None)
        if name is None and len(tensors) == 1:
            name = next(iter(tensors))
        if name not in tensors:
            raise KeyError(f"{p}: no tensor {key or 'depth'!r} among {sorted(tensors)}")
        d = tensors[name]
    else:
        raise ValueError(f"{p}: unsupported depth format {suffix!r} (.npy, 16-bit .png, .safetensors)")
    d = np.squeeze(np.asarray(d))
    if d.ndim != 2:
        raise ValueError(f"{p}: depth must be [H, W] (after squeeze), got {d.shape}")
    return torch.from_numpy(d.astype(np.float32)) * scale


def _as_nhw(d: torch.Tensor) -> torch.Tensor:
    d = d.float()
    if d.ndim == 4:
        assert d.shape[1] == 1, d.shape
        d = d[:, 0]
    return d[None] if d.ndim == 2 else d


def _resample(d: torch.Tensor, valid: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    if tuple(d.shape[-2:]) == hw:
        return d, valid
    v = valid.float()[:, None]
    num = F.adaptive_avg_pool2d(torch.where(valid, d, 0.0)[:, None], hw)
    den = F.adaptive_avg_pool2d(v, hw)
    return (num / den.clamp_min(1e-12))[:, 0], den[:, 0] >= 0.5


def normalize_depth(d: torch.Tensor, mask: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(d - mean) / std over `mask` per image ([N,H,W]); 0 outside the mask. A flat depth maps to 0."""
    m = mask.float()
    n = m.sum((1, 2), keepdim=True).clamp_min(1)
    d = torch.where(mask, d, 0.0)
    mean = d.sum((1, 2), keepdim=True) / n
    var = ((d - mean).square() * m).sum((1, 2), keepdim=True) / n
    return (d - mean) / var.sqrt().clamp_min(eps) * m


@torch.no_grad()
def geometry_error(depth: torch.Tensor, depth_ref: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image Geo. Err. [N] between rendered `depth` and pseudo-GT `depth_ref`.

    Shapes [N,H,W], [N,1,H,W] or [H,W]; `mask` (bool, face region) at the pseudo-GT resolution.
    Images with fewer than 2 region pixels give NaN.
    """
    ref = _as_nhw(depth_ref)
    d = _as_nhw(depth).to(ref.device)
    valid_ref = torch.isfinite(ref)
    valid_ref &= (ref != 0) if mask is None else _as_nhw(mask).to(ref.device).bool()
    d, valid_d = _resample(d, torch.isfinite(d), tuple(ref.shape[-2:]))
    region = valid_ref & valid_d
    err = (normalize_depth(d, region) - normalize_depth(ref, region)).square().sum((1, 2))
    count = region.sum((1, 2))
    return torch.where(count >= 2, err / count.clamp_min(1), torch.nan)
