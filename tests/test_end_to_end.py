"""Tiny end to end: invert a batch with a tiny encoder + tiny EG3D, back-propagate the stage-1 total loss
(Eq. 11 with L_BG and L_w+) and the stage-2 loss; all gradients finite, frozen modules receive none."""
import torch

from goae import losses as L
from goae.config import GeneratorConfig, LossConfig
from goae.data.world import build_embedded_generator
from goae.eg3d import camera as cam
from goae.masks import DepthThresholdMask
from goae.model.afa import AFA, AFAConfig
from goae.model.discriminator import LatentCodesDiscriminator
from goae.model.encoder import Encoder, EncoderConfig
from goae.model.goae import GOAE
from goae.nets.arcface import random_arcface
from goae.train.common import background_mask, feature_channels

TINY = GeneratorConfig(img_resolution=128, channel_base=256, channel_max=16, neural_rendering_resolution=16,
                       depth_resolution=6, depth_resolution_importance=6, w_avg_samples=50)


def _grads_ok(module, expect_some=True):
    gs = [p.grad for p in module.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in gs)
    if expect_some:
        assert any(g.abs().sum() > 0 for g in gs)
    return len(gs)


def test_stage1_and_stage2_losses_backprop():
    torch.manual_seed(0)
    G, _ = build_embedded_generator(TINY)
    E = Encoder(EncoderConfig.tiny())
    A = AFA(AFAConfig.tiny(d_model=feature_channels(G), heads=4))
    D = LatentCodesDiscriminator()
    model = GOAE(G, E, A)
    W = LossConfig()
    rec = L.ReconstructionLoss(W, id_net=random_arcface(0, num_layers=4))
    mask = DepthThresholdMask(opacity_min=0.4)
    g = torch.Generator().manual_seed(0)
    c = cam.yaw_pitch_camera(torch.tensor([0.0, 0.3]), torch.tensor([0.0, -0.1]))
    with torch.no_grad():  # targets: two renders of the world itself
        target = G.synthesis(G.mapping(torch.randn(2, 512, generator=g), c), c, generator=g)["image"].clamp(-1, 1)

    # ---- stage 1: Eq. 11 on the encoder, Eq. 2 (+R1) on D_Wc
    w_plus = model.encode(target)
    assert w_plus.shape == (2, 14, 512)
    out = G.synthesis(w_plus, c, generator=g)
    front = G.synthesis(w_plus, cam.canonical_camera(2), generator=g, superresolution=False)
    bg = L.bg_depth_loss(front["image_depth"], background_mask(mask, front), 2.8)
    d_out = L.discriminator_loss(D, torch.randn(2, 512), w_plus, gamma=W.r1_gamma, r1_interval=1)
    terms = L.stage1_encoder_loss(W, rec(out["image"], target), adv_e=L.encoder_adv_loss(D, w_plus),
                                  bg=bg, w_delta=L.w_plus_delta_loss(w_plus), d_adv=d_out)
    assert all(torch.isfinite(v).all() for v in terms.values())
    terms["total"].backward()
    _grads_ok(E)
    assert all(p.grad is None for p in G.parameters())          # EG3D is frozen
    assert all(p.grad is None for p in rec.parameters())        # LPIPS / ArcFace are frozen
    D.zero_grad(set_to_none=True)
    d_out["total"].backward()
    _grads_ok(D)

    # ---- stage 2: encoder frozen, AFA trained with L_rec + λ7·||ΔF||
    E.zero_grad(set_to_none=True)
    E.requires_grad_(False)
    with torch.no_grad():
        w_plus = model.encode(target)
        skip, feat = G.synthesis_to_F(w_plus)
        out_w = G.synthesis_from_F(feat, skip, w_plus, c, generator=g)
    f_star, gamma, beta = model.refine(target, out_w["image"], feat)
    torch.testing.assert_close(f_star, gamma * feat + beta)
    out_f = G.synthesis_from_F(f_star, skip, w_plus, c, generator=g)
    t2 = L.stage2_loss(W, rec(out_f["image"], target), L.delta_f_loss(f_star, feat))
    assert torch.isfinite(t2["total"])
    t2["total"].backward()
    _grads_ok(A)
    assert all(p.grad is None for p in E.parameters()) and all(p.grad is None for p in G.parameters())

    # ---- inference API: invert + render novel views from the mixed tri-plane
    res = model.invert(target, c, generator=g)
    assert res.planes_mix is not None and res.masks.shape == (2, 3, 1, 256, 256)
    views = model.render(res, cam.yaw_pitch_camera(torch.tensor([0.5, -0.5]), torch.zeros(2)), g)
    assert views["image"].shape == (2, 3, 128, 128) and torch.isfinite(views["image"]).all()
