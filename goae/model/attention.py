"""Cross-attention block shared by the encoder heads (Eq. 1) and AFA (Eq. 6).

Official GOAE `CrossAttention` (models/attention.py): a DETR decoder layer without its self-attention
and without the final norm. Post-norm: t = norm2(tgt + MHA(tgt, mem, mem)); out = t + FFN(t).
Parameter names (`multihead_attn.*`, `linear1`, `linear2`) are the official ones, so released
checkpoints load without renaming. The official `norm1` is never used and has no weights: omitted.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    def __init__(self, d_model: int = 512, nhead: int = 4, dim_feedforward: int = 1024,
                 dropout: float = 0.1, sdpa: bool = True):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm2 = nn.LayerNorm(d_model, elementwise_affine=False)
        # DETR's dropout placement (weightless, so no checkpoint shows it; identity in eval).
        self.dropout = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        # need_weights=False lets torch use SDPA; the official path (need_weights=True) materialises
        # the attention map. Fixture README: the two differ by <= 6e-6.
        self.sdpa = sdpa

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """tgt (B, Nq, d) queries; memory (B, Nk, d) keys = values. Returns (B, Nq, d)."""
        attn = self.multihead_attn(tgt, memory, memory, need_weights=not self.sdpa)[0]
        t = self.norm2(tgt + self.dropout2(attn))
        return t + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(t)))))
