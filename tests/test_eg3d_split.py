"""GOAE split synthesis, render_planes and generator options of goae.eg3d.generator (tiny random model)."""
import pytest
import torch

from goae.eg3d.generator import TriPlaneGenerator

RENDERING = dict(image_resolution=128, disparity_space_sampling=False, clamp_mode="softplus",
                 superresolution_module="training.superresolution.SuperresolutionHybrid2X",
                 c_gen_conditioning_zero=False, gpc_reg_prob=0.5, c_scale=1.0, superresolution_noise_mode="none",
                 density_reg=0.25, density_reg_p_dist=0.004, reg_type="l1", decoder_lr_mul=1.0, sr_antialias=True,
                 depth_resolution=6, depth_resolution_importance=6, ray_start=2.25, ray_end=3.3, box_warp=1,
                 avg_camera_radius=2.7, avg_camera_pivot=[0, 0, 0.2])
CFG = {"init_kwargs": dict(z_dim=512, w_dim=512, c_dim=25, img_resolution=128, img_channels=3,
                           mapping_kwargs={"num_layers": 2}, channel_base=2048, channel_max=64,
                           fused_modconv_default="inference_only", num_fp16_res=0, sr_num_fp16_res=4,
                           conv_clamp=None, sr_kwargs={"channel_base": 2048, "channel_max": 64,
                                                       "fused_modconv_default": "inference_only"},
                           rendering_kwargs=RENDERING),
       "neural_rendering_resolution": 32}
B, RES = 2, 32


# Many tiny ops: on a loaded 2-core box, 2 OpenMP threads make them ~10x slower, not faster.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    G = TriPlaneGenerator.from_config(CFG).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # official init zeroes biases and noise strengths: perturb so those paths count
        for name, p in G.named_parameters():
            if name.endswith(("bias", "noise_strength")):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    g = torch.Generator().manual_seed(0)
    z = torch.randn(B, 512, generator=g)
    cam = torch.tensor([1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 2.7, 0, 0, 0, 1.0])
    cam2 = cam.clone()
    cam2[3] = 0.3  # shifted camera for the second sample
    K = torch.tensor([4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1])
    c = torch.stack([torch.cat([cam, K]), torch.cat([cam2, K])])
    with torch.no_grad():
        ws = G.mapping(z, c, truncation_psi=0.7)
    u = (torch.rand(B, RES * RES, 6, 1, generator=g), torch.rand(B * RES * RES, 6, generator=g))
    return G, ws, c, u


def _assert_same(a: dict, b: dict, keys=("image", "image_raw", "image_depth", "feature_image", "planes",
                                         "weights_sum")):
    for k in keys:
        assert torch.equal(a[k], b[k]), k


@torch.no_grad()
def test_split_equals_plain_bitwise(model):
    G, ws, c, (su, iu) = model
    rec = {}
    plain = G.synthesis(ws, c, stratified_u=su, importance_u=iu, record=rec)
    skip, feat = G.synthesis_to_F(ws)
    assert skip.shape == (B, 96, 32, 32) and feat.shape == (B, 64, 32, 32)
    assert torch.equal(feat, rec["backbone.b32.x"]) and torch.equal(skip, rec["backbone.b32.img"])
    split = G.synthesis_from_F(feat, skip, ws, c, stratified_u=su, importance_u=iu)
    _assert_same(plain, split)
    assert plain["image"].shape == (B, 3, 128, 128) and plain["planes"].shape == (B, 3, 32, 256, 256)


@torch.no_grad()
def test_split_uses_rows_7_to_13(model):
    G, ws, c, (su, iu) = model
    skip, feat = G.synthesis_to_F(ws)
    ref = G.synthesis_from_F(feat, skip, ws, c, stratified_u=su, importance_u=iu)
    early = ws.clone()
    early[:, :7] += 1.0  # rows 0..6 feed only b4..b32 conv layers, which from_F does not run
    _assert_same(ref, G.synthesis_from_F(feat, skip, early, c, stratified_u=su, importance_u=iu))
    late = ws.clone()
    late[:, 7] += 1.0  # row 7: b32's ToRGB (already in skip) and b64's conv0 (from_F's first layer)
    assert not torch.equal(ref["planes"], G.synthesis_from_F(feat, skip, late, c, stratified_u=su,
                                                             importance_u=iu)["planes"])


@torch.no_grad()
def test_split_equals_plain_same_generator_random_noise(model):
    G, ws, c, _ = model
    kw = dict(noise_mode="random")
    plain = G.synthesis(ws, c, generator=torch.Generator().manual_seed(7), **kw)
    g = torch.Generator().manual_seed(7)
    skip, feat = G.synthesis_to_F(ws, generator=g, **kw)
    _assert_same(plain, G.synthesis_from_F(feat, skip, ws, c, generator=g, **kw))
    other = G.synthesis(ws, c, generator=torch.Generator().manual_seed(8), **kw)
    assert not torch.equal(plain["planes"], other["planes"])  # the noise really comes from the generator


