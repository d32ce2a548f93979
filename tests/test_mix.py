import math

import pytest
import torch
import torch.nn.functional as F

from goae.model.mix import MixConfig, gaussian_blur, occlusion_aware_mix, splat_footprint, visibility_masks


def _rays_to(points: torch.Tensor):
    """Rays from z = 5 straight down -z that hit `points` [B,M,3] at depth 5 - z."""
    origins = points.clone()
    origins[..., 2] = 5.0
    dirs = torch.zeros_like(points)
    dirs[..., 2] = -1.0
    return 5.0 - points[..., 2:], origins, dirs


def _center(i, res):  # normalised coordinate of texel i's centre (align_corners=False)
    return (2 * i + 1) / res - 1


def test_gaussian_kernel_values_and_constant_preserved():
    x = torch.zeros(1, 1, 11, 11)
    x[0, 0, 5, 5] = 1.0
    y = gaussian_blur(x, 1.5, 9)
    g = [math.exp(-0.5 * (t / 1.5) ** 2) for t in range(-4, 5)]
    s = sum(g)
    assert y[0, 0, 5, 5].item() == pytest.approx((1 / s) ** 2, rel=1e-5)
    assert y[0, 0, 5, 8].item() == pytest.approx(g[7] / s * g[4] / s, rel=1e-5)
    assert y[0, 0, 0, 0].item() == 0.0  # beyond the 9-tap support (reflect pad stays outside)
    c = torch.full((2, 3, 6, 7), 0.7)
    torch.testing.assert_close(gaussian_blur(c, torch.tensor([1.0, 2.0]), 9), c)


def test_gaussian_blur_matches_torchvision():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 20)
    for sigma in (1.0, 1.37, 2.0):
        ref = tvf.gaussian_blur(x, [9, 9], [sigma, sigma])
        torch.testing.assert_close(gaussian_blur(x, sigma, 9), ref, atol=1e-6, rtol=0)
    # per-sample sigmas = each sample blurred with its own sigma
    y = gaussian_blur(x, torch.tensor([1.0, 2.0]), 9)
    torch.testing.assert_close(y[1:], tvf.gaussian_blur(x[1:], [9, 9], [2.0, 2.0]), atol=1e-6, rtol=0)


def test_splat_hits_known_cells_on_each_plane():
    H, W = 8, 16
    # box_warp 2: normalised coords = world coords. Point 0 in texel (col 3 of W, row 5 of H) etc.
    x, y, z = _center(3, W), _center(5, H), _center(1, H)
    pts = torch.tensor([[[x, y, z]]])
    fp = splat_footprint(pts, H, W, box_warp=2.0)
    assert fp.shape == (1, 3, H, W) and fp.sum().item() == 3
    assert fp[0, 0, 5, 3] == 1                                         # XY: col x, row y
    assert fp[0, 1, 1, 3] == 1                                         # XZ: col x, row z
    assert fp[0, 2, int((x + 1) / 2 * H), int((z + 1) / 2 * W)] == 1   # ZX: col z, row x
    # box_warp scales: the same cell for coords halved with box_warp 1
    torch.testing.assert_close(splat_footprint(pts / 2, H, W, box_warp=1.0), fp)
    # out-of-box points clamp to the border (release behaviour); invalid ones do not splat
    far = torch.tensor([[[5.0, -5.0, 0.0], [0.0, 0.0, 0.0]]])
    fp2 = splat_footprint(far, H, W, 2.0, planes=(0,), valid=torch.tensor([[1.0, 0.0]]))
    assert fp2.sum() == 1 and fp2[0, 0, 0, W - 1] == 1
    nan = torch.tensor([[[float("nan"), 0.0, 0.0]]])
    assert splat_footprint(nan, H, W, 2.0).sum() == 0


def test_splat_cells_are_grid_sample_texels():
    """floor((g+1)/2·res) is the texel grid_sample(align_corners=False, nearest) reads at g."""
    torch.manual_seed(0)
    H, W = 12, 20
    g = torch.rand(1, 500, 3) * 1.98 - 0.99
    plane = torch.arange(H * W, dtype=torch.float32).reshape(1, 1, H, W)
    for p, (ac, ar) in enumerate(((0, 1), (0, 2), (2, 0))):
        grid = torch.stack([g[..., ac], g[..., ar]], -1)[:, :, None]  # [1,M,1,2]: (column, row)
        idx = F.grid_sample(plane, grid, mode="nearest", align_corners=False).flatten().long()
        fp = splat_footprint(g, H, W, box_warp=2.0, planes=(p,))[0, 0]
        expect = torch.zeros(H * W)
        expect[idx] = 1
        torch.testing.assert_close(fp.flatten(), expect)


