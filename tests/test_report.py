"""Evaluation report: eval.json / table1.md contents, the real-vs-stand-in line, grids; one tiny end-to-end run."""
import json
import math
import re
from pathlib import Path

import pytest
import torch

from goae.config import DataConfig, GeneratorConfig, params_from_dict
from goae.data.world import build_embedded_generator, render_world
from goae.metrics import protocols as P
from goae.metrics import report as R
from goae.metrics.image import build_lpips
from goae.model.afa import AFA, AFAConfig
from goae.model.encoder import Encoder, EncoderConfig
from goae.train.common import config_dict, feature_channels, save_module

PAPER = Path(__file__).resolve().parents[1].parent / "shared" / "docs" / "paper-goae.txt"
REAL = {"generator": "file:eg3d.safetensors sha256:ab", "encoder": "models/stage1/encoder.safetensors "
        "sha256:cd steps=30000 trained_with_generator=file", "arcface": "model_ir_se50.pth sha256:ef",
        "lpips": "heads=alex.pth sha256:01 trunk=alexnet-owt-7be5be79.pth sha256:23",
        "inception": "default_1.pt sha256:45 (trunk)", "methods": {"goae": "G=…; E=…; AFA=…"}}
ROW_C = {"mse": 0.01234, "lpips": 0.2, "fid": float("nan"), "id": 0.5, "geo_err": 0.1, "time_s": 0.25}
ROW_N = {"lpips": 0.3, "fid": 60.0, "id": 0.6, "geo_err": 0.2}
METHODS = ("goae", "goae_wplus", "goae_nomix", "optim")


def _results():
    return {"celeba": {m: dict(ROW_C) for m in METHODS},
            "mead": {m: {"yaw_pm60": dict(ROW_N), "yaw_0": dict(ROW_N, lpips=0.25)} for m in METHODS}}


