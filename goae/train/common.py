"""Building the pieces a stage needs from typed params: generator, encoder, AFA, masks, losses.

Every external weight goes through `asset()`: a configured path is used (its sha256 recorded), else the
first fallback `assets.allow_fallbacks` permits; what was actually used lands in `provenance`.
"""
from __future__ import annotations

from dataclasses import asdict

import torch

from goae.assets import sha256_file  # noqa: F401  (re-exported for the stages)
from goae.config import Params
from goae.eg3d.generator import TriPlaneGenerator
from goae.model.afa import AFA, AFAConfig
from goae.model.encoder import Encoder, EncoderConfig
from goae.model.io import (asset, load_afa, load_encoder, load_generator, load_tensors,  # noqa: F401
                           resolve, save_module)


def apply_runtime(p: Params, device, G: TriPlaneGenerator | None = None, *modules: torch.nn.Module) -> None:
    """GPU fast paths from `runtime.*` (no-ops on CPU, where fp32 keeps runs exact and comparable):
    fp16 super-resolution as the official code (off → fp32 SR everywhere); torch.compile of the given
    modules (encoder/AFA) and of the OSG decoder, in place so state_dict keys stay unchanged."""
    fp16_sr, compile_ = p.runtime.fp16_sr, p.runtime.compile  # read on every device (declared keys)
    if G is not None and not fp16_sr:
        for name in ("block0", "block1"):
            blk = getattr(G.superresolution, name, None)
            if blk is not None:
                blk.use_fp16 = False
    if compile_ and torch.device(device).type == "cuda":
        for m in modules + ((G.decoder,) if G is not None else ()):
            m.compile()


def feature_channels(G: TriPlaneGenerator) -> int:
    """Channels of F (the b32 feature map) — the AFA's d_model."""
    return int(G.backbone.synthesis.b32.conv1.weight.shape[0])


def encoder_config(p: Params) -> EncoderConfig:
    size, schedule, drop_path = p.encoder.size, tuple(p.encoder.schedule), p.encoder.drop_path_rate
    base = EncoderConfig.paper if size == "paper" else EncoderConfig.tiny
    kw = {"schedule": schedule}
    if size == "paper":  # the tiny trunk is trained without stochastic depth
        kw["drop_path_rate"] = drop_path
    return base(**kw)


def afa_config(p: Params, G: TriPlaneGenerator) -> AFAConfig:
    base = AFAConfig.paper if p.afa.size == "paper" else AFAConfig.tiny
    c = feature_channels(G)
    heads = 4 if c % 4 == 0 else 1
    return base(d_model=c, heads=heads) if p.afa.size == "tiny" else base(d_model=c)


def build_encoder(p: Params, provenance: dict) -> Encoder:
    cfg = encoder_config(p)
    E = Encoder(cfg)
    path = asset(p, "swin", provenance)
    if path:
        from goae.model.encoder import load_swin_imagenet
        load_swin_imagenet(E, path)
    return E


def build_afa(p: Params, G: TriPlaneGenerator) -> AFA:
    return AFA(afa_config(p, G))


def build_mask(p: Params, provenance: dict, device):
    from goae.masks import build_mask_provider
    from goae.params_view import depends_on
    # Every key that picks or configures M in some config counts, whichever mask this one uses.
    depends_on(p, "assets.bisenet", "assets.allow_fallbacks")
    kind, opacity_min = p.davg.mask, p.davg.opacity_min
    if kind == "depth":
        m = build_mask_provider("depth", opacity_min=opacity_min)
    elif kind == "bisenet" and (r := resolve(p, "bisenet", provenance)).kind in ("file", "random"):
        m = build_mask_provider("bisenet", path=str(r.path) if r.path else None).to(device)
    else:  # 'selfie', or BiSeNet's packaged substitute: mediapipe's person segmentation
        m = build_mask_provider("selfie")
    provenance["mask"] = f"{m.name}:{m.weights}"
    return m


def mask_needs_image(mask) -> bool:
    """Image-based providers need the super-resolved image; the opacity rule needs depth/opacity only."""
    return getattr(mask, "name", "") != "depth"


def background_mask(mask, out: dict) -> torch.Tensor:
    """M (1 = background) at the depth map's resolution, for a render dict of the generator."""
    depth = out["image_depth"]
    if getattr(mask, "name", "") == "depth":
        r = depth.shape[-1]
        ws = out["weights_sum"].reshape(depth.shape[0], 1, r, r)
        return mask.background_from_render(depth, ws)
    m = mask.background(out["image"].clamp(-1, 1))
    return torch.nn.functional.interpolate(m, size=depth.shape[-2:], mode="area")


def build_rec_loss(p: Params, provenance: dict, device):
    from goae.losses import ReconstructionLoss
    alex = asset(p, "lpips_alexnet", provenance)
    arc = asset(p, "arcface", provenance)
    id_net = None
    if arc is None and p.loss.lambda3 > 0:
        from goae.nets.arcface import random_arcface
        id_net = random_arcface(0, num_layers=4 if p.assets.random_arcface == "tiny" else 50)
        provenance["arcface"] = id_net.provenance
    rec = ReconstructionLoss(p.loss, alexnet_path=alex, arcface_path=arc, id_net=id_net)
    provenance.update({f"loss.{k}": v for k, v in rec.provenance.items()})
    return rec.to(device)


def config_dict(obj) -> dict:
    return asdict(obj)
