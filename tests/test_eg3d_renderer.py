"""goae.eg3d.renderer against the official EG3D goldens (../shared/fixtures/eg3d*), and the fast
path against the reference path."""
import functools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from goae.eg3d import camera as C
from goae.eg3d import renderer as R

# README "Tolerances to use"
TOL_DEPTH = TOL_FEAT = TOL_RAYS = 1e-5
TOL_SIGMA = 1e-4


@functools.lru_cache(maxsize=2)
def _load(folder: str):
    io = load_file(f"{folder}/eg3d_tiny_io.safetensors")
    state = load_file(f"{folder}/eg3d_tiny_state.safetensors")
    cfg = json.loads(open(f"{folder}/eg3d_tiny_config.json").read())
    return io, state, cfg


@pytest.fixture
def fx(eg3d_fixture):
    return _load(str(eg3d_fixture))


@pytest.fixture
def fx8(eg3d_8xdc_fixture):
    return _load(str(eg3d_8xdc_fixture))


def _decoder(state) -> R.OSGDecoder:
    dec = R.OSGDecoder(32, 64, 32)
    dec.load_state_dict({k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}, strict=True)
    return dec.requires_grad_(False)


def _close(a, b, atol):
    err = (a - b).abs().max().item()
    assert err <= atol, f"max abs error {err:.3g} > {atol}"


def _smooth_planes(io, size=64):
    """Realistic tri-planes: the stored official planes at stride 4 (64x64), resized to `size`."""
    p = io["psi1.planes.stride4"]
    if size == 64:
        return p.clone()
    B = p.shape[0]
    return F.interpolate(p.reshape(B, 96, 64, 64), size=size, mode="bilinear", align_corners=False).reshape(B, 3, 32, size, size)


# -- rays, projection, decoder ------------------------------------------------------------------


def test_decoder_keys_match_manifest(eg3d_fixture):
    man = json.loads((eg3d_fixture / "eg3d_ffhq512_manifest.json").read_text())
    want = {p["name"][len("decoder."):]: p["shape"] for p in man["state_dict"] if p["name"].startswith("decoder.")}
    got = {k: list(v.shape) for k, v in R.OSGDecoder().state_dict().items()}
    assert got == want
    gains = {k: man["module_attributes"][f"decoder.net.{k}"]["weight_gain"] for k in (0, 2)}
    assert gains == {k: R.OSGDecoder().net[k].weight_gain for k in (0, 2)}


def test_rays(fx, fx8):
    io, _, cfg = fx
    o, d = R.RaySampler()(*C.split_label(io["input.c"]), cfg["neural_rendering_resolution"])
    for run in ("psi1", "psi0p7"):
        _close(o, io[f"{run}.rays.origins"], TOL_RAYS)
        _close(d, io[f"{run}.rays.directions"], TOL_RAYS)
    io8, _, cfg8 = fx8
    o, d = R.RaySampler()(*C.split_label(io8["input.c"]), cfg8["neural_rendering_resolution"])
    _close(o[:, 8192:9216], io8["psi1.rays.origins.rows64_72"], TOL_RAYS)
    _close(d[:, 8192:9216], io8["psi1.rays.directions.rows64_72"], TOL_RAYS)


def test_projection_and_plane_quirk(fx):
    io, _, cfg = fx
    axes = R.generate_planes()
    pts = io["probe.points"]
    proj = R.project_onto_planes(axes, (2 / cfg["rendering_kwargs"]["box_warp"]) * pts)
    assert proj.shape == (2 * 3, 256, 2)
    _close(proj.reshape(2, 3, 256, 2), io["probe.projected_coords"], 1e-6)
    # XY, XZ, ZX (not YZ): plane 2 is indexed by (z, x)
    _close(proj.reshape(2, 3, 256, 2)[:, 2], 2 * pts[..., [2, 0]], 0)


