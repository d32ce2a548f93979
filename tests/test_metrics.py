"""Known answers for the Table 1 metrics: MSE, LPIPS, FID, ID, Geo. Err., timing."""
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from goae.metrics.fid import (fid_from_features, frechet_distance, inception_features, load_inception,
                              quantize_uint8, tf_bilinear_resize)
from goae.metrics.geometry import geometry_error, load_depth
from goae.metrics.identity import id_similarity
from goae.metrics.image import build_lpips, lpips_distance, mse
from goae.metrics.timing import time_per_image
from goae.nets.arcface import random_arcface


def _imgs(n, size, seed):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- MSE / LPIPS ---------------------------------------------------------------------------------

def test_mse_known_answers():
    x = _imgs(3, 16, 0) * 0.5
    assert torch.equal(mse(x, x), torch.zeros(3))
    torch.testing.assert_close(mse(x, x + 0.3), torch.full((3,), 0.09), atol=1e-6, rtol=0)
    y = x.clone()
    y[1, 0, 0, 0] += 1.0  # one value of 3*16*16: per-image mean, other images untouched
    torch.testing.assert_close(mse(x, y), torch.tensor([0.0, 1 / 768, 0.0]))
    assert mse(x, -x, size=8).shape == (3,)


def test_lpips_random_trunk_and_alexnet_file(tmp_path):
    net = build_lpips(seed=0)
    assert "alex.pth sha256:" in net.provenance and "trunk=random(seed=0)" in net.provenance
    import lpips, pathlib
    heads_file = pathlib.Path(lpips.__file__).parent / "weights/v0.1/alex.pth"
    heads = torch.load(heads_file, map_location="cpu", weights_only=True)
    torch.testing.assert_close(net.inner.lins[4].model[1].weight, heads["lin4.model.1.weight"], atol=0, rtol=0)
    x, y = _imgs(3, 64, 1), _imgs(3, 64, 2)
    assert lpips_distance(net, x, x, "cpu", batch_size=2).abs().max() < 1e-7
    d = lpips_distance(net, x, y, "cpu", batch_size=2)
    assert d.shape == (3,) and (d > 0).all()
    # a torchvision-format AlexNet file is loaded strictly into the trunk and changes the distance
    import torchvision

    with torch.device("meta"):  # torchvision's key names and shapes, without a 61M-parameter init
        names = torchvision.models.alexnet(weights=None).state_dict()
    g = torch.Generator().manual_seed(5)
    tv = {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in names.items() if k.startswith("features.")}
    tv["classifier.6.bias"] = torch.zeros(1000)  # the file's classifier is ignored
    torch.save(tv, tmp_path / "alexnet-owt-7be5be79.pth")
    net2 = build_lpips(alexnet_path=tmp_path / "alexnet-owt-7be5be79.pth", seed=0)
    assert "trunk=alexnet-owt-7be5be79.pth sha256:" in net2.provenance
    torch.testing.assert_close(getattr(net2.inner.net.slice5, "10").weight, tv["features.10.weight"], atol=0, rtol=0)
    assert not torch.allclose(lpips_distance(net2, x, y, "cpu"), d)
    torch.save({"features.0.weight": tv["features.0.weight"]}, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="not a torchvision AlexNet"):
        build_lpips(alexnet_path=tmp_path / "bad.pth")


# ---- FID -----------------------------------------------------------------------------------------

def test_fid_gaussians_closed_form():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(4000, 16)) * rng.uniform(0.5, 2, size=16)
    scale = np.trace(np.cov(f, rowvar=False))
    assert abs(fid_from_features(f, f)) < 1e-6 * scale
    delta = rng.normal(size=16)
    assert fid_from_features(f, f + delta) == pytest.approx(delta @ delta, rel=1e-6)
    # commuting covariances Q diag(s) Q^T: FD = |dmu|^2 + sum(s1 + s2 - 2 sqrt(s1 s2))
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    s1, s2 = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(closed, rel=1e-9)
    assert frechet_distance(mu1, q @ np.diag(s1) @ q.T, mu2, q @ np.diag(s2) @ q.T) == pytest.approx(closed, rel=1e-7)
    # non-commuting pair: symmetric and positive
    a, b = rng.normal(size=(16, 16)), rng.normal(size=(16, 16))
    fab, fba = frechet_distance(mu1, a @ a.T, mu2, b @ b.T), frechet_distance(mu2, b @ b.T, mu1, a @ a.T)
    assert fab > 0 and fab == pytest.approx(fba, rel=1e-6)


