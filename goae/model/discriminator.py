"""Canonical latent discriminator D_Wc (paper §4.1, network part of Eqs. 2-3).

Architecture of e4e's `LatentCodesDiscriminator` (omertov/encoder4editing, which GOAE's training code
uses): (n_mlp-1) x [Linear(512,512), LeakyReLU(0.2)] + Linear(512,1), n_mlp = 4. Submodule names follow
e4e (`mlp.0.weight`, ...) so an e4e-style state_dict loads as is. Losses live in goae/losses.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LatentDiscriminatorConfig:
    w_dim: int = 512
    n_mlp: int = 4            # e4e default: 3 hidden Linear+LReLU blocks, then the logit layer
    lrelu_slope: float = 0.2


class LatentCodesDiscriminator(nn.Module):
    """Maps codes [..., w_dim] to real/fake logits [..., 1] (no sigmoid: losses use softplus)."""

    def __init__(self, cfg: LatentDiscriminatorConfig = LatentDiscriminatorConfig(),
                 device: torch.device | str | None = None):
        super().__init__()
        if cfg.n_mlp < 1:
            raise ValueError(f"n_mlp must be >= 1, got {cfg.n_mlp}")
        self.cfg = cfg
        layers: list[nn.Module] = []
        for _ in range(cfg.n_mlp - 1):
            layers += [nn.Linear(cfg.w_dim, cfg.w_dim, device=device), nn.LeakyReLU(cfg.lrelu_slope)]
        layers.append(nn.Linear(cfg.w_dim, 1, device=device))
        self.mlp = nn.Sequential(*layers)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if w.shape[-1] != self.cfg.w_dim:
            raise ValueError(f"expected codes [..., {self.cfg.w_dim}], got {tuple(w.shape)}")
        return self.mlp(w)