def test_plane_sampling(fx):
    io, _, cfg = fx
    pts, box = io["probe.points"][:1], cfg["rendering_kwargs"]["box_warp"]
    planes = torch.zeros(1, 3, 1, 256, 256)
    planes[0, 0, 0] = io["psi1.planes.batch0_plane0_ch0_full"]  # the one full-resolution channel stored
    feats = R.sample_from_planes(R.generate_planes(), planes, pts, box_warp=box)
    assert feats.shape == (1, 3, 256, 1)
    _close(feats[0, 0, :, 0], io["probe.plane_features"][0, 0, :, 0], TOL_SIGMA)
    # the fast fused gather: mean over planes, including points outside the box and on its border
    planes = _smooth_planes(io, 256)[:1]
    g = torch.Generator().manual_seed(0)
    pts = torch.cat([pts[0], (torch.rand(2000, 3, generator=g) - 0.5) * 1.3,
                     torch.tensor([[0.5, 0.5, 0.5], [-0.5, -0.5, -0.5], [0.50195, 0.0, 0.1], [-0.50195, 0.2, 0.0]])])
    ref = R.sample_from_planes(R.generate_planes(), planes, pts[None], box_warp=box).mean(1)[0]
    axes = R._plane_axis_pairs(R.generate_planes())
    assert axes.tolist() == [[0, 0, 2], [1, 2, 0]]
    got = R._sample_mean_fast(R._plane_table(planes[0]), (256, 256), axes, (2 / box) * pts)
    _close(got, ref, 2e-6)


def test_decoder_on_probes(fx):
    io, state, _ = fx
    out = _decoder(state)(io["probe.plane_features"], io["probe.directions"])
    _close(out["rgb"], io["probe.decoder_rgb"], TOL_SIGMA)
    _close(out["sigma"], io["probe.decoder_sigma"], TOL_SIGMA)


# -- sampling and marching from the stored official intermediates --------------------------------


def _check_stored_render(io, opts, run, sl, B, Mb):
    """Stratified depths, importance depths and the marcher from stored u, sigma and depths."""
    D, Ni = opts["depth_resolution"], opts["depth_resolution_importance"]
    dc = R.sample_stratified(opts["ray_start"], opts["ray_end"], D, io[f"{run}.rng.stratified_u{sl}"])
    _close(dc, io[f"{run}.render.depths_coarse{sl}"], TOL_DEPTH)
    sc = io[f"{run}.render.sigma_coarse{sl}"].reshape(B, Mb, D, 1)
    w = R._marcher_weights(sc, dc, opts["clamp_mode"])
    zf = R.sample_importance(dc.reshape(-1, D), w.reshape(-1, D - 1), io[f"{run}.rng.importance_u{sl}"])
    _close(zf.reshape(B, Mb, Ni, 1), io[f"{run}.render.depths_fine{sl}"], TOL_DEPTH)
    z = torch.cat([dc, io[f"{run}.render.depths_fine{sl}"]], -2)
    s = torch.cat([sc, io[f"{run}.render.sigma_fine{sl}"].reshape(B, Mb, Ni, 1)], -2)
    order = torch.sort(z, -2).indices
    colors = torch.zeros(B, Mb, D + Ni, 2)
    _, depth, weights = R.MipRayMarcher2()(colors, s.gather(-2, order), z.gather(-2, order), opts)
    return depth, weights.sum(2)


def test_importance_and_marcher_from_stored(fx, fx8):
    io, _, cfg = fx
    opts = cfg["rendering_kwargs"]
    for run in ("psi1", "psi0p7"):
        depth, wsum = _check_stored_render(io, opts, run, "", 2, 1024)
        _close(wsum, io[f"{run}.render.weights_sum"], TOL_DEPTH)
        _close(depth.reshape(2, 1, 32, 32), io[f"{run}.out.image_depth"], TOL_DEPTH)
    io8, _, cfg8 = fx8  # real 128x128 rays, band of rows 64..71
    depth, wsum = _check_stored_render(io8, cfg8["rendering_kwargs"], "psi1", ".rows64_72", 1, 1024)
    _close(wsum, io8["psi1.render.weights_sum"][:, 8192:9216], TOL_DEPTH)
    _close(depth.reshape(1, 1, 8, 128), io8["psi1.out.image_depth"][:, :, 64:72], TOL_DEPTH)


def test_marcher_rgb_and_white_back():
    g = torch.Generator().manual_seed(3)
    z = torch.sort(2 + torch.rand(2, 5, 7, 1, generator=g), -2).values
    s = torch.randn(2, 5, 7, 1, generator=g) * 3
    c = torch.rand(2, 5, 7, 4, generator=g)
    rgb, _, w = R.MipRayMarcher2()(c, s, z, {"clamp_mode": "softplus"})
    want = torch.zeros(2, 5, 4)  # plain loop over intervals
    trans = torch.ones(2, 5, 1)
    for i in range(6):
        sig = F.softplus((s[:, :, i] + s[:, :, i + 1]) / 2 - 1)
        alpha = 1 - torch.exp(-sig * (z[:, :, i + 1] - z[:, :, i]))
        want += alpha * trans * (c[:, :, i] + c[:, :, i + 1]) / 2
        trans = trans * (1 - alpha + 1e-10)
    _close(rgb, want * 2 - 1, 1e-6)
    rgb_w, _, _ = R.MipRayMarcher2()(c, s, z, {"clamp_mode": "softplus", "white_back": True})
    _close(rgb_w, (want + 1 - w.sum(2)) * 2 - 1, 1e-6)


