"""3D-consistent editing (paper §4.4, Eq. 9).

ŵ+ = w+ + α·d (InterFaceGAN-style in W+), F̂* = F* + F(ŵ+) - F(w+), where F(·) is the generator's
feature map at 32² (the layer AFA refines), passed in as a callable. The paper writes F^w for the second
term; the release (`Net.edit`) uses the feature map of the reconstruction's own w+, which we follow.
The edited pair (ŵ+, F̂*) then goes through the occlusion-aware mix (goae.model.mix) like a reconstruction.

Release entanglement rule (goae/infer.py:101-114), off by default: for every attribute except glasses
the offset is α·d_attr - 0.8·d_glass ("EG3D W space attribution entanglement"); glasses use α·d_glass.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

GLASS_COEF = 0.8  # release's fixed glasses counter-weight


def edit_offset(direction: torch.Tensor, alpha: float, glass_direction: torch.Tensor | None = None,
                glass_coef: float = GLASS_COEF) -> torch.Tensor:
    """α·d, or the release's α·d - glass_coef·d_glass when `glass_direction` is given."""
    off = alpha * direction
    return off if glass_direction is None else off - glass_coef * glass_direction


def edit_w_plus(w_plus: torch.Tensor, direction: torch.Tensor, alpha: float,
                glass_direction: torch.Tensor | None = None, glass_coef: float = GLASS_COEF) -> torch.Tensor:
    """ŵ+ = w+ + α·d (Eq. 9, latent part); w_plus [B,num_ws,w_dim], direction broadcastable to it."""
    return w_plus + edit_offset(direction.to(w_plus), alpha, None if glass_direction is None
                                else glass_direction.to(w_plus), glass_coef)


def edit_features(feat_star: torch.Tensor, feature_fn: Callable[[torch.Tensor], torch.Tensor],
                  w_plus: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
    """F̂* = F* + F(ŵ+) - F(w+) (Eq. 9); feature_fn maps w+ [B,num_ws,w_dim] to the 32² features."""
    # difference first: an identity edit (ŵ+ = w+) then returns F* bit-exactly
    return feat_star + (feature_fn(w_hat) - feature_fn(w_plus))  # Eq. 9


def apply_edit(w_plus: torch.Tensor, feat_star: torch.Tensor, feature_fn: Callable[[torch.Tensor], torch.Tensor],
               direction: torch.Tensor, alpha: float, glass_direction: torch.Tensor | None = None,
               glass_coef: float = GLASS_COEF) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9 in full -> (ŵ+, F̂*)."""
    w_hat = edit_w_plus(w_plus, direction, alpha, glass_direction, glass_coef)
    return w_hat, edit_features(feat_star, feature_fn, w_plus, w_hat)


def load_direction(path: str | Path, num_ws: int = 14, w_dim: int = 512) -> torch.Tensor:
    """Load an edit direction -> float32 [1,num_ws,w_dim].

    Accepts a real NumPy .npy (no pickles) or a torch.save file whatever its name (the released cat
    directions are torch zips named .npy), holding a tensor/array or a dict with exactly one tensor.
    Shapes [1,num_ws,w_dim], [num_ws,w_dim] or [w_dim] (broadcast to every row); layer-selective
    directions keep their zero rows.
    """
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        d = torch.from_numpy(np.load(path, allow_pickle=False))
    else:
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: neither a .npy array nor a torch.save tensor file ({e})") from None
        if isinstance(d, dict):
            vals = [v for v in d.values() if isinstance(v, torch.Tensor)]
            if len(vals) != 1:
                raise ValueError(f"{path}: dict with {len(vals)} tensors; expected exactly one direction")
            d = vals[0]
        if isinstance(d, np.ndarray):
            d = torch.from_numpy(d)
        if not isinstance(d, torch.Tensor):
            raise ValueError(f"{path}: loaded a {type(d).__name__}, expected a tensor")
    d = d.detach().to(torch.float32)
    if d.shape[-1] != w_dim or d.ndim > 3 or (d.ndim == 3 and d.shape[0] != 1):
        raise ValueError(f"{path}: direction shape {tuple(d.shape)} is not [1,{num_ws},{w_dim}], "
                         f"[{num_ws},{w_dim}] or [{w_dim}]")
    d = d.reshape((1,) * (3 - d.ndim) + tuple(d.shape))
    if d.shape[1] not in (1, num_ws):
        raise ValueError(f"{path}: direction has {d.shape[1]} rows, expected {num_ws} (or 1)")
    return d.expand(1, num_ws, w_dim).contiguous()
