"""The embedded world: deterministic from its seed, with exact depths/cameras and the packaged photos."""
import json

import numpy as np
import torch

from goae.config import DataConfig, GeneratorConfig
from goae.data.dataset import LabeledImages, read_dataset_json
from goae.data.world import build_embedded_generator, render_world

TINY = GeneratorConfig(img_resolution=128, channel_base=256, channel_max=16, neural_rendering_resolution=16,
                       depth_resolution=6, depth_resolution_importance=6, w_avg_samples=50)


def test_generator_depends_on_seed_only():
    torch.manual_seed(123)  # global RNG state must not matter
    a, _ = build_embedded_generator(TINY)
    torch.manual_seed(456)
    b, _ = build_embedded_generator(TINY)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    c, _ = build_embedded_generator(GeneratorConfig(**{**TINY.__dict__, "seed": 1}))
    assert not torch.equal(c.decoder.net[0].weight, a.decoder.net[0].weight)


def test_render_world_layout_and_exact_depth(tmp_path):
    G, _ = build_embedded_generator(TINY)
    d = DataConfig(n_train=2, n_celeba=1, n_mead_ids=1, mead_yaws_deg=[-60.0, 0.0, 60.0], photos=True)
    summary = render_world(G, d, tmp_path, batch=4)
    assert summary["train"] == 2 and summary["mead"] == 3 and len(summary["wild"]) == 2
    labels = read_dataset_json(tmp_path / "mead")
    assert [n for n, _ in labels] == ["id000_yaw-60.png", "id000_yaw+00.png", "id000_yaw+60.png"]
    meta = json.loads((tmp_path / "mead" / "meta.json").read_text())
    assert meta["identities"]["id000"] == [n for n, _ in labels]
    ds = LabeledImages(tmp_path / "mead", with_depth=True)
    item = ds[1]
    assert item["image"].shape == (3, 128, 128) and item["depth"].shape == (1, 16, 16)
    # the frontal MEAD view's camera is the canonical one (up to the yaw=0 look-at)
    lab = np.array(labels[1][1]).reshape(-1)[:16].reshape(4, 4)
    assert np.allclose(lab[:3, :3], np.diag([1, -1, -1]), atol=1e-5) and abs(lab[2, 3] - 2.7) < 1e-4
    assert (item["depth"] > 2.0).all() and (item["depth"] < 3.5).all()
