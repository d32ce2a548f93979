"""AFA (Eq. 6): F* = gamma * F + beta from cross-attention onto CNN(rec_img - img)."""
from dataclasses import asdict

import torch

from goae.model.afa import AFA, AFAConfig


def _inputs(cfg, res=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    # dyadic values (multiples of 1/64): shifting both images by 0.5 keeps rec - img bit-identical
    img = torch.randint(-64, 64, (1, 3, res, res), generator=g) / 64
    rec = torch.randint(-64, 64, (1, 3, res, res), generator=g) / 64
    feat = torch.randn(1, cfg.d_model, 8, 8, generator=g)
    return img, rec, feat


def test_paper_parameter_count_on_meta():
    with torch.device("meta"):
        afa = AFA(AFAConfig.paper())
    assert sum(p.numel() for p in afa.parameters()) == 12_099_904
    assert len(afa.state_dict()) == 174
    assert "body.3.shortcut_layer.0.weight" in afa.state_dict()         # 64 -> 128 projection
    assert not any(k.startswith("body.0.shortcut_layer") for k in afa.state_dict())  # max-pool


def test_tiny_forward_film_and_shapes():
    torch.manual_seed(0)
    cfg = AFAConfig.tiny()
    afa = AFA(cfg).eval()
    img, rec, feat = _inputs(cfg)
    with torch.no_grad():
        f_star, gamma, beta = afa(img, rec, feat)
        res = afa.residual_features(img, rec)
    assert res.shape == (1, cfg.d_model, 8, 8)          # three stride-2 units: H/8
    assert f_star.shape == gamma.shape == beta.shape == feat.shape
    assert torch.equal(f_star, gamma * feat + beta)      # Eq. 6, bitwise
    assert not torch.allclose(gamma, torch.ones_like(gamma)) and beta.abs().max() > 0


def test_depends_on_residual_with_official_sign():
    torch.manual_seed(1)
    cfg = AFAConfig.tiny()
    afa = AFA(cfg).eval()
    img, rec, feat = _inputs(cfg, seed=1)
    with torch.no_grad():
        ref = afa(img, rec, feat)[0]
        shifted = afa(img + 0.5, rec + 0.5, feat)[0]     # same dI = rec - img
        swapped = afa(rec, img, feat)[0]                 # -dI
    assert torch.equal(ref, shifted)
    assert not torch.allclose(ref, swapped, atol=1e-3)


def test_gradients_reach_every_parameter():
    torch.manual_seed(2)
    cfg = AFAConfig.tiny(dropout=0.0)
    # eval: with batch-1 train-mode BN and zero BN biases the SE pool sees exactly 0 (no SE grads)
    afa = AFA(cfg).eval()
    img, rec, feat = _inputs(cfg, seed=2)
    feat.requires_grad_(True)
    f_star, _, _ = afa(img, rec, feat)
    f_star.square().mean().backward()
    for n, p in afa.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert feat.grad.abs().sum() > 0


def test_config_roundtrip():
    cfg = AFAConfig.tiny(heads=2)
    assert AFAConfig.from_dict(asdict(cfg)) == cfg
