"""EG3D superresolution heads (official `training/superresolution.py`, key names kept).

All four run two 'skip' StyleGAN2 blocks on the 32-channel feature image, started from its rgb,
with ws[:, -1] repeated for every layer. channel_base/channel_max are accepted and ignored, as in
the official classes. With sr_num_fp16_res > 0 the blocks are flagged fp16 (half precision on CUDA
only; float32 on CPU, as the official code forces) and every layer clamps at 256.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import setup_filter
from .synthesis import SynthesisBlock


class _Superresolution(nn.Module):
    input_resolution: int
    img_resolution: int
    blocks: tuple  # ((in, out, res, up) for block0, block1); in=None means `channels`
    filter_buffer = True  # the 2X/4X/8X classes register an unused resample_filter, 8XDC does not

    def __init__(self, channels: int, img_resolution: int, sr_num_fp16_res: int, sr_antialias: bool,
                 num_fp16_res: int = 4, conv_clamp=None, channel_base=None, channel_max=None,
                 channel_divisor: int = 1, **block_kwargs):
        """channel_divisor (goae extension, 1 = official widths): slimmer blocks for the embedded tiny
        world only; official checkpoints never set it."""
        super().__init__()
        assert img_resolution == self.img_resolution, (type(self).__name__, img_resolution)
        use_fp16 = sr_num_fp16_res > 0
        self.sr_antialias = sr_antialias
        for i, (cin, cout, res, up) in enumerate(self.blocks):
            cin = channels if cin is None else cin // channel_divisor
            setattr(self, f"block{i}", SynthesisBlock(
                cin, cout // channel_divisor, w_dim=512, resolution=res, img_channels=3,
                is_last=(i == 1), use_fp16=use_fp16, conv_clamp=(256 if use_fp16 else None), up=up,
                **block_kwargs))
        if self.filter_buffer:
            self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))

    def forward(self, rgb: torch.Tensor, x: torch.Tensor, ws: torch.Tensor, record: dict | None = None,
                **block_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (image, image_raw). image_raw is `rgb` except for the official aliasing quirk below."""
        ws = ws[:, -1:, :].repeat(1, 3, 1)
        resized = x.shape[-1] != self.input_resolution
        if resized:
            size = (self.input_resolution, self.input_resolution)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=self.sr_antialias)
            rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False, antialias=self.sr_antialias)
        x, img = self.block0(x, rgb, ws, **block_kwargs)
        if record is not None:
            record["sr.block0_x"], record["sr.block0_img"] = x, img
        # Quirk kept on purpose: the official SynthesisBlockNoUp does `img.add_(y)` on its input, which
        # (when no resize made a copy) is the caller's `feature_image[:, :3]` view, i.e. the returned
        # image_raw. So with 2X/4X at native input size the official image_raw is rgb + block0's ToRGB
        # output. We add out of place and return that tensor explicitly instead of mutating a view.
        image_raw = img if (self.block0.up == 1 and not resized) else None
        x, img = self.block1(x, img, ws, **block_kwargs)
        return img, image_raw


class SuperresolutionHybrid2X(_Superresolution):
    input_resolution, img_resolution = 64, 128
    blocks = ((None, 128, 64, 1), (128, 64, 128, 2))


class SuperresolutionHybrid4X(_Superresolution):
    input_resolution, img_resolution = 128, 256
    blocks = ((None, 128, 128, 1), (128, 64, 256, 2))


class SuperresolutionHybrid8X(_Superresolution):
    input_resolution, img_resolution = 128, 512
    blocks = ((None, 128, 256, 2), (128, 64, 512, 2))


class SuperresolutionHybrid8XDC(_Superresolution):
    """FFHQ-512: 128 -> 256 (256 ch) -> 512 (128 ch)."""
    input_resolution, img_resolution = 128, 512
    blocks = ((None, 256, 256, 2), (256, 128, 512, 2))
    filter_buffer = False


SR_CLASSES = {c.__name__: c for c in (SuperresolutionHybrid2X, SuperresolutionHybrid4X,
                                      SuperresolutionHybrid8X, SuperresolutionHybrid8XDC)}


def build_superresolution(module_name: str, **kwargs) -> _Superresolution:
    """`module_name` is the official dotted path (rendering_kwargs['superresolution_module'])."""
    name = module_name.rsplit(".", 1)[-1]
    if name not in SR_CLASSES:
        raise ValueError(f"unknown superresolution module {module_name!r}")
    return SR_CLASSES[name](**kwargs)
