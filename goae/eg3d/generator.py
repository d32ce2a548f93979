"""EG3D `TriPlaneGenerator` (NVlabs/eg3d @7cf1fd1) plus GOAE's split synthesis at the 32^2 feature F.

Built from the official init kwargs / rendering_kwargs alone; state_dict keys are the official ones.
Deliberate deviations (documented; outputs stay within the fixture tolerances, see golden.py):
- Numerics: the official maths re-associated for CPU speed (ops.py), optionally Winograd (`cpu_winograd`).
- `synthesis(..., neural_rendering_resolution=n)` does not overwrite `self.neural_rendering_resolution`.
- The 2X/4X image_raw aliasing is reproduced without in-place ops (see superres.py).
- Randomness: renderer draws (and 'random' noise) come from `generator` if given, else the global RNG in
  the official order, so `torch.manual_seed(S)` before `synthesis` reproduces official CPU runs.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .mapping import MappingNetwork
from .ops import init_official_
from .renderer import ImportanceRenderer, OSGDecoder, RaySampler
from .superres import build_superresolution
from .synthesis import SynthesisLayer, SynthesisNetwork

PLANE_RES, PLANE_CHANNELS = 256, 32  # hard-wired in the official generator, whatever the output size
WINOGRAD_MIN_RES = 64
SPLIT_RES = 32  # GOAE's F: blocks b4..b32 (ws rows 0..7) | b64..b256 (rows 7..13)


class StyleGAN2Backbone(nn.Module):
    """Official networks_stylegan2.Generator: synthesis registered before mapping (state_dict order)."""

    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs=None, **synthesis_kwargs):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                      **(mapping_kwargs or {}))


class TriPlaneGenerator(nn.Module):
    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 sr_num_fp16_res: int = 0, mapping_kwargs: dict | None = None, rendering_kwargs: dict | None = None,
                 sr_kwargs: dict | None = None, *, init_seed: int | None = 0, register_label_std: bool = False,
                 backbone_bf16: bool = False, cpu_winograd: bool = True, **synthesis_kwargs):
        """Official init kwargs. Extras (keyword-only): `init_seed` seeds the official random init (None:
        leave zeros, e.g. before loading a state); `register_label_std` adds the (25,) `dataset_label_std`
        buffer every released checkpoint carries (otherwise that key is dropped on load);
        `backbone_bf16` runs the backbone under CUDA bf16 autocast (no effect on CPU);
        `cpu_winograd` runs the 3x3 stride-1 convs at >= 64^2 through NNPACK's Winograd on CPU without
        autograd (2-3x faster; golden errors stay within 2x of the direct conv's, see `set_cpu_winograd`)."""
        super().__init__()
        rendering_kwargs = dict(rendering_kwargs or {})
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.backbone_bf16 = backbone_bf16
        self.backbone = StyleGAN2Backbone(z_dim, c_dim, w_dim, img_resolution=PLANE_RES,
                                          img_channels=3 * PLANE_CHANNELS, mapping_kwargs=mapping_kwargs,
                                          **synthesis_kwargs)
        self.renderer = ImportanceRenderer()
        self.ray_sampler = RaySampler()
        self.superresolution = build_superresolution(
            rendering_kwargs["superresolution_module"], channels=32, img_resolution=img_resolution,
            sr_num_fp16_res=sr_num_fp16_res, sr_antialias=rendering_kwargs["sr_antialias"], **(sr_kwargs or {}))
        self.decoder = OSGDecoder(PLANE_CHANNELS, hidden_dim=64, decoder_output_dim=32,
                                  lr_multiplier=rendering_kwargs.get("decoder_lr_mul", 1))
        self.neural_rendering_resolution = 64
        self.rendering_kwargs = rendering_kwargs
        self.set_cpu_winograd(cpu_winograd)
        if register_label_std:
            self.register_buffer("dataset_label_std", torch.zeros(25))
        if init_seed is not None and not any(p.is_meta for p in self.parameters()):
            init_official_(self, torch.Generator().manual_seed(init_seed))

    def set_cpu_winograd(self, enabled: bool, min_res: int = WINOGRAD_MIN_RES) -> None:
        """Winograd F(6x6,3x3) rounds differently from a direct conv (~1e-5 relative per layer). From 64^2 up
        it saves most (the big convs); starting lower saves little and eats into the golden margins."""
        for m in self.modules():
            if isinstance(m, SynthesisLayer):
                m.winograd = bool(enabled) and m.up == 1 and m.weight.shape[-1] == 3 and m.resolution >= min_res

    @classmethod
    def from_config(cls, cfg: dict, **extra) -> "TriPlaneGenerator":
        """cfg: {'init_kwargs', optional 'rendering_kwargs' (wins), optional 'neural_rendering_resolution'}."""
        kw = dict(cfg["init_kwargs"])
        if "rendering_kwargs" in cfg:
            kw["rendering_kwargs"] = cfg["rendering_kwargs"]
        G = cls(**kw, **extra)
        G.neural_rendering_resolution = int(cfg.get("neural_rendering_resolution", G.neural_rendering_resolution))
        return G

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if "dataset_label_std" in state_dict and not hasattr(self, "dataset_label_std"):
            state_dict = {k: v for k, v in state_dict.items() if k != "dataset_label_std"}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ---------------------------------------------------------------- mapping
    def mapping(self, z, c, truncation_psi: float = 1, truncation_cutoff: int | None = None) -> torch.Tensor:
        if self.rendering_kwargs["c_gen_conditioning_zero"]:
            c = torch.zeros_like(c)
        return self.backbone.mapping(z, c * self.rendering_kwargs.get("c_scale", 0), truncation_psi=truncation_psi,
                                     truncation_cutoff=truncation_cutoff)

    # ---------------------------------------------------------------- backbone
    def _autocast(self, t: torch.Tensor):
        if self.backbone_bf16 and t.is_cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _run_backbone(self, ws, x=None, img=None, start_res=4, end_res=None, noise_mode="const", generator=None,
                      record=None, **synthesis_kwargs):
        synthesis_kwargs.pop("superresolution", None)  # a render option, not a backbone one
        with self._autocast(ws):
            x, img = self.backbone.synthesis.run(ws, x, img, start_res=start_res, end_res=end_res, record=record,
                                                 noise_mode=noise_mode, generator=generator, **synthesis_kwargs)
        return x, (None if img is None else img.float())

    def synthesis_to_F(self, ws, noise_mode: str = "const", *, generator=None, record=None, **synthesis_kwargs):
        """Blocks b4..b32 (ws rows 0..7) -> (skip_img [B,96,32,32], feat_F [B,C32,32,32])."""
        x, img = self._run_backbone(ws, end_res=SPLIT_RES, noise_mode=noise_mode, generator=generator,
                                    record=record, **synthesis_kwargs)
        return img, x.float()  # no-op in fp32; b64 casts its input to fp32 anyway, so the split stays exact

    # ---------------------------------------------------------------- rendering + SR
    def _render(self, planes, c, ws, neural_rendering_resolution=None, noise_mode="const", *, generator=None,
                stratified_u=None, importance_u=None, record=None, **synthesis_kwargs) -> dict:
        run_sr = synthesis_kwargs.pop("superresolution", True)  # False: depth/raw only (D_avg, L_BG)
        res = int(neural_rendering_resolution or self.neural_rendering_resolution)
        cam2world, intrinsics = c[:, :16].view(-1, 4, 4), c[:, 16:25].view(-1, 3, 3)
        ray_origins, ray_directions = self.ray_sampler(cam2world, intrinsics, res)
        B = planes.shape[0]
        planes = planes.reshape(B, 3, PLANE_CHANNELS, planes.shape[-2], planes.shape[-1])
        feat, depth, weights_sum = self.renderer(planes, self.decoder, ray_origins, ray_directions,
                                                 self.rendering_kwargs, generator=generator,
                                                 stratified_u=stratified_u, importance_u=importance_u, record=record)
        feature_image = feat.permute(0, 2, 1).reshape(B, feat.shape[-1], res, res).contiguous()
        depth_image = depth.permute(0, 2, 1).reshape(B, 1, res, res)
        rgb_image = feature_image[:, :3]
        image, aliased_raw = None, None
        if run_sr:
            image, aliased_raw = self.superresolution(rgb_image, feature_image, ws, record=record,
                                                      noise_mode=self.rendering_kwargs["superresolution_noise_mode"],
                                                      generator=generator, **synthesis_kwargs)
        return {"image": image, "image_raw": rgb_image if aliased_raw is None else aliased_raw,
                "image_depth": depth_image, "feature_image": feature_image, "planes": planes,
                "weights_sum": weights_sum, "ray_origins": ray_origins, "ray_directions": ray_directions}

    def synthesis(self, ws, c, neural_rendering_resolution=None, noise_mode: str = "const", *, generator=None,
                  stratified_u=None, importance_u=None, record=None, **synthesis_kwargs) -> dict:
        _, planes = self._run_backbone(ws, noise_mode=noise_mode, generator=generator, record=record,
                                       **synthesis_kwargs)
        return self._render(planes, c, ws, neural_rendering_resolution, noise_mode, generator=generator,
                            stratified_u=stratified_u, importance_u=importance_u, record=record, **synthesis_kwargs)

    def synthesis_from_F(self, feat_F, skip_img, ws, c, neural_rendering_resolution=None, noise_mode: str = "const",
                         *, generator=None, stratified_u=None, importance_u=None, record=None,
                         **synthesis_kwargs) -> dict:
        """Blocks b64..b256 (ws rows 7..13) on (F, skip image), then render + SR: same dict as `synthesis`."""
        _, planes = self._run_backbone(ws, feat_F, skip_img, start_res=2 * SPLIT_RES, noise_mode=noise_mode,
                                       generator=generator, record=record, **synthesis_kwargs)
        return self._render(planes, c, ws, neural_rendering_resolution, noise_mode, generator=generator,
                            stratified_u=stratified_u, importance_u=importance_u, record=record, **synthesis_kwargs)

    def render_planes(self, planes, c, ws, neural_rendering_resolution=None, noise_mode: str = "const", *,
                      generator=None, stratified_u=None, importance_u=None, record=None, **synthesis_kwargs) -> dict:
        """Render an external tri-plane ([B,3,32,H,W] or [B,96,H,W]); the SR uses ws[:, -1]."""
        return self._render(planes, c, ws, neural_rendering_resolution, noise_mode, generator=generator,
                            stratified_u=stratified_u, importance_u=importance_u, record=record, **synthesis_kwargs)

    def forward(self, z, c, truncation_psi: float = 1, truncation_cutoff: int | None = None, **kw) -> dict:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, c, **kw)
