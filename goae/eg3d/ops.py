"""StyleGAN2 ops with the semantics of EG3D's CPU `ref` paths (NVlabs/eg3d @7cf1fd1), pure PyTorch.

Same maths as the official ops, re-associated for speed (checked against the official fixtures by
golden.py): activation gains folded into weights/biases, the bias fused into the conv (or the FIR
conv), in-place activations when autograd is off, channels_last on CPU, the skip upsampling as
zero-padded bilinear, optional NNPACK Winograd for the large 3x3 convs. No custom CUDA/C++.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)
LRELU_SLOPE = 0.2


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def bias_act(x: torch.Tensor, b: torch.Tensor | None, act: str = "linear", gain: float | None = None,
             clamp: float | None = None) -> torch.Tensor:
    """Official `_bias_act_ref` along dim 1: (x + b) -> act -> *gain -> clamp(+-clamp)."""
    if b is not None:
        x = x + b.reshape([-1 if i == 1 else 1 for i in range(x.ndim)])
    if act == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
        gain = SQRT2 if gain is None else gain
    elif act != "linear":
        raise ValueError(f"unsupported activation {act!r}")
    if gain is not None and gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


class FullyConnectedLayer(nn.Module):
    """x @ (W * lr_mul/sqrt(in)).T + b * lr_mul; linear layers fold the bias into one addmm (official)."""
    official_init = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.lr_multiplier, self.bias_init = lr_multiplier, bias_init
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        self.weight.copy_(torch.randn(self.weight.shape, generator=generator) / self.lr_multiplier)
        if self.bias is not None:
            self.bias.fill_(self.bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, act={self.activation}"


def setup_filter(taps=(1, 3, 3, 1)) -> torch.Tensor:
    """Separable FIR as a normalised 2-D outer product (official `upfirdn2d.setup_filter`)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = f.ger(f)
    return f / f.sum()


def _depthwise(f: torch.Tensor, channels: int, gain: float, dtype: torch.dtype) -> torch.Tensor:
    # The official ref flips the filter before its correlation; [1,3,3,1] is symmetric so we skip it.
    return (f * gain).to(dtype)[None, None].expand(channels, 1, *f.shape)


def upsample2d(x: torch.Tensor, f: torch.Tensor | None = None) -> torch.Tensor:
    """Skip-image x2 upsampling, official upfirdn2d(up=2, pad (2,1), [1,3,3,1], gain 4).

    Zero insertion + that FIR is separable: per axis y[2m] = (x[m-1] + 3x[m])/4 and
    y[2m+1] = (3x[m] + x[m+1])/4 with x = 0 outside, i.e. bilinear x2 (align_corners=False) of the
    ZERO-padded input, cropped. Plain bilinear would differ on the border (edge clamp), the official
    path pads with zeros. `f` must be the [1,3,3,1] filter (the only one EG3D uses); ~4x faster than
    the equivalent depthwise transposed conv.
    """
    y = F.interpolate(F.pad(x, (1, 1, 1, 1)), scale_factor=2, mode="bilinear", align_corners=False)
    return y[..., 2:-2, 2:-2]


