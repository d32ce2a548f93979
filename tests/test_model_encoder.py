"""Encoder E (Eq. 1): tiny-config behaviour, paper-size parameter counts, Swin weight loading."""
import re
from dataclasses import asdict

import pytest
import torch

from goae.model.encoder import (Encoder, EncoderConfig, add_w_avg, load_swin_imagenet,
                                microsoft_swin_to_timm, stage_for_iteration, timm_swin_to_microsoft)
from goae.model.official import official_computed_buffers


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Encoder(EncoderConfig.tiny()).eval()


def _img(cfg, b=2, seed=0):
    return torch.rand(b, 3, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_paper_parameter_counts_on_meta():
    with torch.device("meta"):
        enc = Encoder(EncoderConfig.paper())
    assert sum(p.numel() for p in enc.parameters()) == 111_218_822
    assert sum(p.numel() for p in enc.swin_model.parameters()) == 86_893_816
    assert len(enc.state_dict()) == 495          # 545 official keys minus 50 computed buffers
    # the largest head, derived from the trunk's 1024 -> 4096 token counts
    assert sum(p.numel() for p in enc.mapper_mid_to_fine_spatial.parameters()) == 10_491_904


def test_tiny_shapes_and_taps(tiny):
    cfg = tiny.cfg
    x = _img(cfg)
    with torch.no_grad():
        taps = tiny.trunk(x)
        w, w_base = tiny(x)
    g, c = cfg.img_size // 4, cfg.embed_dim
    assert taps["x_fine"].shape == (2, g * g, c)
    assert taps["x_mid"].shape == (2, (g // 2) ** 2, 2 * c)
    assert taps["x_coarse"].shape == (2, (g // 4) ** 2, 4 * c)
    assert taps["x_query"].shape == taps["x_base"].shape == (2, 8 * c, (g // 8) ** 2)
    assert w.shape == w_base.shape == (2, cfg.n_ws, cfg.w_dim)
    # taps are the post-merge tensors (not stage outputs): x_mid is the merge of stage 0's output
    sw = tiny.swin_model
    with torch.no_grad():
        ref_mid = sw.layers[1].downsample(sw.layers[0](sw.patch_embed(x)))
        assert torch.equal(taps["x_mid"], ref_mid.reshape(2, -1, 2 * c))
        assert torch.equal(taps["x_base"], sw.forward_features(x).reshape(2, -1, 8 * c).transpose(1, 2))


def test_w_plus_layout_per_stage(tiny):
    x = _img(tiny.cfg, seed=1)
    bounds = [(1, 4), (4, 7), (7, 14)]      # rows of coarse, mid, fine
    with torch.no_grad():
        outs = [tiny(x, stage=s) for s in range(4)]
    base = outs[0][1]
    for s, (w, w_base) in enumerate(outs):
        assert torch.equal(w_base, base)                    # base code is stage independent
        assert torch.equal(w[:, 0], base[:, 0])             # row 0 is always the base code
        for lvl, (a, b) in enumerate(bounds):
            rows_equal_base = torch.equal(w[:, a:b], base[:, a:b])
            assert rows_equal_base == (lvl >= s), (s, lvl)
            if lvl < s:                                      # active rows don't change with stage
                assert torch.equal(w[:, a:b], outs[3][0][:, a:b])
    assert torch.equal(outs[0][0], base)


def test_stage_boundaries(tiny):
    cases = {0: 0, 9999: 0, 10000: 1, 19999: 1, 20000: 2, 29999: 2, 30000: 2, 30001: 3, 10 ** 6: 3}
    for it, want in cases.items():
        assert stage_for_iteration(it) == want, it
        assert tiny.stage_for_iteration(it) == want, it
    assert stage_for_iteration(5, schedule=(1, 2, 5)) == 2
    assert stage_for_iteration(6, schedule=(1, 2, 5)) == 3


def test_gradients_flow_by_stage():
    torch.manual_seed(1)
    enc = Encoder(EncoderConfig.tiny(dropout=0.0)).train()
    # SwinV2 zero-inits its residual post-norms (timm and Microsoft alike), which blocks the gradient
    # into every block at init; give them unit weights so the test sees the real graph
    for n, p in enc.swin_model.named_parameters():
        if re.search(r"blocks\.\d+\.norm[12]\.weight$", n):
            torch.nn.init.ones_(p)
    x = _img(enc.cfg, b=1, seed=2)
    for stage, dead in ((3, ()), (1, ("cross_att_mid", "cross_att_fine", "mapper_mid", "mapper_fine",
                                      "mapper_coarse_to_mid", "mapper_mid_to_fine",
                                      "mapper_query_spatial_mid", "mapper_query_spatial_fine",
                                      "mapper_query_channel_mid", "mapper_query_channel_fine"))):
        enc.zero_grad(set_to_none=True)
        w, _ = enc(x, stage=stage)
        w.square().mean().backward()
        for n, p in enc.named_parameters():
            if n.startswith(dead):
                assert p.grad is None, n
            else:
                assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_sdpa_matches_explicit_attention(tiny):
    exp = Encoder(EncoderConfig.tiny(sdpa=False)).eval()
    exp.load_state_dict(tiny.state_dict())
    x = _img(tiny.cfg, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(tiny(x)[0], exp(x)[0], atol=1e-5, rtol=1e-5)


def test_add_w_avg_and_config_roundtrip():
    w = torch.zeros(2, 14, 4)
    w_avg = torch.arange(4.0)
    assert torch.equal(add_w_avg(w, w_avg)[1, 13], w_avg)
    cfg = EncoderConfig.tiny(drop_path_rate=0.3)
    assert EncoderConfig.from_dict(asdict(cfg)) == cfg
    assert EncoderConfig.paper().drop_path_rate == 0.2
    with pytest.raises(ValueError):
        EncoderConfig.tiny(d_model=256)               # deltas must live in w space
    with pytest.raises(ValueError):
        EncoderConfig.tiny(query_counts=(3, 3, 6))    # 1 + 12 != 14 rows


def test_swin_key_rules_roundtrip(tiny):
    sw = tiny.swin_model.state_dict()
    ms = timm_swin_to_microsoft(sw)
    assert "layers.0.downsample.reduction.weight" in ms and "layers.3.downsample.norm.bias" not in ms
    ms.update({k[len("swin_model."):]: v for k, v in official_computed_buffers(tiny).items()})
    back = microsoft_swin_to_timm(ms)
    assert set(back) == set(sw) and all(torch.equal(back[k], sw[k]) for k in sw)


def test_load_swin_imagenet_microsoft_and_timm_layouts(tmp_path, tiny):
    src = tiny.swin_model.state_dict()
    ms = timm_swin_to_microsoft(src)
    ms.update({k[len("swin_model."):]: v for k, v in official_computed_buffers(tiny).items()})
    ms["head.weight"], ms["head.bias"] = torch.zeros(10, 256), torch.zeros(10)
    torch.save({"model": ms}, tmp_path / "ms.pth")
    from safetensors.torch import save_file
    save_file(dict(src, **{"head.fc.weight": torch.zeros(10, 256)}), str(tmp_path / "timm.safetensors"))
    for f in ("ms.pth", "timm.safetensors"):
        torch.manual_seed(7)
        enc = Encoder(EncoderConfig.tiny())
        load_swin_imagenet(enc, tmp_path / f)
        got = enc.swin_model.state_dict()
        assert all(torch.equal(got[k], src[k]) for k in src), f
    with pytest.raises(FileNotFoundError, match="not found"):
        load_swin_imagenet(enc, tmp_path / "missing.pth")
    del ms["layers.0.blocks.0.mlp.fc1.weight"]
    torch.save(ms, tmp_path / "bad.pth")
    with pytest.raises(KeyError, match="layers.0.blocks.0.mlp.fc1.weight"):
        load_swin_imagenet(enc, tmp_path / "bad.pth")