def test_table_json_and_stand_in_line(tmp_path):
    res, proto = _results(), {"seed": 0, "celeba": {"n_images": 6}, "mead": {"n_identities": 3}}
    md = R.table1_markdown(res, proto, REAL)
    assert "Weights: REAL" in md and "STAND-IN" not in md
    for m in METHODS:
        assert f"| {R.LABELS[m]} (this run) | 0.0123 | 0.2000 | – | 0.5000 | 0.1000 | 0.2500 | 0.3000 | 60.0 | " \
               f"0.600 | 0.2000 | 0.2500 | 60.0 | 0.600 | 0.2000 |" in md
    for name, vals in R.PAPER_ROWS.items():
        assert f"| {name} (paper) | " + " | ".join(vals) + " |" in md
    # each stand-in component alone flips the line and is named
    for k, v in {"generator": '{"kind":"embedded","seed":0}', "encoder": "… trained_with_generator=embedded",
                 "arcface": "random(seed=0)", "lpips": "heads=alex.pth trunk=random(seed=0)",
                 "inception": "missing"}.items():
        w = dict(REAL, **{k: v}) if v != "missing" else {x: y for x, y in REAL.items() if x != k}
        text = R.table1_markdown(res, proto, w)
        assert "STAND-IN" in text and f"{k}: " in text and "Weights: REAL" not in text
    obj = R.write_eval_json(tmp_path / "eval.json", res, proto, REAL)
    strict = json.loads((tmp_path / "eval.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert strict == obj and strict["real_weights"] is True and strict["celeba"]["goae"]["fid"] is None
    assert strict["mead"]["optim"]["yaw_0"]["lpips"] == 0.25 and strict["weights"] == REAL
    flat = R.flat_metrics(res)
    assert flat["celeba/goae/mse"] == 0.01234 and flat["mead/optim/yaw_pm60/fid"] == 60.0
    assert "celeba/goae/fid" not in flat and len(flat) == 4 * 5 + 4 * 8
    assert all(re.fullmatch(r"[A-Za-z0-9_/.\- ]+", k) for k in flat)   # valid MLflow metric names


@pytest.mark.skipif(not PAPER.is_file(), reason="paper text not available")
def test_paper_rows_match_the_paper_text():
    lines = PAPER.read_text().splitlines()
    for name, key in (("PTI [36]", "PTI [36]"), ("Ours-w+", "Ours-w <sup>+</sup>"), ("Ours", "Ours")):
        row = next(ln for ln in lines if key in ln.split("\t")[:2])
        assert row.strip().split("\t")[-14:] == R.PAPER_ROWS[name], name


class TinyID(torch.nn.Module):
    provenance = "test stand-in (random projection)"

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.randn(3 * 14 * 14, 512, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return torch.nn.functional.normalize(torch.nn.functional.avg_pool2d(x, 8).flatten(1) @ self.w, dim=1)


def _tiny_world(root, n_celeba):
    """Embedded generator, a rendered world under root/w, and an untrained tiny encoder + AFA."""
    torch.manual_seed(0)   # tiny encoder/AFA init only
    G, gcfg = build_embedded_generator(GeneratorConfig(channel_base=512, channel_max=16,
                                                       neural_rendering_resolution=16, depth_resolution=6,
                                                       depth_resolution_importance=6, w_avg_samples=64))
    render_world(G, DataConfig(n_train=1, n_celeba=n_celeba, n_mead_ids=1, mead_yaws_deg=[-60.0, 0.0, 60.0],
                               photos=False), root / "w")
    return G, gcfg, Encoder(EncoderConfig.tiny()), AFA(AFAConfig.tiny(d_model=feature_channels(G), heads=4))


def test_end_to_end_tiny_run_writes_all_methods_and_grids(tmp_path):
    G, gcfg, E, A = _tiny_world(tmp_path, 2)
    prov = {"provenance": {"generator": gcfg["provenance"]}, "steps": 0}
    save_module(tmp_path / "s1" / "encoder", E, {"encoder": config_dict(E.cfg), **prov})
    save_module(tmp_path / "s2" / "afa", A, {"afa": config_dict(A.cfg), **prov})
    p = params_from_dict({"eval": {"n_celeba": 2, "n_mead_ids": 1, "fid": False,
                                   "methods": ["goae", "goae_wplus", "goae_nomix"],
                                   "extra_encoders": [str(tmp_path / "s1")]}})
    nets = P.MetricNets(build_lpips(seed=0), TinyID(), None)
    ev = P.run_evaluation(p, G, gcfg["provenance"], tmp_path / "s1", tmp_path / "s2", tmp_path / "w" / "celeba",
                          tmp_path / "w" / "mead", "cpu", log=lambda s: None, nets=nets,
                          timing_warmup=0, timing_repeats=1)
    names = ["goae", "goae_wplus", "goae_nomix", "wplus_s1"]
    obj = R.write_eval_json(tmp_path / "eval.json", ev.results, ev.protocol, ev.weights)
    assert list(obj["celeba"]) == list(obj["mead"]) == names
    assert all(list(obj["celeba"][m]) == list(P.CELEBA_KEYS) for m in names)
    assert all(obj["mead"][m]["yaw_0"]["lpips"] > 0 for m in names)
    assert obj["protocol"]["celeba"]["n_images"] == 2 and obj["protocol"]["mead"]["n_identities"] == 1
    assert obj["real_weights"] is False and "embedded" in obj["weights"]["generator"]
    assert set(obj["weights"]["methods"]) == set(names) and "no mix" in obj["weights"]["methods"]["goae_nomix"]
    # AFA on (no mix) vs off (w+ only) are different renders, not aliases. (goae vs goae_wplus may coincide
    # here: at 16² neural rendering the visible-point footprint is too sparse to survive the mix threshold.)
    c = obj["celeba"]
    assert c["goae_nomix"]["mse"] != c["goae_wplus"]["mse"]
    md = R.table1_markdown(ev.results, ev.protocol, ev.weights)
    assert "STAND-IN" in md and all(f"| {R.LABELS.get(m, m)} (this run) |" in md for m in names)
    files = R.save_grids(ev.samples, tmp_path / "grids", log=False)
    assert sorted(f.name for f in files) == sorted(f"{pr}_{m}.png" for pr in ("celeba", "mead") for m in names)
    from PIL import Image
    # 2 images x 5 columns (input, rec, 2 novel, depth), plus the label strips (top: columns, left: rows)
    index = json.loads((tmp_path / "grids" / "index.json").read_text())
    assert index["celeba_goae.png"]["columns"] == ["input", "reconstruction", "yaw -30", "yaw +30", "depth"]
    with Image.open(tmp_path / "grids" / "celeba_goae.png") as im:
        assert 5 * 128 < im.size[0] < 5 * 128 + 80 and 2 * 128 < im.size[1] < 2 * 128 + 30
    with Image.open(tmp_path / "grids" / "mead_goae.png") as im:      # (real, rendered) x 3 sources, 3 yaws
        assert 3 * 128 < im.size[0] < 3 * 128 + 160 and 6 * 128 < im.size[1] < 6 * 128 + 30
    assert math.isfinite(c["goae"]["geo_err"])


def test_stand_ins_from_training_provenance_flip_the_banner():
    """Real metric nets and checkpoints, but E trained with a mediapipe mask, a random Swin or a random LPIPS
    trunk: the banner must say STAND-IN and name the component, from the recorded provenance."""
    real_training = {"stage1": {"generator": {"kind": "file", "sha256": "ab"}, "swin": "swinv2.pth:12ab",
                                "mask": "bisenet:79999_iter.pth sha256:cd", "loss.lpips": REAL["lpips"],
                                "loss.arcface": "model_ir_se50.pth sha256:ef", "stage2_bg": "on"}}
    ok = dict(REAL, training=real_training)
    assert R.stand_in_reasons(ok) == [] and "Weights: REAL" in R.table1_markdown(_results(), {}, ok)
    for key, bad, word in [("mask", "selfie:packaged:mediapipe==0.10.14:selfie_segmentation.tflite", "selfie mask"),
                           ("swin", "random", "random fallback"),
                           ("loss.lpips", "heads=alex.pth sha256:01 trunk=random(seed=0)", "random LPIPS trunk"),
                           ("generator", {"kind": "embedded"}, "embedded generator"),
                           ("bisenet", "packaged:mediapipe==0.10.14:selfie_segmentation.tflite", "substitute")]:
        w = dict(REAL, training={"stage1": dict(real_training["stage1"], **{key: bad})})
        reasons = R.stand_in_reasons(w)
        assert len(reasons) == 1 and reasons[0].startswith(f"training.stage1.{key}: ") and word in reasons[0]
        md = R.table1_markdown(_results(), {}, w)
        assert "Weights: STAND-IN" in md and f"training.stage1.{key}" in md and "**stand-in:" in md


def test_official_row_pti_recipe_and_metric_size_in_the_evaluation(tmp_path):
    """assets.goae_encoder/afa (one converted file) add a `goae_official` row with the release mix; the PTI
    recipe names its row `pti` and uses LPIPS-VGG; eval.metric_size is applied and recorded."""
    from goae.model.official import save_converted
    G, gcfg, E, A = _tiny_world(tmp_path, 1)
    save_converted(tmp_path / "off" / "goae", E.state_dict(), A.state_dict(), {"encoder": E.cfg, "afa": A.cfg})
    conv = str(tmp_path / "off" / "goae.safetensors")
    p = params_from_dict({"assets": {"goae_encoder": conv, "goae_afa": conv},
                          "eval": {"n_celeba": 1, "n_mead_ids": 1, "fid": False, "methods": ["optim"],
                                   "optim_recipe": "pti", "optim_w_steps": 1, "optim_g_steps": 0,
                                   "metric_size": 64}})
    seen = []
    real_lpips = P.lpips_distance
    P.lpips_distance = lambda net, x, y, dev, size=None, **k: (seen.append(size), real_lpips(net, x, y, dev, size=size))[1]
    try:
        vgg = build_lpips(net="vgg", seed=0)
        ev = P.run_evaluation(p, G, gcfg["provenance"], tmp_path / "s1", tmp_path / "s2", tmp_path / "w" / "celeba",
                              tmp_path / "w" / "mead", "cpu", log=lambda s: None,
                              nets=P.MetricNets(build_lpips(seed=0), TinyID(), None, vgg),
                              timing_warmup=0, timing_repeats=1)
    finally:
        P.lpips_distance = real_lpips
    assert list(ev.results["celeba"]) == ["pti", "goae_official"]
    assert math.isfinite(ev.results["celeba"]["goae_official"]["mse"])
    m = ev.weights["methods"]
    assert "release recipe" in m["goae_official"] and "planes=xy" in m["goae_official"]
    assert "LPIPS-vgg" in m["pti"] and "net=vgg" in m["pti"] and m["pti"].startswith("G=")
    assert ev.protocol["metric_resolution"].startswith("64x64") and set(seen) == {64}
    assert "reading of the paper" in ev.protocol["mix"]["note"] and "interpretation" in ev.protocol["mix"]["params"]
    md = R.table1_markdown(ev.results, ev.protocol, ev.weights)
    assert "| GOAE official weights (this run) |" in md and "| PTI (w, LPIPS-VGG) (this run) |" in md
    assert "computed at 64x64" in md
    with pytest.raises(ValueError, match="both"):
        P.build_official(params_from_dict({"assets": {"goae_encoder": conv}}), G, "cpu", {"generator": "g"})


def test_label_grid_draws_labels_and_keeps_tiles():
    import numpy as np
    grid = np.full((2 * 16, 3 * 40, 3), 128, np.uint8)
    out = R.label_grid(grid, 16, 40, ["input", "recon", "depth"], ["image 0", "image 1"])
    top, left = out.shape[0] - grid.shape[0], out.shape[1] - grid.shape[1]
    assert top > 0 and left > 0
    assert (out[top:, left:] == grid).all()                     # tiles untouched
    strip = out[:top, left:]
    for i in range(3):                                           # each column's label puts ink above it
        assert (strip[:, i * 40:(i + 1) * 40] < 100).any()
    assert (out[top:, :left] < 100).any()                        # row labels too
    assert R.label_grid(grid, 16, 40, None, None).shape == grid.shape