def test_splat_cells_are_the_renderers_texels():
    """The renderer's own sampler (nearest) reads, for every point, the texel the splat marks."""
    renderer = pytest.importorskip("goae.eg3d.renderer")
    torch.manual_seed(1)
    H, W, box_warp = 10, 14, 1.0
    pts = (torch.rand(2, 300, 3) - 0.5) * 0.99 * box_warp
    planes = torch.arange(H * W, dtype=torch.float32).reshape(1, 1, 1, H, W).repeat(2, 3, 1, 1, 1)
    idx = renderer.sample_from_planes(renderer.generate_planes(), planes, pts, box_warp=box_warp, mode="nearest")
    fp = splat_footprint(pts, H, W, box_warp)                       # [2,3,H,W]
    for b in range(2):
        for p in range(3):
            expect = torch.zeros(H * W)
            expect[idx[b, p, :, 0].long()] = 1
            torch.testing.assert_close(fp[b, p].flatten(), expect)


def _block_scene(res=32, lo=10, hi=22, B=2, box_warp=2.0):
    """Visible points on the texel centres of the block [lo,hi)² of plane XY, at z = 0."""
    c = torch.tensor([_center(i, res) for i in range(lo, hi)])
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    pts = torch.stack([xx, yy, torch.zeros_like(xx)], -1).reshape(1, -1, 3).repeat(B, 1, 1)
    return _rays_to(pts * box_warp / 2)


def test_eq8_mix_where_visibility_is_known():
    res, C = 32, 2
    depth, o, d = _block_scene(res)
    torch.manual_seed(0)
    fstar = torch.randn(2, 3, C, res, res, requires_grad=True)
    wplus = torch.randn(2, 3, C, res, res, requires_grad=True)
    mix, m = occlusion_aware_mix(fstar, wplus, depth, o, d, box_warp=2.0, cfg=MixConfig(sigma=1.0))
    assert m.shape == (2, 3, 1, res, res) and m.min() >= 0 and m.max() <= 1 + 1e-6
    # block interior (>= 5 texels from the edge): fully visible -> F*; far away (>= 6 outside) -> w+
    inner = (slice(None), 0, slice(None), slice(15, 17), slice(15, 17))
    torch.testing.assert_close(mix[inner], fstar[inner])
    torch.testing.assert_close(m[:, 0, :, 14:18, 14:18], torch.ones(2, 1, 4, 4))
    outer = (slice(None), 0, slice(None), slice(0, 4), slice(0, 4))
    torch.testing.assert_close(mix[outer], wplus[outer])
    assert m[:, 0, :, :4, :4].abs().max() == 0
    # everywhere: exact Eq. 8 blend
    torch.testing.assert_close(mix, m * fstar + (1 - m) * wplus)
    # XZ plane: points at z = 0 splat a 1-texel line (row 16, cols 10..21). σ = 1: the first blur peaks
    # at the centre tap 1/Σexp(-t²/2) ≈ 0.399 > 0.35 (neighbours ≈ 0.24 drop out), so the second blur
    # of the same 1-wide line gives the centre tap again
    tap0 = 1 / sum(math.exp(-0.5 * t * t) for t in range(-4, 5))
    assert m[0, 1, 0, 16, 15].item() == pytest.approx(tap0, rel=1e-5)
    assert m[0, 1, 0, 15, 15].item() == pytest.approx(tap0 * math.exp(-0.5), rel=1e-5)
    assert m[0, 1, 0, 2, 15].item() == 0
    mix.sum().backward()
    torch.testing.assert_close(fstar.grad, m.expand_as(fstar))
    assert torch.isfinite(wplus.grad).all()