# -- the renderer end to end ---------------------------------------------------------------------


def _render(ren, planes, dec, o, d, opts, **kw):
    rec = {}
    with torch.no_grad():
        out = ren(planes, dec, o, d, opts, record=rec, **kw)
    return out, rec


def test_global_rng_reproduces_official_draws(fx):
    io, state, cfg = fx
    o, d = R.RaySampler()(*C.split_label(io["input.c"]), cfg["neural_rendering_resolution"])
    planes = torch.randn(2, 3, 32, 16, 16, generator=torch.Generator().manual_seed(0))
    dec, ren = _decoder(state), R.ImportanceRenderer()  # built before seeding: module init draws
    for fast, run in ((False, "psi1"), (True, "psi0p7")):
        torch.manual_seed(int(io[f"{run}.rng_seed"]))
        _, rec = _render(ren, planes, dec, o, d, dict(cfg["rendering_kwargs"], fast=fast))
        assert torch.equal(rec["stratified_u"], io[f"{run}.rng.stratified_u"])
        assert torch.equal(rec["importance_u"], io[f"{run}.rng.importance_u"])
        _close(rec["depths_coarse"], io[f"{run}.render.depths_coarse"], TOL_DEPTH)


def test_generator_and_injected_randomness(fx):
    io, state, cfg = fx
    o, d = R.RaySampler()(*C.split_label(io["input.c"]), 16)
    planes, dec, ren, opts = _smooth_planes(io), _decoder(state), R.ImportanceRenderer(), cfg["rendering_kwargs"]
    state0 = torch.random.get_rng_state()
    (a, _, _), rec = _render(ren, planes, dec, o, d, opts, generator=torch.Generator().manual_seed(5))
    (b, _, _), _ = _render(ren, planes, dec, o, d, opts, generator=torch.Generator().manual_seed(5))
    (c, _, _), _ = _render(ren, planes, dec, o, d, opts, generator=torch.Generator().manual_seed(6))
    assert torch.equal(state0, torch.random.get_rng_state())  # a generator leaves the global RNG alone
    assert torch.equal(a, b) and not torch.equal(a, c)
    (e, _, _), _ = _render(ren, planes, dec, o, d, opts, stratified_u=rec["stratified_u"],
                           importance_u=rec["importance_u"])
    assert torch.equal(a, e)


@pytest.mark.parametrize("variant", ["ffhq", "white_back_chunk", "coarse_only", "auto_range", "disparity"])
def test_fast_matches_reference(fx, variant):
    io, state, cfg = fx
    opts = dict(cfg["rendering_kwargs"])
    res = 24
    if variant == "white_back_chunk":
        opts.update(white_back=True, ray_chunk=100)  # chunk not dividing the ray count
    elif variant == "coarse_only":
        opts.update(depth_resolution=20, depth_resolution_importance=0)
    elif variant == "auto_range":
        opts.update(ray_start="auto", ray_end="auto")
    elif variant == "disparity":
        opts.update(disparity_space_sampling=True)
    c = torch.cat([C.yaw_pitch_camera(0.0, 0.0), C.yaw_pitch_camera(0.5, -0.25, focal=2.0)])
    o, d = R.RaySampler()(*C.split_label(c), res)
    planes, dec, ren = _smooth_planes(io), _decoder(state), R.ImportanceRenderer()
    assert res * res % 100 != 0
    g = torch.Generator().manual_seed(1)
    (f0, d0, w0), r0 = _render(ren, planes, dec, o, d, dict(opts, fast=False), generator=g)
    (f1, d1, w1), r1 = _render(ren, planes, dec, o, d, dict(opts, fast=True),
                               stratified_u=r0["stratified_u"], importance_u=r0.get("importance_u"))
    assert f1.shape == (2, res * res, 32) and d1.shape == w1.shape == (2, res * res, 1)
    assert w0.mean() > 0.05  # a non-trivial scene
    _close(f1, f0, TOL_FEAT)
    _close(d1, d0, TOL_DEPTH)
    _close(w1, w0, TOL_DEPTH)
    assert r0.keys() == r1.keys()
    for k in r0:
        assert r0[k].shape == r1[k].shape, k
        _close(r1[k], r0[k], TOL_SIGMA if k.startswith(("sigma", "rgb")) else TOL_DEPTH)


