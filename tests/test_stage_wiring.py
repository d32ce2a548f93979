"""What the stage-1 and stage-2 steps feed each loss, observed through the stage code itself (not a copy):
the camera L_BG renders at, what D_Wc sees as real and as fake, what precision the frozen EG3D runs in,
and that stage 2's λ5·L_BG really trains the AFA (and is gone when `loss.stage2_bg` is off)."""
from __future__ import annotations

import contextlib

import pytest
import torch

import _tiny
from _tiny import copy_world, tiny_params


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return _tiny.build_world(tmp_path_factory.mktemp("wiring-world"))


@pytest.fixture
def w(world, tmp_path, monkeypatch):
    root = copy_world(world, tmp_path / "w")
    monkeypatch.chdir(root)
    return root


class Spy:
    """Records every render (camera, whether the SR ran, inside autocast or not) and every L_BG call."""

    def __init__(self, monkeypatch):
        from goae import losses as L
        from goae.eg3d.generator import TriPlaneGenerator
        from goae.train import stages
        self.renders, self.bg_calls, self.in_autocast = [], [], False
        real_render, real_bg = TriPlaneGenerator._render, L.bg_depth_loss

        def render(G, planes, c, ws, *a, **kw):
            out = real_render(G, planes, c, ws, *a, **kw)
            self.renders.append({"c": c.detach().clone(), "sr": kw.get("superresolution", True),
                                 "autocast": self.in_autocast, "depth": out["image_depth"]})
            return out

        def bg(depth, mask, d_avg):
            self.bg_calls.append({"depth": depth, "mask": mask.detach().clone(), "d_avg": d_avg})
            return real_bg(depth, mask, d_avg)

        @contextlib.contextmanager
        def autocast(device, runtime):
            self.in_autocast = True
            try:
                yield
            finally:
                self.in_autocast = False

        monkeypatch.setattr(TriPlaneGenerator, "_render", render)
        monkeypatch.setattr(L, "bg_depth_loss", bg)
        monkeypatch.setattr(stages, "autocast", autocast)

    def front_renders(self):
        from goae.eg3d import camera as cam
        return [r for r in self.renders if torch.equal(r["c"], cam.canonical_camera(r["c"].shape[0]))]


def _afa_params(path):
    return _tiny.load_tensors(path / "afa.safetensors")


def _stage2(w, name, **loss):
    from goae.config import params_from_dict
    from goae.train import common, stages
    p = params_from_dict(tiny_params(stage2={"iters": 1, "batch_size": 1}, loss=loss))
    torch.manual_seed(0)  # the encoder's init draws from the global RNG: independent of earlier tests
    if not (w / "models" / "stage1" / "encoder.safetensors").exists():
        E = common.build_encoder(p, {})
        common.save_module(w / "models" / "stage1" / "encoder", E, {"encoder": common.config_dict(E.cfg)})
    torch.manual_seed(0)
    return stages.train_stage2(p, "data/prepared/train", "models/stage1", w / name, w / f"{name}-state",
                               w / f"{name}.csv", torch.device("cpu"), generator="models/generator",
                               davg_dir="models/davg")


