"""benchmarks/mix_regions.py's visibility split: reprojection of exact depths between two cameras."""
from __future__ import annotations

import importlib.util
import pytest
import torch

from _tiny import ROOT
from goae.eg3d import camera as cam
from goae.eg3d.renderer import RaySampler

spec = importlib.util.spec_from_file_location("mix_regions_bench", ROOT / "benchmarks" / "mix_regions.py")
mr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mr)


class _Rays:
    """Stands in for G: only its ray sampler is used."""
    ray_sampler = RaySampler()


def _sphere_depth(labels: torch.Tensor, res: int = 32, radius: float = 0.3):
    """Exact ray distance to a sphere at the origin -> (depth [B,1,r,r], hit mask [B,1,r,r])."""
    o, d = RaySampler()(labels[:, :16].reshape(-1, 4, 4), labels[:, 16:25].reshape(-1, 3, 3), res)
    b = (o * d).sum(-1)
    disc = b.square() - (o.square().sum(-1) - radius ** 2)
    t = -b - disc.clamp_min(0).sqrt()
    hit = disc > 0
    t = torch.where(hit, t, torch.full_like(t, 10.0))
    return t.reshape(-1, 1, res, res), hit.reshape(-1, 1, res, res)


@pytest.fixture(scope="module")
def world():
    labels = cam.yaw_pitch_camera(torch.tensor([0.0, 60.0, 180.0]).deg2rad(), torch.zeros(3), pivot=[0, 0, 0])
    depth, face = _sphere_depth(labels)
    return _Rays(), labels, depth, face


def test_a_view_sees_its_own_surface_and_not_points_behind_it(world):
    G, labels, depth, face = world
    c, d, f = labels[:1], depth[:1], face[:1]
    pts = mr.target_points(G, c, d)
    vis = mr.visible_from(pts, c, d, f, tol=0.02)
    assert bool(vis[f.reshape(1, -1)].all())
    behind = mr.target_points(G, c, d + 0.1)   # each point pushed 0.1 along its ray: hidden by the surface
    assert not bool(mr.visible_from(behind, c, d, f, tol=0.02)[f.reshape(1, -1)].any())
    assert bool(mr.visible_from(behind, c, d, f, tol=0.02, margin=0.05)[f.reshape(1, -1)].all())


def test_sphere_back_is_occluded_from_the_front_and_yaw_60_partly(world):
    G, labels, depth, face = world
    frac = {}
    for k in (1, 2):
        pts = mr.target_points(G, labels[k:k + 1], depth[k:k + 1])
        vis = mr.visible_from(pts, labels[:1], depth[:1], face[:1], tol=0.02)
        m = face[k:k + 1].reshape(1, -1)
        frac[k] = float(vis[m].float().mean())
    # a sphere seen 60° apart shares about 2/3 of its visible disc (less under perspective); 180°: none
    assert frac[2] == 0.0 and 0.5 < frac[1] < 0.75, frac


def test_mix_weight_reads_the_plane_masks_at_the_points():
    masks = torch.zeros(1, 3, 1, 8, 8)
    masks[:, :, :, :, 4:] = 1.0                      # x > 0 on plane 0 (XY) and plane 1 (XZ) columns
    pts = torch.tensor([[[0.3, 0.0, 0.0], [-0.3, 0.0, 0.0]]])
    w = mr.mix_weight(masks, pts, box_warp=1.0)
    # plane 2 (ZX) has z as its column: z = 0 lies on the mask edge (bilinear 0.5) for both points
    assert torch.allclose(w, torch.tensor([[(1 + 1 + 0.5) / 3, (0 + 0 + 0.5) / 3]]), atol=1e-5)
