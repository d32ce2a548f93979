"""GOAE = encoder E + frozen EG3D G + AFA + occlusion-aware mix (paper Fig. 4).

    w+ = E(I) + w_avg                                   Eq. 1   (encoder.py)
    I_w+ = R_dec(G(w+), c)                              Eq. 1
    F* = γ ⊙ F + β,  (γ, β) = AFA(I, I_w+, F)           Eq. 6   (afa.py)
    tri-plane_mix = tri-plane_F*|V + tri-plane_w+|O     Eqs. 7–8 (mix.py)

`invert()` runs the whole inference path (no grad) and keeps everything needed to render novel views;
`render()` renders a result from any camera. The training steps (goae.train) call the same pieces.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from goae.eg3d import camera as cam
from goae.model.afa import AFA
from goae.model.encoder import Encoder, add_w_avg
from goae.model.mix import MixConfig, occlusion_aware_mix


@dataclass
class InversionResult:
    w_plus: torch.Tensor                 # [B,14,512] (w_avg added)
    camera: torch.Tensor                 # [B,25] input-view label
    image_wplus: torch.Tensor            # I_w+ at the input view
    feat_F: torch.Tensor                 # F  [B,C,32,32]
    skip_img: torch.Tensor               # tri-plane skip image at 32² [B,96,32,32]
    planes_wplus: torch.Tensor           # [B,3,32,256,256]
    feat_star: torch.Tensor | None = None        # F*
    planes_fstar: torch.Tensor | None = None
    planes_mix: torch.Tensor | None = None
    masks: torch.Tensor | None = None            # [B,3,1,256,256] visibility footprints
    image: torch.Tensor | None = None            # final input-view image (I_F* or I_w+)
    depth: torch.Tensor | None = None            # input-view depth [B,1,r,r]
    extras: dict = field(default_factory=dict)

    @property
    def planes(self) -> torch.Tensor:
        """The tri-plane novel views are rendered from: mix > F* > w+ (whatever was computed)."""
        for p in (self.planes_mix, self.planes_fstar, self.planes_wplus):
            if p is not None:
                return p
        raise ValueError("empty inversion result")


def resize(img: torch.Tensor, size: int) -> torch.Tensor:
    if img.shape[-1] == size and img.shape[-2] == size:
        return img
    return F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class GOAE(nn.Module):
    def __init__(self, G: nn.Module, encoder: Encoder, afa: AFA | None = None, mix: MixConfig = MixConfig()):
        super().__init__()
        self.G = G.eval().requires_grad_(False)  # EG3D stays frozen in both stages
        self.encoder = encoder
        self.afa = afa
        self.mix_cfg = mix
        self.register_buffer("w_avg", G.backbone.mapping.w_avg.detach().clone().reshape(1, 1, -1), persistent=False)

    # -------------------------------------------------------------------------------- pieces
    def encode(self, img: torch.Tensor, stage: int = 3) -> torch.Tensor:
        """Eq. 1: w+ = E(I) (+ w_avg, the release's start_from_latent_avg)."""
        delta, _ = self.encoder(resize(img, self.encoder.cfg.img_size), stage=stage)
        return add_w_avg(delta.float(), self.w_avg)  # .float(): w+ stays fp32 under an autocast (fast path)

    def render_from_F(self, feat, skip_img, w_plus, c, generator=None, **synthesis_kwargs) -> dict:
        return self.G.synthesis_from_F(feat, skip_img, w_plus, c, generator=generator, **synthesis_kwargs)

    def refine(self, img, image_wplus, feat_F):
        """Eq. 6 via AFA; `img` and `image_wplus` at the generator's output resolution."""
        return self.afa(img, resize(image_wplus, img.shape[-1]), feat_F)

    def mix(self, out_fstar: dict, planes_wplus: torch.Tensor, generator=None):
        """Eqs. 7–8 on the input-view render of the F* tri-plane (its depth and rays)."""
        return occlusion_aware_mix(out_fstar["planes"], planes_wplus, out_fstar["image_depth"].flatten(2).transpose(1, 2),
                                   out_fstar["ray_origins"], out_fstar["ray_directions"],
                                   float(self.G.rendering_kwargs["box_warp"]), self.mix_cfg, generator=generator,
                                   render_res=out_fstar["image_depth"].shape[-1])

    # ------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def invert(self, img: torch.Tensor, c: torch.Tensor, *, use_afa: bool = True, use_mix: bool = True,
               generator: torch.Generator | None = None, draws: tuple[dict, dict] | None = None,
               **synthesis_kwargs) -> InversionResult:
        """images [B,3,H,W] in [-1,1] at G's output resolution, cameras [B,25] (EG3D labels).

        `draws` = ({stratified_u, importance_u} of the w+ render, the same for the F* render): the
        renderer's random numbers given instead of drawn (goae.model.fast draws them outside its
        compiled / captured graph, in the order `generator` would). `synthesis_kwargs` go to every
        EG3D block (e.g. fused_modconv)."""
        d_w, d_f = draws or ({}, {})
        w_plus = self.encode(img)
        skip, feat = self.G.synthesis_to_F(w_plus, **synthesis_kwargs)
        out_w = self.render_from_F(feat, skip, w_plus, c, generator, **d_w, **synthesis_kwargs)
        res = InversionResult(w_plus=w_plus, camera=c, image_wplus=out_w["image"], feat_F=feat, skip_img=skip,
                              planes_wplus=out_w["planes"], image=out_w["image"], depth=out_w["image_depth"])
        if not use_afa or self.afa is None:
            return res
        f_star, gamma, beta = self.refine(img, out_w["image"], feat)
        out_f = self.render_from_F(f_star, skip, w_plus, c, generator, **d_f, **synthesis_kwargs)
        res.feat_star, res.planes_fstar = f_star, out_f["planes"]
        res.image, res.depth = out_f["image"], out_f["image_depth"]
        res.extras.update(gamma=gamma, beta=beta)
        if use_mix:
            res.planes_mix, res.masks = self.mix(out_f, out_w["planes"], generator)
        return res

    @torch.no_grad()
    def render(self, result: InversionResult, c: torch.Tensor, generator: torch.Generator | None = None,
               planes: torch.Tensor | None = None) -> dict:
        """Render the inversion (the mixed tri-plane when there is one) from camera(s) c [B,25]."""
        planes = result.planes if planes is None else planes
        return self.G.render_planes(planes, c, result.w_plus, generator=generator)

    @torch.no_grad()
    def front_view(self, result: InversionResult, generator=None) -> dict:
        return self.render(result, cam.canonical_camera(result.w_plus.shape[0], device=result.w_plus.device), generator)
