import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from goae import losses as L
from goae.config import LossConfig
from goae.model.discriminator import LatentCodesDiscriminator, LatentDiscriminatorConfig


def test_weights_are_the_papers_in_the_one_loss_config():
    """The loss weights have one home (goae.config.LossConfig, the params `loss` section), passed straight
    into the losses: its defaults are the paper's §4.5 values."""
    from goae.config import LossConfig, params_from_dict
    w = LossConfig()
    assert (w.lambda1, w.lambda2, w.lambda3, w.lambda4, w.lambda5, w.lambda6, w.lambda7, w.r1_gamma) == \
        (1.0, 0.8, 0.25, 0.05, 5.0, 0.001, 0.0001, 10.0)
    assert params_from_dict({"loss": {"lambda5": 3}}).loss.lambda5 == 3.0
    assert not hasattr(L, "LossWeights")


def test_softplus_forms_of_eq2_eq3_on_known_logits():
    out = L.d_adv_loss(torch.zeros(3, 1), torch.zeros(5, 1))
    assert out["d_adv"].item() == pytest.approx(2 * math.log(2), abs=1e-6)
    out = L.d_adv_loss(torch.tensor([[2.0]]), torch.tensor([[-1.0], [1.0]]))
    # -log σ(2) and mean(-log(1-σ(-1)), -log(1-σ(1)))
    sig = lambda x: 1 / (1 + math.exp(-x))
    assert out["d_real"].item() == pytest.approx(-math.log(sig(2)), abs=1e-6)
    assert out["d_fake"].item() == pytest.approx(-(math.log(1 - sig(-1)) + math.log(1 - sig(1))) / 2, abs=1e-6)
    e = L.e_adv_loss(torch.tensor([0.0, math.log(3)]))
    assert e.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, abs=1e-6)


def test_d_codes_rows():
    w = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    assert torch.equal(L.d_codes(w, "all")[4], w[1, 1])
    assert L.d_codes(w, "all").shape == (6, 4)
    assert torch.equal(L.d_codes(w, "base"), w[:, 0])
    with pytest.raises(ValueError):
        L.d_codes(w, "mean")


def test_r1_on_linear_discriminator_is_gamma_half_weight_norm_sq():
    torch.manual_seed(0)
    d = LatentCodesDiscriminator(LatentDiscriminatorConfig(w_dim=8, n_mlp=1))  # D(w) = a.w + b, ∇ = a
    a = d.mlp[0].weight.detach().flatten()
    w = torch.randn(4, 8)
    r1 = L.r1_penalty(d, w, gamma=10.0)
    assert r1.item() == pytest.approx(5.0 * a.square().sum().item(), rel=1e-5)
    # lazy regularisation: scaled by the interval
    assert L.r1_penalty(d, w, gamma=10.0, interval=16).item() == pytest.approx(16 * r1.item(), rel=1e-5)
    # create_graph: d(γ/2 ||a||^2)/da = γ a
    r1.backward()
    torch.testing.assert_close(d.mlp[0].weight.grad.flatten(), 10.0 * a)
    assert [L.r1_due(s, 16) for s in (0, 1, 15, 16, 32)] == [True, False, False, True, True]


def test_r1_on_quadratic_discriminator():
    class Quad(nn.Module):  # D(w) = 0.5 ||w||^2, ∇ = w
        def forward(self, w):
            return 0.5 * w.square().sum(-1, keepdim=True)
    w = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    # γ/2 · mean(||w||^2) = 5 · (5 + 9)/2
    assert L.r1_penalty(Quad(), w, gamma=10.0).item() == pytest.approx(35.0)


def test_discriminator_and_encoder_adv_losses():
    torch.manual_seed(0)
    d = LatentCodesDiscriminator(LatentDiscriminatorConfig(w_dim=8, n_mlp=2))
    w_real = torch.randn(3, 8)
    w_plus = torch.randn(2, 4, 8, requires_grad=True)
    out = L.discriminator_loss(d, w_real, w_plus, gamma=10.0, d_rows="all", r1_interval=None)
    ref = F.softplus(-d(w_real)).mean() + F.softplus(d(w_plus.reshape(8, 8))).mean()
    torch.testing.assert_close(out["d_adv"], ref)
    assert out["r1"].item() == 0 and out["total"].item() == pytest.approx(ref.item())
    out["total"].backward()
    assert w_plus.grad is None  # D's step must not reach the encoder
    out2 = L.discriminator_loss(d, w_real, w_plus, gamma=10.0, d_rows="base", r1_interval=16)
    torch.testing.assert_close(out2["d_fake"], F.softplus(d(w_plus[:, 0])).mean())
    torch.testing.assert_close(out2["r1"], L.r1_penalty(d, w_real, 10.0, 16))
    e = L.encoder_adv_loss(d, w_plus, "all")
    torch.testing.assert_close(e, F.softplus(-d(w_plus.reshape(8, 8))).mean())
    e.backward()
    assert w_plus.grad is not None and torch.isfinite(w_plus.grad).all()


