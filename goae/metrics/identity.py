"""ID similarity (Table 1 "ID"): cosine of ArcFace IR-SE50 embeddings (e4e recipe, `id_embedding`).

Range [-1, 1], 1 = same embedding. Not comparable across ID backbones (TriPlaneNet used CurricularFace
and once reported ID*0.5+0.5); the net's `provenance` must be recorded with the number.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from goae.nets.arcface import IRSE50, id_embedding


@torch.no_grad()
def id_similarity(net: IRSE50, x: torch.Tensor, y: torch.Tensor, device: torch.device | str,
                  batch_size: int = 16) -> torch.Tensor:
    """Per-pair cosine similarity [N] (on CPU) between images x, y in [-1, 1], batched on `device`."""
    assert x.shape[0] == y.shape[0], (x.shape, y.shape)
    out = []
    for i in range(0, x.shape[0], batch_size):
        ex = id_embedding(net, x[i:i + batch_size].to(device, torch.float32))
        ey = id_embedding(net, y[i:i + batch_size].to(device, torch.float32))
        out.append(F.cosine_similarity(ex, ey, dim=1).clamp(-1, 1).cpu())
    return torch.cat(out)
