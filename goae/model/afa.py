"""Adaptive Feature Alignment (Eq. 6): F* = gamma * F + beta, with gamma, beta from cross-attention of
F (queries) onto CNN features of the image residual dI (keys/values).

Module names follow the official `AFA` (goae/models/afa.py) so `afa_FFHQ.pt` loads unchanged:
input_layer (conv-BN-PReLU) -> body (pSp bottleneck_IR_SE units) -> output_layer (EqualConv2d,
ScaledLeakyReLU, EqualConv2d) -> tokens -> norm_kv; F -> tokens -> norm_x; cross_att_gamma/beta.
The paper's Conv_gamma / Conv_beta are the cross-attentions' own output projections: no extra convs.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from goae.model.attention import CrossAttention


@dataclass(frozen=True)
class AFAConfig:
    in_channels: int = 3
    stem: int = 64
    groups: tuple[tuple[int, int], ...] = ((64, 3), (128, 3), (256, 3))   # (channels, units); stride 2 first
    se_reduction: int = 16
    d_model: int = 512          # = channels of F (EG3D's 32x32 feature after block b32)
    heads: int = 4
    ffn: int = 1024
    dropout: float = 0.1
    sdpa: bool = True

    @classmethod
    def paper(cls, **overrides) -> "AFAConfig":
        return dataclasses.replace(cls(), **overrides)

    @classmethod
    def tiny(cls, **overrides) -> "AFAConfig":
        """Small widths; d_model 64 matches the tiny EG3D fixture's 64-channel F."""
        base = cls(stem=16, groups=((16, 1), (32, 1), (64, 1)), se_reduction=4, d_model=64, ffn=128)
        return dataclasses.replace(base, **overrides)

    @classmethod
    def from_dict(cls, d: dict) -> "AFAConfig":
        d = dict(d)
        if "groups" in d:
            d["groups"] = tuple(tuple(g) for g in d["groups"])
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class BottleneckIRSE(nn.Module):
    """pSp / InsightFace bottleneck_IR_SE: res(x) + shortcut(x); the stride sits on the *second* conv."""

    def __init__(self, cin: int, depth: int, stride: int, se_reduction: int):
        super().__init__()
        if cin == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Conv2d(cin, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth),
            SEModule(depth, se_reduction))

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class EqualConv2d(nn.Module):
    """StyleGAN2-style equalized-lr conv (rosinality): weight ~ N(0,1) scaled at run time by
    1/sqrt(fan_in); padding 1 for the 3x3 kernels used here (fixture note 5); bias unscaled."""

    def __init__(self, cin: int, cout: int, k: int, padding: int = 1):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = 1 / math.sqrt(cin * k * k)
        self.padding = padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class ScaledLeakyReLU(nn.Module):
    def __init__(self, slope: float = 0.2):
        super().__init__()
        self.slope = slope

    def forward(self, x):
        return F.leaky_relu(x, self.slope) * math.sqrt(2)


class AFA(nn.Module):
    def __init__(self, cfg: AFAConfig = AFAConfig()):
        super().__init__()
        self.cfg = cfg
        self.input_layer = nn.Sequential(nn.Conv2d(cfg.in_channels, cfg.stem, 3, 1, 1, bias=False),
                                         nn.BatchNorm2d(cfg.stem), nn.PReLU(cfg.stem))
        units, cin = [], cfg.stem
        for depth, n in cfg.groups:
            for i in range(n):
                units.append(BottleneckIRSE(cin, depth, 2 if i == 0 else 1, cfg.se_reduction))
                cin = depth
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(EqualConv2d(cin, cfg.d_model, 3), ScaledLeakyReLU(0.2),
                                          EqualConv2d(cfg.d_model, cfg.d_model, 3))
        self.norm_kv = nn.LayerNorm(cfg.d_model, elementwise_affine=False)
        self.norm_x = nn.LayerNorm(cfg.d_model, elementwise_affine=False)
        self.cross_att_gamma = CrossAttention(cfg.d_model, cfg.heads, cfg.ffn, cfg.dropout, cfg.sdpa)
        self.cross_att_beta = CrossAttention(cfg.d_model, cfg.heads, cfg.ffn, cfg.dropout, cfg.sdpa)

    def residual_features(self, img: torch.Tensor, rec_img: torch.Tensor) -> torch.Tensor:
        """F_dI = CNN(dI), (B, d_model, H/8, W/8). dI = rec_img - img: the official sign."""
        return self.output_layer(self.body(self.input_layer(rec_img - img)))

    def forward(self, img: torch.Tensor, rec_img: torch.Tensor, feat_F: torch.Tensor):
        """img, rec_img (B,3,H,W) in [-1,1]; feat_F (B,d_model,h,w). Returns (F*, gamma, beta)."""
        B, C, H, W = feat_F.shape
        # tokens are channels-last flattenings (fixture note 6); a plain reshape would scramble them
        kv = self.norm_kv(self.residual_features(img, rec_img).flatten(2).transpose(1, 2))
        q = self.norm_x(feat_F.flatten(2).transpose(1, 2))
        gamma = self.cross_att_gamma(q, kv).transpose(1, 2).reshape(B, C, H, W)
        beta = self.cross_att_beta(q, kv).transpose(1, 2).reshape(B, C, H, W)
        f_star = gamma * feat_F + beta      # Eq. 6
        return f_star, gamma, beta
