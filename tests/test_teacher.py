"""The embedded world's teacher (goae.data.teacher): a per-identity 3D detail field on the tri-plane."""
from __future__ import annotations

import math

import pytest
import torch

from _tiny import TINY_GENERATOR
from goae.config import DataConfig, GeneratorConfig
from goae.data.teacher import add_detail, detail_planes
from goae.data.world import build_embedded_generator, detail_seeds, render_views, render_world
from goae.eg3d import camera as cam


@pytest.fixture(scope="module")
def G():
    torch.set_num_threads(1)
    return build_embedded_generator(GeneratorConfig(**TINY_GENERATOR))[0]


def test_detail_is_deterministic_per_identity_and_unit_rms():
    a, b, c = detail_planes(3, 8, 32), detail_planes(3, 8, 32), detail_planes(4, 8, 32)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.allclose(a.pow(2).mean(dim=(0, 2, 3)), torch.ones(8), atol=1e-5)
    # the XZ and ZX planes hold detail over their whole z range: behind the head (z < 0) too
    for p in (1, 2):
        back = a[p][..., :16] if p == 2 else a[p][:, :16]   # plane 1 rows = z, plane 2 columns = z
        assert back.abs().mean() > 0.3


def test_add_detail_scales_with_gap_and_zero_is_identity():
    planes = torch.randn(2, 3, 8, 32, 32) * 0.5 + 0.1
    assert add_detail(planes, [1, 2], 0.0) is planes
    d1, d2 = add_detail(planes, [1, 2], 1.0) - planes, add_detail(planes, [1, 2], 2.0) - planes
    assert torch.allclose(d2, 2 * d1, atol=1e-6)
    rel = d1.pow(2).mean(dim=(1, 3, 4)).sqrt() / planes.std(dim=(1, 3, 4))   # per identity and channel
    assert torch.allclose(rel, torch.ones_like(rel), atol=1e-4)
    assert add_detail(planes.reshape(2, 24, 32, 32), [1, 2], 1.0).shape == (2, 24, 32, 32)
    with pytest.raises(ValueError, match="one detail seed per identity"):
        add_detail(planes, [1], 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        add_detail(planes, [1, 2], -1.0)


def test_teacher_render_is_the_generator_on_detailed_planes(G):
    """Every view of an identity is a render of ONE detailed tri-plane: exact multi-view ground truth and
    depths, and something the input view does not show differs from the plain generator."""
    ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)), cam.canonical_camera(1))
    yaws = torch.tensor([0.0, 60.0, 150.0]).deg2rad()
    labels = cam.yaw_pitch_camera(yaws, torch.zeros(3))
    w3 = ws.expand(3, -1, -1)
    plain = render_views(G, w3, labels, 7)
    teach = render_views(G, w3, labels, 7, 1.0, [11] * 3)
    gen = torch.Generator().manual_seed(7)
    _, planes = G._run_backbone(w3, noise_mode="const", generator=gen)
    ref = G.render_planes(add_detail(planes, [11] * 3, 1.0), labels, w3, generator=gen)
    assert torch.equal(teach["depth"], ref["image_depth"]) and torch.equal(teach["image"], ref["image"].clamp(-1, 1))
    for i in range(3):   # the front, the side and the back all carry detail
        assert (teach["image"][i] - plain["image"][i]).abs().mean() > 1e-3
    assert torch.equal(render_views(G, w3, labels, 7, 0.0)["image"], plain["image"])


def test_world_gap_writes_meta_and_distinct_detail_seeds(G, tmp_path):
    d = DataConfig(n_train=1, n_celeba=1, n_mead_ids=2, mead_yaws_deg=[0.0, 60.0], photos=False, gap=0.5)
    summary = render_world(G, d, tmp_path, batch=4)
    assert summary["gap"] == 0.5
    import json
    meta = json.loads((tmp_path / "mead" / "meta.json").read_text())
    assert meta["gap"] == 0.5
    seeds = detail_seeds(0, "mead", range(2)) + detail_seeds(0, "celeba", range(1)) + detail_seeds(1, "mead", range(2))
    assert len(set(seeds)) == len(seeds)
    assert math.isfinite(summary["mead"])
