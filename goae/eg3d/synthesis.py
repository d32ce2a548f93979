"""StyleGAN2 'skip' synthesis network as EG3D's tri-plane backbone (official `SynthesisNetwork`).

Also the GOAE split: `run(..)` executes any contiguous range of blocks on a given (x, img), so the
split at 32^2 (F) and the plain forward are the same code and agree bit for bit.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .ops import FullyConnectedLayer, modulated_conv2d, relayout, setup_filter, upsample2d

NOISE_MODES = ("random", "const", "none")


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (+ optional x2 up) -> + noise -> bias, lrelu, sqrt(2) gain, clamp."""
    official_init = True

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu",
                 resample_filter=(1, 3, 3, 1), conv_clamp: float | None = None, channels_last: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.resolution, self.up, self.use_noise, self.activation = resolution, up, use_noise, activation
        self.conv_clamp, self.padding = conv_clamp, kernel_size // 2
        self.act_gain = math.sqrt(2.0) if activation == "lrelu" else 1.0
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, kernel_size, kernel_size))
        if use_noise:
            self.register_buffer("noise_const", torch.zeros(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.winograd = False  # CPU inference only: NNPACK Winograd for this 3x3 conv (see generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        self.weight.copy_(torch.randn(self.weight.shape, generator=generator))
        self.bias.zero_()
        if self.use_noise:
            self.noise_const.copy_(torch.randn(self.noise_const.shape, generator=generator))
            self.noise_strength.zero_()

    def forward(self, x, w, noise_mode: str = "random", fused_modconv: bool = True, gain: float = 1,
                generator: torch.Generator | None = None):
        assert noise_mode in NOISE_MODES
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":  # generator=None: global RNG, as the official code
            n = torch.randn([x.shape[0], 1, self.resolution, self.resolution], generator=generator,
                            device=x.device)
            noise = n * self.noise_strength
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        return modulated_conv2d(x, self.weight, styles, bias=self.bias, noise=noise, up=self.up,
                                padding=self.padding, resample_filter=self.resample_filter,
                                fused_modconv=fused_modconv, act=self.activation, gain=self.act_gain * gain,
                                clamp=self.conv_clamp, winograd=self.winograd)


class ToRGBLayer(nn.Module):
    """1x1 modulated conv without demodulation; styles scaled by 1/sqrt(in*k^2); bias, clamp."""
    official_init = True

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None, channels_last: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim, self.conv_clamp = in_channels, out_channels, w_dim, conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        self.weight.copy_(torch.randn(self.weight.shape, generator=generator))
        self.bias.zero_()

    def forward(self, x, w, fused_modconv: bool = True):
        styles = self.affine(w) * self.weight_gain
        return modulated_conv2d(x, self.weight, styles, bias=self.bias, demodulate=False,
                                fused_modconv=fused_modconv, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the 'skip' generator: [conv0 (x2 up)] -> conv1 -> ToRGB added to the skip image.

    `up=1` gives the SR's `SynthesisBlockNoUp` (same keys): conv0 keeps the resolution and the incoming
    skip image is not upsampled.
    """
    official_init = True

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter=(1, 3, 3, 1),
                 conv_clamp: float | None = None, use_fp16: bool = False, fp16_channels_last: bool = False,
                 fused_modconv_default="inference_only", up: int = 2, **layer_kwargs):
        assert architecture == "skip", "EG3D uses only the 'skip' architecture"
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.resolution, self.img_channels, self.is_last = resolution, img_channels, is_last
        self.architecture = architecture
        self.use_fp16, self.up, self.conv_clamp = use_fp16, up, conv_clamp
        self.channels_last = use_fp16 and fp16_channels_last
        self.fused_modconv_default = fused_modconv_default
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.zeros(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=up,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, **layer_kwargs)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
        self.num_torgb += 1

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        if self.in_channels == 0:
            self.const.copy_(torch.randn(self.const.shape, generator=generator))

    def forward(self, x, img, ws, force_fp32: bool = False, fused_modconv=None, noise_mode: str = "random",
                generator: torch.Generator | None = None):
        """ws [B, num_conv + num_torgb, w_dim]; returns (x, img) with img always float32."""
        w_iter = iter(ws.unbind(dim=1))
        if ws.device.type != "cuda":  # official: half precision only on CUDA
            force_fp32 = True
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        if fused_modconv is None:
            fused_modconv = self.fused_modconv_default
        if fused_modconv == "inference_only":
            fused_modconv = not self.training
        kw = dict(fused_modconv=fused_modconv, noise_mode=noise_mode, generator=generator)

        # channels_last on CPU: oneDNN's convs, transposed convs and depthwise FIR run ~2x faster and
        # skip layout copies (values unchanged). The official code uses it only for fp16 + an opt-in flag.
        cl = ws.device.type == "cpu" or self.channels_last
        if self.in_channels == 0:
            x = relayout(self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1]), cl)
            x = self.conv1(x, next(w_iter), **kw)
        else:
            x = self.conv0(relayout(x.to(dtype), cl), next(w_iter), **kw)
            x = self.conv1(x, next(w_iter), **kw)
        if img is not None and self.up == 2:
            img = upsample2d(img, self.resample_filter)
        y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv).to(torch.float32)
        # Add into the fresh y, never into img: the official img.add_(y) aliases the caller's tensor (superres).
        img = y if img is None else y.add_(img)
        return x, img


class SynthesisNetwork(nn.Module):
    """Blocks b4..b{img_resolution}; channels min(channel_base // res, channel_max)."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 4, **block_kwargs):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.num_fp16_res = num_fp16_res
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        self.w_offsets = {}  # first ws row of each block (its ToRGB shares a row with the next conv0)
        for r in self.block_resolutions:
            block = SynthesisBlock(channels[r // 2] if r > 4 else 0, channels[r], w_dim=w_dim, resolution=r,
                                   img_channels=img_channels, is_last=(r == img_resolution),
                                   use_fp16=(r >= fp16_resolution), **block_kwargs)
            self.w_offsets[r] = self.num_ws
            self.num_ws += block.num_conv
            if r == img_resolution:
                self.num_ws += block.num_torgb
            setattr(self, f"b{r}", block)

    def run(self, ws: torch.Tensor, x: torch.Tensor | None = None, img: torch.Tensor | None = None,
            start_res: int = 4, end_res: int | None = None, record: dict | None = None, **block_kwargs):
        """Run blocks with start_res <= res <= end_res on (x, img); ws is always the full [B, num_ws, w_dim]."""
        assert ws.ndim == 3 and ws.shape[1] == self.num_ws and ws.shape[2] == self.w_dim, ws.shape
        ws = ws.to(torch.float32)
        end_res = self.img_resolution if end_res is None else end_res
        for r in self.block_resolutions:
            if start_res <= r <= end_res:
                block = getattr(self, f"b{r}")
                x, img = block(x, img, ws.narrow(1, self.w_offsets[r], block.num_conv + block.num_torgb),
                               **block_kwargs)
                if record is not None:
                    record[f"backbone.b{r}.x"], record[f"backbone.b{r}.img"] = x, img
        return x, img

    def forward(self, ws: torch.Tensor, **block_kwargs) -> torch.Tensor:
        return self.run(ws, **block_kwargs)[1]