def test_bg_depth_loss_known_values():
    depth = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    # (1-2)^2 + 0 + (3-2)^2 + (4-2)^2 = 6, over 4 pixels
    assert L.bg_depth_loss(depth, mask, 2.0).item() == pytest.approx(1.5)
    dmap = torch.tensor([[1.0, 0.0], [3.0, 3.0]])  # per-pixel D_avg
    assert L.bg_depth_loss(depth, mask, dmap).item() == pytest.approx(0.25)
    # a constant map at another size is resized and equals the scalar
    assert L.bg_depth_loss(depth, mask, torch.full((8, 8), 2.0)).item() == pytest.approx(1.5)
    # a mask at 2x resolution is area-averaged: the same mask, upsampled, gives the same loss
    big = mask.repeat_interleave(2, -1).repeat_interleave(2, -2)
    assert L.bg_depth_loss(depth, big, 2.0).item() == pytest.approx(1.5)
    assert L.bg_depth_loss(depth, torch.zeros_like(mask), 0.0).item() == 0.0
    d = depth.clone().requires_grad_(True)
    L.bg_depth_loss(d, mask, 2.0).backward()
    torch.testing.assert_close(d.grad, mask * 2 * (depth - 2) / 4)


def test_w_plus_delta_and_delta_f():
    w = torch.zeros(1, 14, 512)
    for i in range(14):
        w[0, i, 0] = float(i)           # ||w_i - w_0|| = i
    w[0, :, 1] = 7.0                    # shared offset cancels in Δw+
    assert L.w_plus_delta_loss(w).item() == pytest.approx(sum(range(1, 14)))
    assert L.w_plus_delta_loss(w, n_active=3).item() == pytest.approx(6.0)
    w2 = torch.cat([w, torch.zeros(1, 14, 512)])  # mean over batch: (91 + 0)/2
    assert L.w_plus_delta_loss(w2).item() == pytest.approx(45.5)
    same = torch.randn(2, 1, 512).repeat(1, 14, 1).requires_grad_(True)
    L.w_plus_delta_loss(same).backward()    # zero deltas (progressive start) must not give NaN grads
    assert torch.isfinite(same.grad).all()
    fs = torch.full((2, 4, 2, 2), 3.0)
    assert L.delta_f_loss(fs, torch.zeros_like(fs)).item() == pytest.approx(12.0)  # sqrt(16·9)


class _TinyID(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 8)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.fc(self.drop(F.adaptive_avg_pool2d(x, 4).flatten(1)))


def _embed(net, x):
    return F.normalize(net(x), dim=1)


class _L1(nn.Module):  # stand-in perceptual distance with a parameter that must stay frozen
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x, y):
        return self.scale * (x - y).abs().flatten(1).mean(1)


def test_reconstruction_loss_terms_with_stand_ins():
    torch.manual_seed(0)
    w = LossConfig()
    rl = L.ReconstructionLoss(w, lpips_net=_L1(), id_net=_TinyID(), id_embed=_embed).train()
    assert not rl.id_net.training and not rl.lpips_net.training
    x = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_(True)
    y = torch.rand(2, 3, 16, 16) * 2 - 1
    out = rl(x, y)
    l2 = (x - y).square().mean()
    lp = 2 * (x - y).abs().mean()
    cos = (_embed(rl.id_net, x) * _embed(rl.id_net, y)).sum(1)
    torch.testing.assert_close(out["l2"], l2)
    torch.testing.assert_close(out["lpips"], lp)
    torch.testing.assert_close(out["id"], (1 - cos).mean())
    torch.testing.assert_close(out["rec"], 1.0 * l2 + 0.8 * lp + 0.25 * (1 - cos).mean())
    out["rec"].backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in rl.parameters())  # frozen nets get no gradient
    same = rl(y, y)
    assert same["rec"].abs().item() < 1e-6 and same["id_sim"].item() == pytest.approx(1.0, abs=1e-6)
    # λ = 0 terms are skipped: no nets needed
    bare = L.ReconstructionLoss(LossConfig(lambda2=0.0, lambda3=0.0))
    assert bare.lpips_net is None and bare.id_net is None
    torch.testing.assert_close(bare(x, y)["rec"], l2)


def test_reconstruction_loss_default_offline_stack():
    pytest.importorskip("lpips")
    # packaged LPIPS heads on a seeded random AlexNet trunk (no torchvision download offline)
    rl = L.ReconstructionLoss(id_net=_TinyID(), id_embed=_embed)
    assert "alex" in rl.provenance["lpips"] and "random" in rl.provenance["lpips"]
    torch.manual_seed(1)
    y = torch.rand(1, 3, 64, 64) * 2 - 1
    x = (y + 0.3 * torch.randn_like(y)).clamp(-1, 1).requires_grad_(True)
    assert rl(y, y)["lpips"].item() == 0.0                      # LPIPS(x, x) = 0
    out = rl(x, y)
    assert out["lpips"].item() > 0
    out["rec"].backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is None for p in rl.parameters())


