"""BiSeNet face parser (19 CelebAMask-HQ classes), the layout of zllrunning/face-parsing.PyTorch.

Written from the architecture description (ResNet18 context path with attention refinement modules,
feature fusion, three output heads); module names follow that repository so its `79999_iter.pth`
state_dict should load strictly. Classes: 0 background, 1 skin, 2 l_brow, 3 r_brow, 4 l_eye, 5 r_eye,
6 eye_g, 7 l_ear, 8 r_ear, 9 ear_r, 10 nose, 11 mouth, 12 u_lip, 13 l_lip, 14 neck, 15 neck_l,
16 cloth, 17 hair, 18 hat. Input: RGB at 512x512, ImageNet mean/std normalised.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from goae.assets import sha256_file

CLASSES = ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
           "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, ks: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        r = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu((x if self.downsample is None else self.downsample(x)) + r)


class Resnet18(nn.Module):
    """ResNet18 trunk without head; returns the stride 8, 16, 32 features (128, 256, 512 channels)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layer = lambda cin, cout, stride: nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))
        self.layer1, self.layer2 = layer(64, 64, 1), layer(64, 128, 2)
        self.layer3, self.layer4 = layer(128, 256, 2), layer(256, 512, 2)

    def forward(self, x):
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        f8 = self.layer2(x)
        f16 = self.layer3(f8)
        return f8, f16, self.layer4(f16)


class AttentionRefinementModule(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean((2, 3), keepdim=True))))


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = Resnet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, 1, 1, 0)

    def forward(self, x):
        f8, f16, f32 = self.resnet(x)
        avg = self.conv_avg(f32.mean((2, 3), keepdim=True))  # global context, broadcast over f32's grid
        s32 = self.arm32(f32) + avg
        up32 = self.conv_head32(F.interpolate(s32, f16.shape[-2:], mode="nearest"))
        s16 = self.arm16(f16) + up32
        up16 = self.conv_head16(F.interpolate(s16, f8.shape[-2:], mode="nearest"))
        return f8, up16, up32  # strides 8, 8, 16


class FeatureFusionModule(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1, 1, 0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, fsp, fcp):
        feat = self.convblk(torch.cat([fsp, fcp], 1))
        att = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean((2, 3), keepdim=True)))))
        return feat * att + feat


class BiSeNetOutput(nn.Module):
    def __init__(self, cin: int, cmid: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cmid)
        self.conv_out = nn.Conv2d(cmid, n_classes, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    def __init__(self, n_classes: int = 19):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, n_classes)
        self.conv_out16 = BiSeNetOutput(128, 64, n_classes)   # auxiliary heads (training only)
        self.conv_out32 = BiSeNetOutput(128, 64, n_classes)
        for m in self.modules():  # the reference init: kaiming-normal(a=1) convs
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=1)

    def _up(self, x, size):
        return F.interpolate(x, size, mode="bilinear", align_corners=True)

    def forward(self, x):
        """Normalised RGB [B,3,H,W] -> (main, aux16, aux32) logits, each [B,n_classes,H,W]."""
        f8, cp8, cp16 = self.cp(x)
        size = x.shape[-2:]
        return (self._up(self.conv_out(self.ffm(f8, cp8)), size), self._up(self.conv_out16(cp8), size),
                self._up(self.conv_out32(cp16), size))

    def parse(self, x):
        """Main-head logits only [B,n_classes,H,W] (what inference uses)."""
        f8, cp8, _ = self.cp(x)
        return self._up(self.conv_out(self.ffm(f8, cp8)), x.shape[-2:])



def build_bisenet(path: str | Path | None = None, seed: int = 0) -> BiSeNet:
    """BiSeNet in eval mode with frozen params, on CPU. With `path`: strict load of `79999_iter.pth`
    (a `module.` prefix is stripped; only BatchNorm `num_batches_tracked` may be missing). Without: a
    seeded random init (offline tests only; not a face parser)."""
    if path is None:
        with torch.random.fork_rng(devices=[]):  # default init draws from the global RNG: seed it locally
            torch.manual_seed(seed)
            net = BiSeNet(19)
        net.provenance = f"random(seed={seed})"
        return net.eval().requires_grad_(False)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BiSeNet weights not found at {path}. Supply `79999_iter.pth` "
                                "(zllrunning/face-parsing.PyTorch); no 19-class face parser exists offline.")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    net = BiSeNet(19)
    missing, unexpected = net.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(f"{path} is not a face-parsing BiSeNet state_dict: missing {missing[:8]}"
                           f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}")
    net.provenance = f"{path.name} sha256:{sha256_file(path)}"
    return net.eval().requires_grad_(False)