@torch.no_grad()
def test_global_rng_matches_seeded_generator(model):
    G, ws, c, _ = model
    torch.manual_seed(11)
    a = G.synthesis(ws, c)
    _assert_same(a, G.synthesis(ws, c, generator=torch.Generator().manual_seed(11)))


@torch.no_grad()
def test_render_planes_equals_synthesis(model):
    G, ws, c, (su, iu) = model
    out = G.synthesis(ws, c, stratified_u=su, importance_u=iu)
    again = G.render_planes(out["planes"], c, ws, stratified_u=su, importance_u=iu)
    _assert_same(out, again)
    flat = G.render_planes(out["planes"].reshape(B, 96, 256, 256), c, ws, stratified_u=su, importance_u=iu)
    _assert_same(out, flat)
    other = G.render_planes(out["planes"] * 0.5, c, ws, stratified_u=su, importance_u=iu)
    assert not torch.equal(out["image"], other["image"])


@torch.no_grad()
def test_sr_uses_last_w_only(model):
    G, ws, c, (su, iu) = model
    out = G.synthesis(ws, c, stratified_u=su, importance_u=iu)
    ws2 = ws.clone()
    ws2[:, :13] = 0.0
    res = G.render_planes(out["planes"], c, ws2, stratified_u=su, importance_u=iu)
    _assert_same(out, res, keys=("image",))
    ws2[:, 13] += 0.5
    assert not torch.equal(out["image"], G.render_planes(out["planes"], c, ws2, stratified_u=su,
                                                         importance_u=iu)["image"])


@torch.no_grad()
def test_winograd_and_training_path_agree_with_direct_conv(model):
    G, ws, c, (su, iu) = model
    ref = G.synthesis(ws, c, stratified_u=su, importance_u=iu)
    try:
        G.set_cpu_winograd(False)
        direct = G.synthesis(ws, c, stratified_u=su, importance_u=iu)
        G.train()  # fused_modconv 'inference_only' -> the official non-fused (training) formulation
        nonfused = G.synthesis(ws, c, stratified_u=su, importance_u=iu)
    finally:
        G.eval().set_cpu_winograd(True)
    for other in (direct, nonfused):
        for k in ("planes", "image"):
            assert (ref[k] - other[k]).abs().max() < 1e-4, k


def test_backward_through_split(model):
    G, ws, c, (su, iu) = model
    ws = ws.clone().requires_grad_(True)
    skip, feat = G.synthesis_to_F(ws)
    feat = feat.detach().requires_grad_(True)
    out = G.synthesis_from_F(feat, skip, ws, c, stratified_u=su, importance_u=iu)
    out["image"].square().mean().backward()
    assert feat.grad is not None and feat.grad.abs().sum() > 0
    assert ws.grad[:, 7:].abs().sum() > 0 and torch.isfinite(ws.grad).all()


def test_state_dict_roundtrip_and_label_std(model):
    G = model[0]
    sd = dict(G.state_dict())
    sd["dataset_label_std"] = torch.ones(25)
    H = TriPlaneGenerator.from_config(CFG, init_seed=None)
    H.load_state_dict(sd, strict=True)  # the extra official buffer is dropped
    assert not hasattr(H, "dataset_label_std")
    R = TriPlaneGenerator.from_config(CFG, init_seed=None, register_label_std=True)
    R.load_state_dict(sd, strict=True)
    assert torch.equal(R.dataset_label_std, torch.ones(25))
    for k, v in G.state_dict().items():
        assert torch.equal(H.state_dict()[k], v), k


@torch.no_grad()
def test_superresolution_can_be_skipped(model):
    G, ws, c, (su, iu) = model
    full = G.synthesis(ws, c, stratified_u=su, importance_u=iu)
    raw = G.synthesis(ws, c, stratified_u=su, importance_u=iu, superresolution=False)
    assert raw["image"] is None
    _assert_same(full, raw, keys=("image_depth", "feature_image", "planes", "weights_sum"))
    # 2X at its native 64^2 input would alias image_raw (see superres.py); at 32^2 it is the raw rgb
    assert torch.equal(raw["image_raw"], full["image_raw"])


@torch.no_grad()
def test_2x_native_input_image_raw_quirk(model):
    G, ws, c, _ = model
    rec = {}
    out = G.synthesis(ws, c, neural_rendering_resolution=64, generator=torch.Generator().manual_seed(1), record=rec)
    # official: SynthesisBlockNoUp adds its ToRGB into the feature_image[:, :3] view in place
    assert torch.equal(out["image_raw"], rec["sr.block0_img"])
    assert not torch.equal(out["image_raw"], out["feature_image"][:, :3])
    assert G.neural_rendering_resolution == 32  # not overwritten (deliberate deviation)