def test_reconstruction_loss_default_arcface_is_wired():
    arcface = pytest.importorskip("goae.nets.arcface")
    rl = L.ReconstructionLoss(LossConfig(lambda2=0.0))   # ArcFace only: random IR-SE50, no path
    assert isinstance(rl.id_net, arcface.IRSE50) and rl.id_embed is arcface.id_embedding
    assert "random" in rl.provenance["arcface"] and not any(p.requires_grad for p in rl.id_net.parameters())
    with pytest.raises(FileNotFoundError):
        L.ReconstructionLoss(LossConfig(lambda2=0.0), arcface_path="/nonexistent/model_ir_se50.pth")


def test_stage_totals():
    w = LossConfig()
    rec = {"rec": torch.tensor(1.0), "l2": torch.tensor(0.5)}
    out = L.stage1_encoder_loss(w, rec, adv_e=torch.tensor(2.0), bg=torch.tensor(0.1),
                                w_delta=torch.tensor(30.0), d_adv={"total": torch.tensor(1.3)})
    assert out["total"].item() == pytest.approx(1.0 + 0.05 * 2 + 5.0 * 0.1 + 0.001 * 30)
    assert out["eq11"].item() == pytest.approx(out["total"].item() + 1.3)
    assert out["l2"].item() == 0.5
    assert L.stage1_encoder_loss(w, rec)["total"].item() == 1.0
    s2 = L.stage2_loss(w, rec, torch.tensor(100.0))
    assert s2["total"].item() == pytest.approx(1.0 + 1e-4 * 100)
    assert L.stage2_loss(w, rec, torch.tensor(0.0), adv_e=torch.tensor(1.0))["total"].item() == pytest.approx(1.05)
    s2bg = L.stage2_loss(w, rec, torch.tensor(100.0), bg=torch.tensor(0.1))   # §4.2: λ5·L_BG stays in stage 2
    assert s2bg["total"].item() == pytest.approx(1.0 + 5.0 * 0.1 + 1e-4 * 100) and s2bg["bg"].item() == pytest.approx(0.1)


def _stand_in_mapping(num_ws=3):
    # ws rows = [z | c] so the test can read back the camera used for each sample
    return lambda z, c: torch.cat([z, c], 1)[:, None].repeat(1, num_ws, 1)


def test_canonical_codes_paper_mode_uses_static_front_camera():
    pytest.importorskip("goae.eg3d.camera")
    g = torch.Generator().manual_seed(0)
    ws = L.sample_canonical_codes(_stand_in_mapping(), 5, 4, g, mode="paper")
    assert ws.shape == (5, 4 + 25)
    front = torch.tensor([1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 2.7, 0, 0, 0, 1,
                          4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1], dtype=torch.float32)
    torch.testing.assert_close(ws[:, 4:], front.expand(5, 25))
    z_ref = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ws[:, :4], z_ref)


def test_canonical_codes_release_mode_jitters_within_ranges():
    pytest.importorskip("goae.eg3d.camera")
    g = torch.Generator().manual_seed(0)
    ws = L.sample_canonical_codes(_stand_in_mapping(), 256, 2, g, mode="release", jitter=(0.4, 0.15))
    t = ws[:, 2:18].reshape(-1, 4, 4)[:, :3, 3]          # camera origins
    yaw = torch.atan2(t[:, 0], t[:, 2])                   # origin = 2.7 (sinφ sin yaw, cosφ, sinφ cos yaw)
    pitch = -t[:, 1] * math.pi / (2 * 2.7)                # cosφ = -2 pitch / π
    assert torch.allclose(t.norm(dim=1), torch.full((256,), 2.7), atol=1e-5)
    assert yaw.abs().max() <= 0.4 + 1e-5 and yaw.abs().max() > 0.35
    assert pitch.abs().max() <= 0.15 + 1e-5 and pitch.abs().max() > 0.12
    fwd = ws[:, 2:18].reshape(-1, 4, 4)[:, :3, 2]          # looks at the pivot (0, 0, 0.2)
    to_pivot = F.normalize(torch.tensor([0, 0, 0.2]) - t, dim=1)
    torch.testing.assert_close(fwd, to_pivot, atol=1e-5, rtol=0)
    again = L.sample_canonical_codes(_stand_in_mapping(), 256, 2, torch.Generator().manual_seed(0), mode="release")
    torch.testing.assert_close(ws, again)


def test_canonical_codes_with_real_mapping_network():
    mapping = pytest.importorskip("goae.eg3d.mapping")
    torch.manual_seed(0)
    net = mapping.MappingNetwork(z_dim=8, c_dim=25, w_dim=16, num_ws=4, num_layers=2)
    ws = L.sample_canonical_codes(net, 3, 8, torch.Generator().manual_seed(1), mode="paper")
    assert ws.shape == (3, 16) and torch.isfinite(ws).all()
