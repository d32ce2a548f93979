"""Evaluation protocols: one row function for every method, oracle vs w_avg, determinism, data loading."""
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
    assert seen == ["goae", "optim"]
    assert list(rows["goae"]) == list(rows["optim"]) == list(P.CELEBA_KEYS)
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
    assert [r.split(":")[0] for r in reasons] == ["arcface", "lpips"]   # the packaged Inception is the real trunk