def test_xy_mode_keeps_fstar_on_planes_1_2_and_matches_release_recipe():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    res = 32
    depth, o, d = _block_scene(res, lo=5, hi=12, box_warp=1.0)  # FFHQ box: coords in [-0.5, 0.5]
    fstar, wplus = torch.randn(2, 3, 4, res, res), torch.randn(2, 3, 4, res, res)
    cfg = MixConfig(planes="xy", sigma=1.3)
    mix, m = occlusion_aware_mix(fstar, wplus, depth, o, d, box_warp=1.0, cfg=cfg)
    assert torch.equal(m[:, 1:], torch.ones_like(m[:, 1:]))
    assert torch.equal(mix[:, 1:], fstar[:, 1:])
    # release recipe (box_warp 1): u = floor((x+0.5)·res), v = floor((y+0.5)·res), torchvision blurs
    xyz = o + depth * d
    ref = torch.zeros(2, 1, res, res)
    u = ((xyz[..., 0] + 0.5) * res).floor().long().clamp(0, res - 1)
    v = ((xyz[..., 1] + 0.5) * res).floor().long().clamp(0, res - 1)
    for b in range(2):
        ref[b, 0, v[b], u[b]] = 1
    ref = tvf.gaussian_blur(ref, [9, 9], [1.3, 1.3])
    ref = tvf.gaussian_blur((ref > 0.35).float(), [9, 9], [1.3, 1.3])
    torch.testing.assert_close(m[:, 0], ref, atol=1e-6, rtol=0)


def test_random_blur_uses_explicit_generator():
    res = 24
    depth, o, d = _block_scene(res, lo=6, hi=14)
    cfg = MixConfig(planes="xy", blur="random")
    with pytest.raises(ValueError):
        visibility_masks(depth, o, d, res, res, 2.0, cfg)
    m1 = visibility_masks(depth, o, d, res, res, 2.0, cfg, generator=torch.Generator().manual_seed(3))
    m2 = visibility_masks(depth, o, d, res, res, 2.0, cfg, generator=torch.Generator().manual_seed(3))
    m3 = visibility_masks(depth, o, d, res, res, 2.0, cfg, generator=torch.Generator().manual_seed(4))
    assert torch.equal(m1, m2) and not torch.equal(m1, m3)
    # each sample draws its own sigmas: identical inputs, different masks
    assert not torch.equal(m1[0], m1[1])
    lo = visibility_masks(depth, o, d, res, res, 2.0, MixConfig(planes="xy", sigma=1.0))
    hi = visibility_masks(depth, o, d, res, res, 2.0, MixConfig(planes="xy", sigma=2.0))
    for b in range(2):  # a random-σ mask's total lies between the σ = 1 and σ = 2 extremes... roughly
        assert lo[b, 0].sum() * 0.8 < m1[b, 0].sum() < hi[b, 0].sum() * 1.2


def test_valid_mask_and_no_grad_to_depth():
    res = 16
    depth, o, d = _block_scene(res, lo=4, hi=12, B=1)
    depth = depth.clone().requires_grad_(True)
    valid = torch.zeros(1, depth.shape[1], 1)
    m = visibility_masks(depth, o, d, res, res, 2.0, MixConfig(), valid=valid)
    assert m.abs().max() == 0 and not m.requires_grad


def test_coarse_renders_splat_at_their_own_density():
    """A 32² render on 256² planes (the embedded world): single-texel hits lie ~5 texels apart and blur
    away below the threshold; with render_res the footprint is taken at the render's density."""
    from goae.eg3d import camera as cam
    from goae.eg3d.renderer import RaySampler
    c = cam.canonical_camera(1)
    o, d = RaySampler()(c[:, :16].view(-1, 4, 4), c[:, 16:].view(-1, 3, 3), 32)
    depth = torch.full((1, 32 * 32, 1), 2.7)  # hits the z = 0 plane: x, y within ±0.3
    sparse = visibility_masks(depth, o, d, 256, 256, 1.0, MixConfig(planes="xy"))
    dense = visibility_masks(depth, o, d, 256, 256, 1.0, MixConfig(planes="xy"), render_res=32)
    centre = (0, 0, 0, slice(96, 160), slice(96, 160))
    assert sparse[centre].max() == 0 and dense[centre].mean() > 0.99
    assert dense[0, 0, 0, :16, :16].max() == 0  # still nothing outside the visible footprint