def test_fid_fewer_samples_than_dims_still_finite():
    rng = np.random.default_rng(1)
    f1, f2 = rng.normal(size=(10, 64)), rng.normal(size=(12, 64)) + 0.5
    v = fid_from_features(f1, f2)
    assert np.isfinite(v) and v > 64 * 0.25  # at least the mean term's expectation scale
    assert abs(fid_from_features(f1, f1)) < 1e-3


def test_tf_bilinear_matches_nvidia_affine_grid_formulation():
    x = _imgs(2, 37, 3) * 100 + 128
    # NVIDIA's inception TorchScript: affine_grid shifted by 1/in - 1/out, grid_sample bilinear, border
    theta = torch.eye(2, 3)
    theta[0, 2] += 1 / 37 - 1 / 50
    theta[1, 2] += 1 / 37 - 1 / 50
    grid = F.affine_grid(theta[None].repeat(2, 1, 1), [2, 3, 50, 50], align_corners=False)
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(tf_bilinear_resize(x, 50), ref, atol=1e-3, rtol=0)
    assert torch.equal(tf_bilinear_resize(x, 37), x)
    torch.testing.assert_close(quantize_uint8(torch.tensor([-1.0, -0.999, 0.0, 1.0, 1.5])),
                               torch.tensor([0.0, 0.0, 128.0, 255.0, 255.0]))


def test_packaged_inception_offline():
    net = load_inception()
    assert net.kind == "trunk" and net.provenance.startswith("default_1.pt sha256:7ff4a85c")
    x = _imgs(2, 64, 4)
    f = inception_features(net, x, "cpu")
    assert f.shape == (2, 2048) and f.dtype == np.float64 and np.isfinite(f).all() and (f >= 0).all()
    assert not np.allclose(f[0], f[1])
    f8 = inception_features(net, quantize_uint8(x).to(torch.uint8), "cpu")  # uint8 input path
    np.testing.assert_allclose(f8, f, rtol=1e-6, atol=1e-6)


def test_inception_rejects_unsupported_files(tmp_path):
    (tmp_path / "inception-2015-12-05.pkl").write_bytes(b"x")
    with pytest.raises(ValueError, match="TorchScript"):
        load_inception(tmp_path / "inception-2015-12-05.pkl")
    with pytest.raises(FileNotFoundError):
        load_inception(tmp_path / "inception-2015-12-05.pt")


# ---- ID ------------------------------------------------------------------------------------------

def test_id_similarity_random_irse50():
    net = random_arcface(seed=0)
    x, y = _imgs(2, 256, 5), _imgs(2, 256, 6)
    same = id_similarity(net, x, x, "cpu")
    torch.testing.assert_close(same, torch.ones(2), atol=1e-5, rtol=0)
    other = id_similarity(net, x, y, "cpu", batch_size=1)
    assert other.shape == (2,) and (other >= -1).all() and (other < 1 - 1e-3).all()


# ---- Geometry ------------------------------------------------------------------------------------

def _face_depth(n=2, size=32, bump=1.0):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    r2 = xx ** 2 + yy ** 2
    d = 2.5 - bump * torch.sqrt((1 - r2).clamp_min(0)) + 0.1 * xx  # sphere-ish face, tilted
    mask = r2 < 0.8
    return torch.where(mask, d, 0.0).expand(n, -1, -1).clone(), mask


def test_geometry_error_invariances():
    d, mask = _face_depth()
    assert torch.equal(geometry_error(d, d), torch.zeros(2))
    torch.testing.assert_close(geometry_error(3.7 * d + 11.0, d, mask[None]), torch.zeros(2), atol=1e-5, rtol=0)
    flat, _ = _face_depth(bump=0.2)
    other = geometry_error(torch.where(mask, flat, 0.0), d, mask[None])
    assert (other > 1e-3).all()
    torch.testing.assert_close(geometry_error(torch.where(mask, flat * 0.01 - 5, 0.0), d, mask[None]), other,
                               atol=1e-5, rtol=1e-4)
    assert (geometry_error(-d, d, mask[None]) > 3.9).all()  # inverted relief: 2 * (1 - (-1)) = 4
    # rendered depth at 2x resolution (each value repeated 2x2) compares like the same-size map
    up = d.repeat_interleave(2, 1).repeat_interleave(2, 2)
    torch.testing.assert_close(geometry_error(up, d), torch.zeros(2), atol=1e-5, rtol=0)
    nan_d = d.clone()
    nan_d[:, 10, 10] = float("nan")
    assert torch.isfinite(geometry_error(nan_d, d)).all()


