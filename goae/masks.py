"""Background-mask providers for L_BG / D_avg (paper §4.1: M = 1 on background, from a face parser).

The paper uses the BiSeNet face parser of [52] (zllrunning/face-parsing.PyTorch). Offline there is no
19-class parser, so the alternatives are mediapipe's packaged selfie segmenter and, for the embedded
(rendered) world, a rule on the renderer's own depth / opacity. Every provider reports where its
weights came from in `weights`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from goae.assets import sha256_file
from goae.nets.bisenet import IMAGENET_MEAN, IMAGENET_STD, build_bisenet


@runtime_checkable
class MaskProvider(Protocol):
    name: str
    weights: str  # provenance: file + sha256, packaged model, or "none"

    def background(self, images_m11: torch.Tensor) -> torch.Tensor:
        """images [B,3,H,W] in [-1,1] -> [B,1,H,W] float in {0,1}, 1 = background."""
        ...



class BiSeNetMask:
    """Face-parsing mask. Background = the parser's class 0 only (override with `background_classes`):
    neck, cloth, hair and hat are part of the rendered subject in EG3D crops, so they count as
    foreground. Runs at the parser's 512² input on the net's device; returns on the input's device."""
    name = "bisenet"

    def __init__(self, path: str | Path | None = None, background_classes: tuple[int, ...] = (0,),
                 size: int = 512, seed: int = 0):
        self.net = build_bisenet(path, seed=seed)
        self.weights = self.net.provenance
        self.background_classes = tuple(background_classes)
        self.size = size

    def to(self, device) -> "BiSeNetMask":
        self.net.to(device)
        return self

    @torch.no_grad()
    def background(self, images_m11: torch.Tensor) -> torch.Tensor:
        H, W = images_m11.shape[-2:]
        p = next(self.net.parameters())
        x = (images_m11.to(p.device, p.dtype) + 1) / 2
        if (H, W) != (self.size, self.size):
            x = F.interpolate(x, (self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=max(H, W) > self.size)
        mean = torch.tensor(IMAGENET_MEAN, device=p.device, dtype=p.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=p.device, dtype=p.dtype).view(1, 3, 1, 1)
        labels = self.net.parse((x - mean) / std).argmax(1, keepdim=True)
        cls = torch.tensor(self.background_classes, device=labels.device)
        bg = torch.isin(labels, cls).float()
        if bg.shape[-2:] != (H, W):
            bg = F.interpolate(bg, (H, W), mode="nearest")
        return bg.to(images_m11.device)


class SelfieSegMask:
    """mediapipe 0.10.14 SelfieSegmentation (packaged .tflite, CPU, numpy). Background = person
    confidence < threshold. model_selection 0 = general (256x256 model), 1 = landscape."""
    name = "selfie"

    def __init__(self, threshold: float = 0.5, model_selection: int = 0):
        try:
            import mediapipe as mp
        except ImportError as e:
            raise ImportError("SelfieSegMask needs mediapipe==0.10.14 (installed --no-deps, see "
                              "requirements-nodeps.txt); newer releases ship no selfie model") from e
        if not hasattr(mp, "solutions"):
            raise ImportError(f"mediapipe {getattr(mp, '__version__', '?')} has no `solutions` API; pin 0.10.14")
        self.threshold = threshold
        self._seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=model_selection)
        fname = "selfie_segmentation_landscape.tflite" if model_selection else "selfie_segmentation.tflite"
        f = Path(mp.__file__).parent / "modules" / "selfie_segmentation" / fname
        self.weights = (f"mediapipe {mp.__version__} packaged {fname} sha256:{sha256_file(f)}" if f.is_file()
                        else f"mediapipe {mp.__version__} packaged {fname}")

    def close(self) -> None:
        self._seg.close()

    @torch.no_grad()
    def background(self, images_m11: torch.Tensor) -> torch.Tensor:
        u8 = ((images_m11.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        out = []
        for img in u8.permute(0, 2, 3, 1).numpy():  # mediapipe wants HxWx3 RGB uint8, C-contiguous
            conf = self._seg.process(img.copy()).segmentation_mask
            out.append(torch.from_numpy(conf < self.threshold).float())
        return torch.stack(out)[:, None].to(images_m11.device)


class DepthThresholdMask:
    """Embedded world: background where the render's depth >= `threshold` (EG3D clamps empty rays to
    the far bound) or its opacity (weights sum) < `opacity_min`. Needs render outputs, so it works
    through `background_from_render`; `background(images)` is not available."""
    name = "depth"
    weights = "none (rule on rendered depth/opacity)"

    def __init__(self, threshold: float | None = None, opacity_min: float | None = None):
        if threshold is None and opacity_min is None:
            raise ValueError("DepthThresholdMask needs a depth threshold and/or an opacity_min")
        self.threshold, self.opacity_min = threshold, opacity_min

    def background(self, images_m11: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("DepthThresholdMask needs the render's depth/opacity: call "
                                  "background_from_render(depth, weights_sum)")

    @torch.no_grad()
    def background_from_render(self, depth: torch.Tensor, weights_sum: torch.Tensor | None = None) -> torch.Tensor:
        """depth [B,1,H,W], weights_sum [B,1,H,W] (opacity) -> [B,1,H,W] {0,1}."""
        bg = torch.zeros_like(depth, dtype=torch.bool)
        if self.threshold is not None:
            bg |= depth >= self.threshold
        if self.opacity_min is not None:
            if weights_sum is None:
                raise ValueError("opacity_min is set: pass weights_sum")
            bg |= weights_sum < self.opacity_min
        return bg.float()


def build_mask_provider(name: str, **kw) -> MaskProvider:
    """'bisenet' (path=None -> random init), 'selfie', 'depth' (threshold=..., opacity_min=...)."""
    kinds = {"bisenet": BiSeNetMask, "selfie": SelfieSegMask, "depth": DepthThresholdMask}
    if name not in kinds:
        raise ValueError(f"unknown mask provider {name!r}; choose one of {sorted(kinds)}")
    return kinds[name](**kw)