def test_stage2_bg_trains_the_afa_through_the_front_view(w, monkeypatch):
    """Only λ5 on (L_rec and L_ΔF weighted 0): the AFA must still move, driven by L_BG alone, whose depth is
    the F* render at c_front with the davg-stage mask and D_avg; with `stage2_bg: false` it must not move."""
    only_bg = dict(lambda1=0.0, lambda2=0.0, lambda3=0.0, lambda7=0.0, lambda5=5.0)
    spy = Spy(monkeypatch)
    r = _stage2(w, "on", **only_bg)
    assert r["final"]["bg"] > 0
    assert r["final"]["total"] == pytest.approx(5.0 * r["final"]["bg"], rel=1e-5)
    front = spy.front_renders()
    assert len(front) == 1 and len(spy.bg_calls) == 1
    # L_BG's depth is exactly the front render's depth (not the input-view one), and its mask is M=1 on bg
    assert spy.bg_calls[0]["depth"] is front[0]["depth"]
    assert 0 < float(spy.bg_calls[0]["mask"].mean()) < 1
    assert spy.bg_calls[0]["d_avg"] == pytest.approx(3.0)              # the world's D_avg file
    assert not front[0]["sr"]                                           # depth mask: no super-resolution
    # bf16 covers encoder/AFA only: no render of the frozen EG3D ran inside autocast
    assert spy.renders and not any(x["autocast"] for x in spy.renders)
    assert "on" in r["provenance"]["stage2_bg"]

    spy.renders.clear(), spy.bg_calls.clear()
    r_off = _stage2(w, "off", stage2_bg=False, **only_bg)
    assert spy.front_renders() == [] and spy.bg_calls == []
    assert r_off["final"]["bg"] == 0 and r_off["final"]["total"] == 0
    init = {k: v for k, v in _afa_params(w / "off").items()}
    moved = [k for k, v in _afa_params(w / "on").items() if not torch.equal(v, init[k])]
    # same seed, same init: with L_BG off the AFA has zero gradient and Adam leaves it as initialised
    assert moved, "L_BG did not reach the AFA's parameters"


def test_stage2_without_davg_fails_clearly(w):
    (w / "models" / "davg" / "davg.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="stage2_bg"):
        _stage2(w, "x")
    assert _stage2(w, "y", stage2_bg=False)["steps_run"] == 1


def test_stage1_step_feeds_front_view_to_l_bg_and_every_row_to_d(w, monkeypatch):
    """Stage 1, one step: L_BG renders at c_front; D_Wc's real codes are mapping(z, c_front) for the step's
    z, its fake codes are every row w_i of the encoder's w+ (paper, d_rows: all)."""
    from goae.config import params_from_dict
    from goae.eg3d import camera as cam
    from goae.model.discriminator import LatentCodesDiscriminator
    from goae.model.goae import GOAE
    from goae.train import common, stages
    from goae.train.loop import step_seed

    spy = Spy(monkeypatch)
    d_inputs, encoded = [], []
    real_fwd, real_encode = LatentCodesDiscriminator.forward, GOAE.encode
    monkeypatch.setattr(LatentCodesDiscriminator, "forward",
                        lambda self, x: (d_inputs.append(x.detach().clone()), real_fwd(self, x))[1])
    monkeypatch.setattr(GOAE, "encode", lambda self, *a, **k: (encoded.append(real_encode(self, *a, **k)),
                                                               encoded[-1])[1])
    p = params_from_dict(tiny_params(stage1={"iters": 1, "batch_size": 2}, loss={"r1_interval": 1}))
    r = stages.train_stage1(p, "data/prepared/train", "models/davg", w / "s1", w / "st1",
                            w / "c1.csv", torch.device("cpu"), generator="models/generator")
    assert r["final"]["bg"] > 0
    front = spy.front_renders()
    assert len(front) == 1 and spy.bg_calls[0]["depth"] is front[0]["depth"]
    assert not any(x["autocast"] for x in spy.renders)
    # D's inputs: real (Eq. 2 first term), then fake rows, then R1 on real, then the encoder's fake rows
    w_plus = encoded[0].detach()
    G, _ = common.load_generator("models/generator")
    zg = torch.Generator().manual_seed(step_seed(p.stage1.seed, 0, 0, 2))
    z = torch.randn(2, G.z_dim, generator=zg)
    expect_real = G.mapping(z, cam.canonical_camera(2))[:, 0]
    assert torch.allclose(d_inputs[0], expect_real, atol=1e-6)
    every_row = w_plus.reshape(-1, w_plus.shape[-1])
    assert every_row.shape[0] == 2 * G.backbone.mapping.num_ws
    assert torch.equal(d_inputs[1], every_row)                         # D step: every w_i is fake
    assert torch.allclose(d_inputs[-1], every_row)                     # encoder's L_adv^E: the same rows
    assert torch.allclose(d_inputs[2], expect_real, atol=1e-6)         # R1 on the real codes
