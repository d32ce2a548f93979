"""Pixel metrics of Table 1: MSE and LPIPS between a source image and its inversion.

Convention (pSp/e4e evaluation scale, which Table 1's MSE values follow): images are float NCHW in
[-1, 1]; MSE is the mean of squared differences over channels and pixels of each image, so a constant
offset d gives d**2 and the range is [0, 4]. LPIPS is lpips v0.1 with the AlexNet trunk on [-1, 1]
inputs (lpips' own convention). Both return one value per image; average them for a table entry.
If `size` is given, both images are first resized to size x size (bilinear, antialiased: the
PIL-bilinear Resize((256, 256)) of pSp's scripts/calc_losses_on_images.py [recalled, not verified]).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from goae.assets import sha256_file



def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def mse(x: torch.Tensor, y: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Per-image mean squared error [N] of images in [-1, 1] (mean over C, H, W)."""
    assert x.shape == y.shape, (x.shape, y.shape)
    x, y = _resize(x.float(), size), _resize(y.float(), size)
    return (x - y).square().flatten(1).mean(1)


class LPIPSNet(nn.Module):
    """lpips.LPIPS plus where its weights came from (`provenance`)."""

    def __init__(self, inner: nn.Module, provenance: str):
        super().__init__()
        self.inner = inner
        self.provenance = provenance

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.inner(x, y).flatten()  # [N]


# torchvision `features.{i}` -> lpips `net.slice{k}` (lpips keeps torchvision's indices inside each slice)
TRUNK_SLICES = {"alex": [range(0, 2), range(2, 5), range(5, 8), range(8, 10), range(10, 12)],
                "vgg": [range(0, 4), range(4, 9), range(9, 16), range(16, 23), range(23, 30)]}
TRUNK_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


def build_lpips(alexnet_path: str | Path | None = None, heads_path: str | Path | None = None,
                seed: int = 0, net: str = "alex", trunk_path: str | Path | None = None) -> LPIPSNet:
    """LPIPS(v0.1) with the `net` trunk ('alex': the GOAE/e4e loss and our metric; 'vgg': PTI's) on CPU.
    Heads: the file shipped in the lpips wheel (or `heads_path`).

    Trunk: torchvision `alexnet-owt-7be5be79.pth` (`alexnet_path`) / `vgg16-397923af.pth` (`trunk_path`),
    strict over the conv layers; without it a random trunk seeded by `seed` (lpips `pnet_rand=True`,
    offline only — the distances are then NOT comparable to published LPIPS).
    """
    import lpips

    if net not in TRUNK_SLICES:
        raise ValueError(f"LPIPS trunk must be one of {sorted(TRUNK_SLICES)}, got {net!r}")
    trunk_path = alexnet_path if net == "alex" else trunk_path
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)  # lpips' random trunk/heads init draws from the global RNG
        warnings.filterwarnings("ignore", message=".*(pretrained|weights).*", category=UserWarning)  # lpips' old tv API
        # pretrained=False: we load the heads ourselves with weights_only=True and record their hash.
        inner = lpips.LPIPS(pretrained=False, net=net, version="0.1", pnet_rand=True, verbose=False)
    heads = Path(heads_path) if heads_path else Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    sd = torch.load(heads, map_location="cpu", weights_only=True)
    missing, unexpected = inner.load_state_dict(sd, strict=False)
    # lpips keeps each head twice (lin{k} and its alias lins.{k}); the file names the lin{k} copies
    if unexpected or any(k.startswith("lin") and not k.startswith("lins.") for k in missing):
        raise RuntimeError(f"{heads}: not lpips {net} heads (missing {missing}, unexpected {unexpected})")
    prov = [f"net={net} heads={heads.name} sha256:{sha256_file(heads)}" if net != "alex"
            else f"heads={heads.name} sha256:{sha256_file(heads)}"]
    if trunk_path is None:
        prov.append(f"trunk=random(seed={seed})")
    else:
        p = Path(trunk_path)
        if not p.is_file():
            raise FileNotFoundError(f"LPIPS {net} trunk weights not found at {p} (torchvision {TRUNK_FILES[net]})")
        tv = torch.load(p, map_location="cpu", weights_only=True)
        slot = {i: k for k, idx in enumerate(TRUNK_SLICES[net], 1) for i in idx}
        trunk = {f"slice{slot[int(k.split('.')[1])]}.{k[len('features.'):]}": v
                 for k, v in tv.items() if k.startswith("features.")}
        try:
            inner.net.load_state_dict(trunk, strict=True)
        except RuntimeError as e:
            name = {"alex": "AlexNet", "vgg": "vgg16"}.get(net, net)
            raise RuntimeError(f"{p} is not a torchvision {name} state_dict: {e}") from None
        prov.append(f"trunk={p.name} sha256:{sha256_file(p)}")
    return LPIPSNet(inner.eval().requires_grad_(False), " ".join(prov))


def torch_hub_file(name: str) -> Path | None:
    """A torchvision checkpoint already in $TORCH_HOME/hub/checkpoints (never downloaded here)."""
    home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    f = home / "hub" / "checkpoints" / name
    return f if f.is_file() else None


@torch.no_grad()
def lpips_distance(net: LPIPSNet, x: torch.Tensor, y: torch.Tensor, device: torch.device | str,
                   batch_size: int = 16, size: int | None = None) -> torch.Tensor:
    """Per-image LPIPS [N] (on CPU) of images in [-1, 1], computed in batches on `device`."""
    assert x.shape == y.shape, (x.shape, y.shape)
    out = []
    for i in range(0, x.shape[0], batch_size):
        a = _resize(x[i:i + batch_size].to(device, torch.float32), size)
        b = _resize(y[i:i + batch_size].to(device, torch.float32), size)
        out.append(net(a, b).cpu())
    return torch.cat(out)