def relayout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """NCHW <-> channels_last (same values) via per-sample 2-D transposes, which ATen runs ~3x faster
    than the generic 4-D strided copy of `.contiguous(memory_format=...)`."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if x.ndim != 4 or x.is_contiguous(memory_format=fmt) or x.device.type != "cpu":
        return x.contiguous(memory_format=fmt)
    B, C, H, W = x.shape
    if channels_last:  # [C, HW] -> [HW, C]
        x = x.contiguous()
        out = [x[i].reshape(C, H * W).t().contiguous() for i in range(B)]
        return torch.stack(out).view(B, H, W, C).permute(0, 3, 1, 2) if B > 1 else \
            out[0].view(1, H, W, C).permute(0, 3, 1, 2)
    x = x.contiguous(memory_format=torch.channels_last)
    out = [x[i].permute(1, 2, 0).reshape(H * W, C).t().contiguous() for i in range(B)]
    return (torch.stack(out) if B > 1 else out[0].unsqueeze(0)).view(B, C, H, W)


def _inplace_ok(t: torch.Tensor) -> bool:
    # In-place activation saves a full-size allocation (page faults dominate on CPU); only without autograd.
    return not (torch.is_grad_enabled() and t.requires_grad)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *,
                     bias: torch.Tensor | None = None, noise: torch.Tensor | None = None, up: int = 1,
                     padding: int = 0, resample_filter: torch.Tensor | None = None, demodulate: bool = True,
                     fused_modconv: bool = True, act: str = "linear", gain: float = 1.0,
                     clamp: float | None = None, winograd: bool = False) -> torch.Tensor:
    """Official `modulated_conv2d` followed by the layer's noise add and `bias_act`, in one pass.

    Same maths as the official op order, cheaper arithmetic: the activation gain g > 0 commutes with
    lrelu (g*lrelu(v) = lrelu(g*v)), so it is folded into the demodulation coefficients, the noise and
    the bias; the bias is added inside the conv (up=1) or the FIR conv (up=2); lrelu and clamp run in
    place. up=2 follows conv2d_resample: transposed stride-2 conv with the transposed weight and NO
    spatial flip, padding 0 (HxH -> (2H+1)^2), then the [1,3,3,1] FIR with padding 1 and gain 4.
    """
    B = x.shape[0]
    O, I, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:  # official fp16 pre-normalisation (GPU SR only)
        weight = weight * (1 / math.sqrt(I * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    if act == "lrelu":
        slope = LRELU_SLOPE
    elif act == "linear":
        slope = None
    else:
        raise ValueError(f"unsupported activation {act!r}")
    b = None if bias is None else (bias * gain if gain != 1 else bias).to(x.dtype)

    # Demodulation sum_{i,k} (w[o,i,k] s[i])^2 = sum_i s[i]^2 sum_k w[o,i,k]^2: a small matmul instead of
    # materialising and squaring the modulated [B,O,I,k,k] weight.
    scale = None
    if demodulate:
        scale = (torch.mm(styles.square(), weight.square().sum(dim=[2, 3]).t()) + 1e-8).rsqrt()  # [B,O]
    if gain != 1:
        scale = torch.full((B, O), gain, dtype=styles.dtype, device=styles.device) if scale is None else scale * gain

    if fused_modconv:
        mod = styles.reshape(B, 1, I) if scale is None else styles.reshape(B, 1, I) * scale.reshape(B, O, 1)
        w = (weight.unsqueeze(0) * mod.reshape(B, -1, I, 1, 1)).to(x.dtype)  # [B,O,I,k,k], one pass
        if B == 1 or x.device.type != "cuda":  # per sample: keeps channels_last, no [1,B*I] relayout
            wino = winograd and _winograd_ok(x, w, up, padding)
            outs = [_conv(x[i:i + 1], w[i], b, up, padding, resample_filter, wino=wino) for i in range(B)]
            y = outs[0] if B == 1 else torch.cat(outs)
        else:  # one grouped conv, one group per sample (official)
            y = _conv(x.reshape(1, B * I, *x.shape[2:]), w.reshape(B * O, I, kh, kw),
                      None if b is None else b.repeat(B), up, padding, resample_filter, groups=B)
            y = y.reshape(B, O, *y.shape[2:])
        if noise is not None:
            y = y.add_(noise * gain if gain != 1 else noise)
    else:  # training path (official non-fused): modulate activations, one shared-weight batch conv
        y = _conv(x * styles.to(x.dtype).reshape(B, -1, 1, 1), weight.to(x.dtype), None, up, padding,
                  resample_filter)
        if scale is not None:
            y = y * scale.to(x.dtype).reshape(B, -1, 1, 1)
        if noise is not None:
            y = y + (noise * gain if gain != 1 else noise).to(x.dtype)
        if b is not None:
            y = y + b.reshape(1, -1, 1, 1)

    inplace = _inplace_ok(y)
    if slope is not None:
        y = F.leaky_relu_(y, slope) if inplace else F.leaky_relu(y, slope)
    if clamp is not None and clamp >= 0:
        c = clamp * gain
        y = y.clamp_(-c, c) if inplace else y.clamp(-c, c)
    return y


def _winograd_ok(x, w, up, padding) -> bool:
    return (up == 1 and padding == 1 and w.shape[-2:] == (3, 3) and w.shape[1] >= 16 and x.device.type == "cpu"
            and x.dtype == torch.float32 and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
            and torch._nnpack_available())


def _conv(x, w, b, up, padding, f, groups=1, wino=False):
    if wino:  # NNPACK Winograd F(6x6,3x3): 2-3x faster than oneDNN's direct conv here; NCHW only
        try:
            return torch._nnpack_spatial_convolution(relayout(x, channels_last=False), w, b, [padding, padding])
        except RuntimeError:  # NNPACK refuses some setups; the direct conv is always valid
            pass
    if up == 1:
        if w.shape[2:] == (1, 1) and groups == 1 and x.shape[0] == 1:  # 1x1 (ToRGB): one GEMM, no im2col
            return _conv1x1(x, w.reshape(w.shape[0], -1), b)
        return F.conv2d(x, w, b, padding=padding, groups=groups)
    assert up == 2 and padding == 1 and f is not None
    GO, I, kh, kw = w.shape
    O = GO // groups
    # [G*O, I, k, k] -> [G*I, O, k, k]: transposed-conv layout, per group, without flipping taps.
    wt = w.transpose(0, 1) if groups == 1 else \
        w.reshape(groups, O, I, kh, kw).transpose(1, 2).reshape(groups * I, O, kh, kw)
    y = F.conv_transpose2d(x, wt, stride=2, padding=0, groups=groups)
    return F.conv2d(y, _depthwise(f, y.shape[1], 4.0, y.dtype), b, padding=1, groups=y.shape[1])


def _conv1x1(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    _, I, H, W = x.shape
    if x.is_contiguous(memory_format=torch.channels_last):  # pixels x channels
        xf = x.permute(0, 2, 3, 1).reshape(H * W, I)
        y = torch.mm(xf, w.t()) if b is None else torch.addmm(b, xf, w.t())
        return y.reshape(1, H, W, -1).permute(0, 3, 1, 2)
    xf = x.reshape(I, H * W)
    y = torch.mm(w, xf) if b is None else torch.addmm(b.reshape(-1, 1), w, xf)
    return y.reshape(1, -1, H, W)


def init_official_(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Official initialisation (randn weights, constant biases) for every submodule that defines it."""
    for m in module.modules():
        if getattr(m, "official_init", False):
            m.reset_parameters(generator)
    return module
