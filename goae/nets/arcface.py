"""ArcFace IR-SE50: the ID network of pSp/e4e/GOAE (L_ID loss and the Table 1 "ID" metric).

Architecture of TreB1eN InsightFace_Pytorch `Backbone(input_size=112, num_layers=50, drop_ratio=0.6,
mode='ir_se')`, written from its description. Module names reproduce that class so the canonical
`model_ir_se50.pth` state_dict loads strictly:
  input_layer.{0 conv, 1 bn, 2 prelu}
  body.{i}.shortcut_layer  = MaxPool2d(1, s) (no keys) | {0 conv1x1, 1 bn}
  body.{i}.res_layer.{0 bn, 1 conv3x3, 2 prelu, 3 conv3x3/s, 4 bn, 5 se.{fc1, fc2}}
  output_layer.{0 bn2d, 1 dropout, 2 flatten, 3 linear, 4 bn1d}
No ArcFace weights exist offline (offline-assets.md §5): tests use `random_arcface(seed)`.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from goae.assets import sha256_file

# (in_channels, depth, num_units) per stage; the first unit of each stage has stride 2.
_STAGES = {
    50: [(64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3)],
    100: [(64, 64, 3), (64, 128, 13), (128, 256, 30), (256, 512, 3)],
    152: [(64, 64, 3), (64, 128, 8), (128, 256, 36), (256, 512, 3)],
    # Not an ArcFace: a 4-unit stand-in with the same blocks and output for random-weight runs
    # (the embedded world), ~5x cheaper than IR-SE50 — random weights carry no identity either way.
    4: [(64, 64, 1), (64, 128, 1), (128, 256, 1), (256, 512, 1)],
}


class SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class BottleneckIR(nn.Module):
    """Pre-activation IR unit (BN-conv-PReLU-conv-BN[-SE]) plus a 1x1/strided shortcut."""

    def __init__(self, cin: int, depth: int, stride: int, se: bool = True):
        super().__init__()
        if cin == depth:  # identity subsampled by a 1x1 max-pool: keeps the original's (key-free) module
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        layers = [nn.BatchNorm2d(cin), nn.Conv2d(cin, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
                  nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth)]
        if se:
            layers.append(SEModule(depth, 16))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE50(nn.Module):
    """IR-SE backbone for 112x112 faces in [-1, 1] -> L2-normalised 512-d embedding."""

    def __init__(self, num_layers: int = 50, drop_ratio: float = 0.6, mode: str = "ir_se", affine: bool = True):
        super().__init__()
        assert num_layers in _STAGES and mode in ("ir", "ir_se"), (num_layers, mode)
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        self.body = nn.Sequential(*[
            BottleneckIR(cin if u == 0 else depth, depth, 2 if u == 0 else 1, se=(mode == "ir_se"))
            for cin, depth, units in _STAGES[num_layers] for u in range(units)])
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(drop_ratio), nn.Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512, affine=affine))
        self.provenance = "uninitialised"  # set by load_arcface / random_arcface

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.output_layer(self.body(self.input_layer(x)))
        return F.normalize(x, dim=1)  # l2_norm of the original (x / ||x||)


def random_arcface(seed: int = 0, num_layers: int = 50) -> IRSE50:
    """Randomly initialised IR-SE (eval mode) for offline runs; never a real ID metric.
    num_layers=4 is the cheap stand-in the embedded world uses (assets.random_arcface: tiny)."""
    with torch.random.fork_rng(devices=[]):  # default init uses the global RNG: seed it locally
        torch.manual_seed(seed)
        net = IRSE50(num_layers=num_layers)
    net.provenance = f"random(seed={seed}, layers={num_layers})"
    return net.eval().requires_grad_(False)



def load_arcface(path: str | Path, device: torch.device | str = "cpu") -> IRSE50:
    """Build IR-SE50 and strictly load `model_ir_se50.pth` (a plain state_dict) onto `device`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ArcFace IR-SE50 weights not found at {path}. Supply `model_ir_se50.pth` (TreB1eN "
            "InsightFace_Pytorch via the pSp/e4e READMEs); no ArcFace weights exist offline.")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    net = IRSE50()
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"{path} is not an IR-SE50 ArcFace state_dict: {e}") from None
    net.provenance = f"{path.name} sha256:{sha256_file(path)}"
    return net.eval().requires_grad_(False).to(device)


def id_embedding(net: IRSE50, img_m11: torch.Tensor) -> torch.Tensor:
    """e4e `IDLoss.extract_feats`: images [N,3,H,W] in [-1,1] -> [N,512] unit embeddings.

    Not wrapped in no_grad: the ID loss back-propagates through it. The crop assumes FFHQ/EG3D-style
    aligned faces at 256x256 (other sizes are area-pooled to 256 first, as e4e does).
    """
    if img_m11.shape[-2:] != (256, 256):
        img_m11 = F.adaptive_avg_pool2d(img_m11, (256, 256))
    x = img_m11[:, :, 35:223, 32:220]
    return net(F.adaptive_avg_pool2d(x, (112, 112)))