def test_fast_gradients_match_reference(fx):
    io, state, cfg = fx
    opts = dict(cfg["rendering_kwargs"], depth_resolution=6, depth_resolution_importance=6)
    o, d = R.RaySampler()(*C.split_label(io["input.c"]), 8)
    planes = _smooth_planes(io, 32)
    dec = _decoder(state).requires_grad_(True)
    g = torch.Generator().manual_seed(2)
    su, iu = torch.rand(2, 64, 6, 1, generator=g), torch.rand(128, 6, generator=g)
    grads = []
    for fast in (False, True):
        p = planes.clone().requires_grad_(True)
        dec.zero_grad()
        f, depth, w = R.ImportanceRenderer()(p, dec, o, d, dict(opts, fast=fast), stratified_u=su, importance_u=iu)
        (f.square().sum() + depth.sum() + w.sum()).backward()
        grads.append((p.grad, dec.net[0].weight.grad.clone()))
    for a, b in zip(*grads):
        assert a.abs().max() > 0
        _close(b, a, 1e-4 * a.abs().max().item())


class _ThresholdDecoder(torch.nn.Module):
    """sigma = 50 where the mean feature is positive, -1000 elsewhere (weights exactly 0)."""

    def forward(self, sampled_features, ray_directions):
        f = sampled_features.mean(1)
        sigma = torch.where(f[..., :1] > 0, torch.full_like(f[..., :1], 50.0), torch.full_like(f[..., :1], -1000.0))
        return {"rgb": torch.zeros_like(f), "sigma": sigma}


def test_depth_clamp_is_batch_coupled():
    """An empty scene gets depth 0/0 -> inf -> clamped to the max depth of the *whole batch*."""
    opts = dict(depth_resolution=8, depth_resolution_importance=8, ray_start=2.25, ray_end=3.3, box_warp=1,
                clamp_mode="softplus", disparity_space_sampling=False)
    planes = torch.zeros(2, 3, 4, 8, 8)
    planes[1] = 1.0  # element 1 has a solid box, element 0 is empty
    c = C.canonical_camera(2)
    o, d = R.RaySampler()(*C.split_label(c), 4)
    su = torch.rand(2, 16, 8, 1, generator=torch.Generator().manual_seed(0))
    su[0] = 0.0  # element 0's depths stay below element 1's maximum
    for fast in (False, True):
        rec = {}
        ren = R.ImportanceRenderer()
        _, depth, w = ren(planes, _ThresholdDecoder(), o, d, dict(opts, fast=fast), stratified_u=su, record=rec)
        assert (w[0] == 0).all() and (w[1] > 0.5).all()
        all_depths = torch.cat([rec["depths_coarse"], rec["depths_fine"]], 2)
        assert all_depths[0].max() < all_depths[1].max()
        assert torch.equal(depth[0], torch.full_like(depth[0], all_depths.max().item()))  # batch max
        _, depth0, _ = ren(planes[:1], _ThresholdDecoder(), o[:1], d[:1], dict(opts, fast=fast),
                           stratified_u=su[:1], importance_u=rec["importance_u"][:16])
        assert torch.equal(depth0[0], torch.full_like(depth0[0], all_depths[0].max().item()))  # alone: its own max
        assert not torch.equal(depth0[0], depth[0])


def test_ray_limits_box():
    o = torch.tensor([[[0.0, 0.0, 2.7], [0.0, 3.0, 2.7]]])
    dvec = torch.tensor([[[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]]])
    t0, t1 = R.ray_limits_box(o, dvec, 1.0)
    _close(t0[0, 0], torch.tensor([2.2]), 1e-6)
    _close(t1[0, 0], torch.tensor([3.2]), 1e-6)
    assert t0[0, 1].item() == -1 and t1[0, 1].item() == -2  # miss
    assert math.isclose(R.sample_stratified(2.0, 3.0, 3, torch.zeros(1, 1, 3, 1)).flatten()[1].item(), 2.5)
