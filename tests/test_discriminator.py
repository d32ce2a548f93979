import torch
import torch.nn.functional as F

from goae.model.discriminator import LatentCodesDiscriminator, LatentDiscriminatorConfig


def test_e4e_layout_and_param_count():
    d = LatentCodesDiscriminator()
    lin = [m for m in d.mlp if isinstance(m, torch.nn.Linear)]
    act = [m for m in d.mlp if isinstance(m, torch.nn.LeakyReLU)]
    assert [(m.in_features, m.out_features) for m in lin] == [(512, 512)] * 3 + [(512, 1)]
    assert len(act) == 3 and all(a.negative_slope == 0.2 for a in act)
    assert list(d.state_dict()) == [f"mlp.{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias")]
    assert sum(p.numel() for p in d.parameters()) == 3 * (512 * 512 + 512) + 512 + 1


def test_forward_matches_manual_mlp():
    torch.manual_seed(0)
    d = LatentCodesDiscriminator(LatentDiscriminatorConfig(w_dim=16, n_mlp=3))
    w = torch.randn(5, 16)
    ref = w
    lins = [m for m in d.mlp if isinstance(m, torch.nn.Linear)]
    for i, m in enumerate(lins):
        ref = ref @ m.weight.T + m.bias
        if i < len(lins) - 1:
            ref = F.leaky_relu(ref, 0.2)
    out = d(w)
    assert out.shape == (5, 1)
    torch.testing.assert_close(out, ref)
    assert d(torch.randn(2, 3, 16)).shape == (2, 3, 1)


def test_rejects_wrong_width_and_builds_on_meta():
    d = LatentCodesDiscriminator(LatentDiscriminatorConfig(w_dim=8, n_mlp=2))
    try:
        d(torch.zeros(1, 9))
        raise AssertionError("expected ValueError")
    except ValueError:
        pass
    m = LatentCodesDiscriminator(device="meta")
    assert all(p.is_meta for p in m.parameters())
