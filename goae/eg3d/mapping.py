"""Pose-conditioned StyleGAN2 mapping network z, c -> ws (official `MappingNetwork`)."""
from __future__ import annotations

import torch
from torch import nn

from .ops import FullyConnectedLayer, normalize_2nd_moment


class MappingNetwork(nn.Module):
    official_init = True

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 embed_features: int | None = None, layer_features: int | None = None,
                 activation: str = "lrelu", lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.998):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
        embed_features = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        layer_features = w_dim if layer_features is None else layer_features
        feats = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)  # linear, lr_mul 1
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(feats[i], feats[i + 1], activation=activation,
                                                        lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        if hasattr(self, "w_avg"):
            self.w_avg.zero_()

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1,
                truncation_cutoff: int | None = None) -> torch.Tensor:
        x = normalize_2nd_moment(z.to(torch.float32)) if self.z_dim > 0 else None
        if self.c_dim > 0:
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = y if x is None else torch.cat([x, y], dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if self.num_ws is None:
            return x if truncation_psi == 1 else self.w_avg.lerp(x, truncation_psi)
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:  # w_avg.lerp(w[:, :cutoff], psi); rows past the cutoff untouched
            cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x = torch.cat([self.w_avg.lerp(x[:, :cut], truncation_psi), x[:, cut:]], dim=1)
        return x