def test_load_depth_formats(tmp_path):
    import cv2
    from safetensors.numpy import save_file

    d = np.arange(12, dtype=np.float32).reshape(3, 4) * 2.5
    np.save(tmp_path / "d.npy", d[None])
    torch.testing.assert_close(load_depth(tmp_path / "d.npy"), torch.from_numpy(d))
    cv2.imwrite(str(tmp_path / "d.png"), (d * 1000).astype(np.uint16))
    torch.testing.assert_close(load_depth(tmp_path / "d.png", scale=1e-3), torch.from_numpy(d))
    save_file({"depth": d, "mask": d > 5}, str(tmp_path / "d.safetensors"))
    torch.testing.assert_close(load_depth(tmp_path / "d.safetensors"), torch.from_numpy(d))
    cv2.imwrite(str(tmp_path / "rgb.png"), np.zeros((3, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="16-bit"):
        load_depth(tmp_path / "rgb.png")


# ---- Timing --------------------------------------------------------------------------------------

def test_time_per_image():
    calls = []
    t = time_per_image(lambda b: (calls.append(1), time.sleep(0.01)), torch.zeros(4, 3), "cpu", warmup=2, repeats=3)
    assert len(calls) == 5 and 0.0025 <= t < 0.05
    assert time_per_image(lambda b: b * 2, torch.zeros(8, 3, 16, 16), "cpu") > 0


def test_lpips_vgg_trunk_maps_torchvision_features_strictly(tmp_path):
    """PTI's LPIPS-VGG: torchvision vgg16 `features.*` land in lpips' five slices (strict), provenance says so."""
    import torchvision
    from goae.metrics.image import build_lpips
    feats = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    torch.manual_seed(1)
    for m in feats.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.05)
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, tmp_path / "vgg16-397923af.pth")
    net = build_lpips(net="vgg", trunk_path=tmp_path / "vgg16-397923af.pth")
    assert "net=vgg" in net.provenance and "trunk=vgg16-397923af.pth" in net.provenance
    assert torch.equal(getattr(net.inner.net.slice5, "28").weight, feats[28].weight)     # last conv -> slice 5
    assert torch.equal(getattr(net.inner.net.slice1, "0").weight, feats[0].weight)
    assert "trunk=random" in build_lpips(net="vgg").provenance
    torch.save({"features.0.weight": feats[0].weight}, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="not a torchvision vgg"):
        build_lpips(net="vgg", trunk_path=tmp_path / "bad.pth")


def test_pti_recipe_optimises_one_w_for_every_row():
    from goae.data.world import build_embedded_generator
    from goae.config import GeneratorConfig
    from goae.metrics.baselines import OptimConfig, OptimInverter
    G, _ = build_embedded_generator(GeneratorConfig(channel_base=256, channel_max=16, neural_rendering_resolution=8,
                                                    depth_resolution=4, depth_resolution_importance=4,
                                                    w_avg_samples=16))
    cfg = OptimConfig.recipe("pti", 2, 0, 1.0, 0.8)
    assert (cfg.space, cfg.lpips_net, cfg.row_name) == ("w", "vgg", "pti")
    assert OptimConfig.recipe("pti_like", 2, 0, 1.0, 0.8).row_name == "pti_like"
    lp = lambda a, b: (a - b).abs().mean((1, 2, 3))   # noqa: E731  (cheap differentiable stand-in)
    inv = OptimInverter(G, cfg, lp)
    x = torch.rand(1, 3, G.img_resolution, G.img_resolution) * 2 - 1
    from goae.eg3d.camera import canonical_camera
    c = canonical_camera(1)
    h = inv.invert(x, c, torch.Generator().manual_seed(0))
    w = h.w_plus[0]
    assert inv.name == "pti" and w.shape[1] == G.backbone.mapping.num_ws
    assert torch.equal(w, w[:, :1].expand_as(w))                                # one pivot w, repeated
    assert not torch.equal(w[0, 0], G.backbone.mapping.w_avg)                   # and it was optimised
