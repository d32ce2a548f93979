"""Evaluation protocols: one row function for every method, oracle vs w_avg, determinism, data loading."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from goae.config import DataConfig, GeneratorConfig
from goae.data.dataset import read_dataset_json
from goae.data.world import build_embedded_generator, render_world
from goae.metrics import protocols as P
from goae.metrics.baselines import OptimConfig, OptimInverter
from goae.metrics.image import build_lpips
from goae.model.afa import AFA, AFAConfig
from goae.model.encoder import Encoder, EncoderConfig
from goae.model.goae import GOAE
from goae.train.common import feature_channels

TINY_G = GeneratorConfig(channel_base=512, channel_max=16, neural_rendering_resolution=16, depth_resolution=6,
                         depth_resolution_importance=6, w_avg_samples=64)
YAWS = [-60.0, 0.0, 60.0]
FAST = dict(timing_warmup=0, timing_repeats=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.manual_seed(0)  # only the tiny encoder/AFA init below; the world itself is seeded explicitly
    G, _ = build_embedded_generator(TINY_G)
    out = tmp_path_factory.mktemp("world")
    render_world(G, DataConfig(n_train=1, n_celeba=3, n_mead_ids=2, mead_yaws_deg=YAWS, photos=False), out)
    return G, out


class TinyID(torch.nn.Module):
    """Stand-in for IR-SE50 with its call contract ([N,3,112,112] -> unit [N,512]); the real net costs
    seconds per image on a shared CPU and is tested in test_metrics.py."""
    provenance = "test stand-in (random projection)"

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.randn(3 * 14 * 14, 512, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return torch.nn.functional.normalize(torch.nn.functional.avg_pool2d(x, 8).flatten(1) @ self.w, dim=1)


@pytest.fixture(scope="module")
def nets():
    return P.MetricNets(build_lpips(seed=0), TinyID(), None)


class OracleInverter:
    """Knows the world's ground-truth w+ (latents.safetensors): finds the input among the split's images."""

    def __init__(self, G, data, folder, name="oracle"):
        self.G, self.data, self.name, self.weights = G, data, name, "ground truth"
        ws = load_file(str(folder / "latents.safetensors"))["ws"]
        order = {n: i for i, (n, _) in enumerate(read_dataset_json(folder))}
        self.ws = ws[[order[n] for n in data.names]]

    def invert(self, images, cameras, generator):
        d = (images[:, None].cpu() - self.data.images[None]).square().flatten(2).mean(2)
        return self.ws[d.argmin(1)]

    def render(self, ws, cameras, generator):
        return self.G.synthesis(ws, cameras, generator=generator)


class WAvgInverter(OracleInverter):
    def invert(self, images, cameras, generator):
        return self.G.backbone.mapping.w_avg.reshape(1, 1, -1).expand(images.shape[0], self.ws.shape[1], -1)


def _tiny_goae(G):
    c = feature_channels(G)
    return GOAE(G, Encoder(EncoderConfig.tiny()).eval(), AFA(AFAConfig.tiny(d_model=c, heads=4)).eval())


def test_goae_and_optim_share_the_row_function(world, nets, monkeypatch):
    G, root = world
    data = P.load_split(root / "celeba", "celeba", 2, G.img_resolution)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    seen = []
    real = P._celeba_row
    monkeypatch.setattr(P, "_celeba_row", lambda m, *a: seen.append(m.name) or real(m, *a))
    goae = P.GOAEInverter("goae", _tiny_goae(G), "tiny")
    optim = OptimInverter(G, OptimConfig(w_steps=1, g_steps=1), nets.lpips)
    optim.timing = (0, 1)
    proto = P.EvalProtocol("celeba", **FAST)
    rows = {m.name: P.evaluate_method(m, data, proto, nets, "cpu") for m in (goae, optim)}
    assert seen == ["goae", "pti_like"]
    assert list(rows["goae"]) == list(rows["pti_like"]) == list(P.CELEBA_KEYS)
    for r in rows.values():
        assert all(math.isfinite(r[k]) for k in P.CELEBA_KEYS if k != "fid") and math.isnan(r["fid"])
        assert 0 <= r["mse"] <= 4 and r["time_s"] > 0
    # PTI tunes a copy: the shared generator is untouched
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())


def test_oracle_beats_w_avg_and_rows_are_deterministic(world, nets):
    G, root = world
    cel = P.load_split(root / "celeba", "celeba", 3, G.img_resolution)
    oracle, wavg = OracleInverter(G, cel, root / "celeba"), WAvgInverter(G, cel, root / "celeba")
    proto = P.EvalProtocol("celeba", **FAST)
    ro = P.evaluate_method(oracle, cel, proto, nets, "cpu")
    rw = P.evaluate_method(wavg, cel, proto, nets, "cpu")
    assert ro["mse"] < 0.02 and ro["mse"] < 0.25 * rw["mse"]
    assert ro["lpips"] < rw["lpips"] and ro["id"] > rw["id"] and ro["geo_err"] < rw["geo_err"]
    ro2 = P.evaluate_method(oracle, cel, proto, nets, "cpu")   # same seeds -> same numbers
    assert all(ro[k] == ro2[k] for k in ("mse", "lpips", "id", "geo_err"))


def test_mead_groups_and_oracle(world, nets):
    G, root = world
    mead = P.load_split(root / "mead", "mead", 2, G.img_resolution)
    assert mead.yaws == YAWS and mead.identity_names == ["id000", "id001"]
    assert [mead.names[i] for i in mead.identities[1]] == ["id001_yaw-60.png", "id001_yaw+00.png", "id001_yaw+60.png"]
    oracle, wavg = OracleInverter(G, mead, root / "mead"), WAvgInverter(G, mead, root / "mead")
    samples = {}
    proto = P.EvalProtocol("mead")
    ro = P.evaluate_method(oracle, mead, proto, nets, "cpu", samples)
    rw = P.evaluate_method(wavg, mead, proto, nets, "cpu")
    assert list(ro) == list(rw) == ["yaw_pm60", "yaw_0", "src_m60", "src_0", "src_p60"]
    for g in ("yaw_pm60", "yaw_0"):
        assert list(ro[g]) == list(P.NOVEL_KEYS)
        assert ro[g]["lpips"] < rw[g]["lpips"] and ro[g]["geo_err"] < rw[g]["geo_err"]
    # the ±60 group is the mean of its two sources
    assert ro["yaw_pm60"]["lpips"] == pytest.approx((ro["src_m60"]["lpips"] + ro["src_p60"]["lpips"]) / 2)
    assert ro["yaw_0"] == ro["src_0"]
    # grid: real views over renders from each source, one column per yaw
    assert samples["nrow"] == 3 and len(samples["rows"]) == 6 and samples["rows"][1].shape == (3, 3, 128, 128)


def test_geo_err_masks_and_missing_depth(world, nets, tmp_path):
    import shutil
    G, root = world
    cel = P.load_split(root / "celeba", "celeba", 3, G.img_resolution, opacity_min=0.4)
    op = torch.stack([torch.from_numpy(np.load(root / "celeba" / "depth" / f"img{i:05d}.opacity.npy"))
                      for i in range(3)])[:, None]
    assert cel.face.dtype == torch.bool and torch.equal(cel.face, op >= 0.4)
    assert torch.equal(P.load_split(root / "celeba", "celeba", 3, G.img_resolution, opacity_min=0.5).face,
                       op >= 0.5)
    # no opacity files -> all pixels; no depth folder -> Geo. Err. undefined (NaN), others still computed
    shutil.copytree(root / "celeba", tmp_path / "c")
    for f in (tmp_path / "c" / "depth").glob("*.opacity.npy"):
        f.unlink()
    assert P.load_split(tmp_path / "c", "celeba", 2, G.img_resolution).face.all()
    shutil.rmtree(tmp_path / "c" / "depth")
    nodepth = P.load_split(tmp_path / "c", "celeba", 2, G.img_resolution)
    assert nodepth.depth is None
    r = P.evaluate_method(OracleInverter(G, nodepth, root / "celeba"), nodepth, P.EvalProtocol("celeba", **FAST),
                          nets, "cpu")
    assert math.isnan(r["geo_err"]) and r["mse"] < 0.02


def test_fid_with_packaged_inception(world, nets):
    from goae.metrics.fid import load_inception
    G, root = world
    cel = P.load_split(root / "celeba", "celeba", 2, G.img_resolution)
    n = P.MetricNets(nets.lpips, nets.arcface, load_inception())
    proto = P.EvalProtocol("celeba", **FAST)
    fo = P.evaluate_method(OracleInverter(G, cel, root / "celeba"), cel, proto, n, "cpu")["fid"]
    fw = P.evaluate_method(WAvgInverter(G, cel, root / "celeba"), cel, proto, n, "cpu")["fid"]
    assert math.isfinite(fo) and math.isfinite(fw) and 0 <= fo < fw
    assert ("celeba", "all") in cel.cache   # reference features computed once per split


def test_fid_subspace_is_exact():
    from goae.metrics.fid import fid_from_features
    g = np.random.default_rng(0)
    f1, f2 = g.normal(size=(5, 64)), g.normal(0.3, 1.5, size=(6, 64))
    a, b = P.fid_subspace(f1, f2)
    assert a.shape == (5, 12) and b.shape == (6, 12)
    assert fid_from_features(a, b) == pytest.approx(fid_from_features(f1, f2), rel=1e-4)
    big = g.normal(size=(80, 64))       # N >= D: features unchanged
    assert P.fid_subspace(big, big)[0] is big


def test_render_seed_is_stable():
    assert P.render_seed(0, "mead", "render", 60.0, 0, 1) == P.render_seed(0, "mead", "render", 60.0, 0, 1)
    assert P.render_seed(0, "mead", "render", 60.0, 0, 1) != P.render_seed(1, "mead", "render", 60.0, 0, 1)
    assert 0 <= P.render_seed("x") < 2 ** 63
    assert [P.source_key(y) for y in (-60.0, 0.0, 60.0)] == ["src_m60", "src_0", "src_p60"]


def test_metric_nets_provenance_and_stand_in_classification():
    from goae.config import params_from_dict
    from goae.metrics.report import stand_in_reasons
    p = params_from_dict({"assets": {"random_arcface": "tiny"}, "eval": {"fid": True}})
    prov = {}
    nets = P.build_metric_nets(p, "cpu", prov)
    got = nets.provenance()
    assert "trunk=random" in got["lpips"] and "layers=4" in got["arcface"] and "default_1.pt" in got["inception"]
    reasons = stand_in_reasons({**got, "generator": "file:eg3d:ab", "encoder": "trained_with_generator=file"})
    assert sorted(r.split(":")[0] for r in reasons) == ["arcface", "lpips"]   # the packaged Inception is the real trunk


def _copy_with_depth(root, dst, transform, convention=None, keep_opacity=False):
    """celeba split with depth/<stem>.npy replaced by transform(exact depth, face mask)."""
    import json
    import shutil
    shutil.copytree(root / "celeba", dst)
    for f in sorted((dst / "depth").glob("*.opacity.npy")):
        exact = np.load(f.with_name(f.name.replace(".opacity", "")))
        np.save(f.with_name(f.name.replace(".opacity", "")), transform(exact, np.load(f) >= 0.4).astype(np.float32))
        if not keep_opacity:
            f.unlink()
    if convention is not None:
        (dst / "depth" / "convention.json").write_text(json.dumps(convention))
    return dst


def test_user_pseudo_depth_with_zero_background_is_scored_on_the_face_only(world, nets, tmp_path):
    """A Deep3DFaceRecon-style map (0 off the face, no opacity file) must give the face region where it is
    defined, never score the background; the sign convention and z-depth are honoured."""
    G, root = world
    proto = P.EvalProtocol("celeba", fid=False, **FAST)
    ref = P.load_split(root / "celeba", "celeba", 3, G.img_resolution)          # exact depth, opacity face
    face_only = _copy_with_depth(root, tmp_path / "a", lambda d, f: np.where(f, d, 0.0))
    user = P.load_split(face_only, "celeba", 3, G.img_resolution)
    assert torch.equal(user.face, ref.face)                 # defined pixels = the face, not all ones
    g_ref = P.evaluate_method(OracleInverter(G, ref, root / "celeba"), ref, proto, nets, "cpu")["geo_err"]
    g_user = P.evaluate_method(OracleInverter(G, user, face_only), user, proto, nets, "cpu")["geo_err"]
    assert g_user == pytest.approx(g_ref, rel=1e-5)
    all_pixels = dataclasses.replace(user, face=torch.ones_like(user.face),  # the old reading: zeros scored
                                     depth=torch.nan_to_num(user.depth, nan=0.0))
    g_all = P.evaluate_method(OracleInverter(G, user, face_only), all_pixels, proto, nets, "cpu")["geo_err"]
    assert g_all > g_ref + 0.1
    neg = _copy_with_depth(root, tmp_path / "b", lambda d, f: np.where(f, -d, 0.0), {"far": "negative"})
    user_neg = P.load_split(neg, "celeba", 3, G.img_resolution)
    assert torch.equal(user_neg.face, ref.face)
    assert P.evaluate_method(OracleInverter(G, user_neg, neg), user_neg, proto, nets,
                             "cpu")["geo_err"] == pytest.approx(g_ref, rel=1e-5)
    # the same maps read as 'far = positive' are all undefined: not available, never a number
    (neg / "depth" / "convention.json").unlink()
    assert math.isnan(P.evaluate_method(OracleInverter(G, user_neg, neg), P.load_split(neg, "celeba", 3,
                      G.img_resolution), proto, nets, "cpu")["geo_err"])
    (neg / "depth" / "convention.json").write_text('{"kind": "depth"}')
    with pytest.raises(ValueError, match="convention.json"):
        P.load_split(neg, "celeba", 3, G.img_resolution)


def test_ray_to_z_flattens_a_plane_and_the_z_convention_is_applied(world, nets, tmp_path):
    from goae.eg3d import camera as cam
    from goae.metrics.geometry import ray_to_z
    c = cam.canonical_camera(1)
    r = 8
    fx = float(c[0, 16])
    u = (torch.arange(r) + 0.5) / r - 0.5
    norm = torch.sqrt(1 + (u[None] / fx) ** 2 + (u[:, None] / fx) ** 2)
    plane_rays = (2.0 * norm)[None, None]                    # distances to the plane z = 2 along each ray
    assert torch.allclose(ray_to_z(plane_rays, c), torch.full((1, 1, r, r), 2.0), atol=1e-6)
    G, root = world
    ref = P.load_split(root / "celeba", "celeba", 3, G.img_resolution)
    zdir = _copy_with_depth(root, tmp_path / "z", lambda d, f: d, {"kind": "z"}, keep_opacity=True)
    zsplit = P.load_split(zdir, "celeba", 3, G.img_resolution)
    depth = ref.depth.clone()                                # a 'render' equal to the exact ray depth
    assert P._geo(depth, ref, [0, 1, 2]) == pytest.approx(0.0, abs=1e-6)
    # ray maps declared as z-depth: the converted render differs from them by the off-axis factor, which the
    # normalisation does not remove (the face's depth relief is small): the convention matters
    assert P._geo(depth, zsplit, [0, 1, 2]) > 1e-3
    zsplit.depth = ray_to_z(ref.depth, ref.labels[:3])       # true z maps: the converted render matches exactly
    assert P._geo(depth, zsplit, [0, 1, 2]) == pytest.approx(0.0, abs=1e-6)


def test_protocol_block_says_why_geo_err_is_missing(world, tmp_path):
    import shutil
    from goae.config import Params
    G, root = world
    shutil.copytree(root / "celeba", tmp_path / "c")
    shutil.rmtree(tmp_path / "c" / "depth")
    data = {"celeba": P.load_split(tmp_path / "c", "celeba", 2, G.img_resolution),
            "mead": P.load_split(root / "mead", "mead", 2, G.img_resolution)}
    block = P.protocol_block(Params(), {k: P.EvalProtocol(k) for k in data}, data, [])
    assert block["celeba"]["geo_err_available"] is False and "does not exist" in block["celeba"]["geo_err"]
    assert block["mead"]["geo_err_available"] is True and "ray depth" in block["mead"]["geo_err"]
