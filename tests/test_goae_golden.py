"""Golden check against the official GOAE code, plus the official-checkpoint conversion path."""
import hashlib

import pytest
import torch

from goae.golden import format_rows, recipe_rule, recipe_value, run_golden
from goae.model.afa import AFA, AFAConfig
from goae.model.encoder import Encoder, EncoderConfig
from goae.model.official import (convert_goae, convert_official_encoder, export_official_encoder,
                                 load_converted, load_official_goae)


def test_golden_matches_official(goae_fixture):
    # ~25-40 s on 2 shared cores: recipe weights for 123 M parameters, 2 encoder + 1 AFA forward
    rows = run_golden(goae_fixture, log=lambda *a: None)
    bad = [r for r in rows if not r.ok]
    assert len(rows) >= 45 and not bad, format_rows(bad or rows)


def test_recipe_rules_follow_the_table():
    assert recipe_rule("swin_model.layers.0.blocks.1.attn_mask", (16, 256, 256)) == "C"
    assert recipe_rule("body.0.res_layer.2.weight", (64,)) == "R4"        # PReLU before R5
    assert recipe_rule("body.0.res_layer.4.weight", (64,)) == "R5"
    assert recipe_rule("swin_model.layers.0.blocks.0.attn.q_bias", (128,)) == "R6"
    assert recipe_rule("output_layer.2.weight", (512, 512, 3, 3)) == "R7"
    assert recipe_rule("output_layer.2.bias", (512,)) == "R6"
    w = recipe_value("mapper_base_spatial.0.weight", (64, 64))
    assert abs(w.std().item() - 1 / 8) < 0.01                             # R8: N(0,1)/sqrt(64)


@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(0)
    return Encoder(EncoderConfig.tiny()), AFA(AFAConfig.tiny())


def test_official_encoder_key_rules(tiny_pair):
    enc, _ = tiny_pair
    off = export_official_encoder(enc)
    # official layout: merges at the end of stages 0..2, computed buffers present
    assert "swin_model.layers.0.downsample.reduction.weight" in off
    assert "swin_model.layers.3.downsample.reduction.weight" not in off
    assert "swin_model.layers.0.blocks.0.attn.relative_position_index" in off
    ours = convert_official_encoder(off)
    assert set(ours) == set(enc.state_dict())
    assert torch.equal(ours["swin_model.layers.1.downsample.reduction.weight"],
                       off["swin_model.layers.0.downsample.reduction.weight"])
    assert torch.equal(ours["cross_att_fine.multihead_attn.in_proj_weight"],
                       off["cross_att_fine.multihead_attn.in_proj_weight"])
    with pytest.raises(KeyError, match="module."):
        convert_official_encoder({"module." + k: v for k, v in off.items()})


def test_convert_goae_files_roundtrip(tmp_path, tiny_pair):
    enc, afa = tiny_pair
    ecfg, acfg = enc.cfg, afa.cfg
    torch.save(export_official_encoder(enc), tmp_path / "encoder.pt")
    torch.save(afa.state_dict(), tmp_path / "afa.pt")
    st, js = convert_goae(tmp_path / "encoder.pt", tmp_path / "afa.pt", tmp_path / "out" / "goae",
                          enc_cfg=ecfg, afa_cfg=acfg)
    assert st.name == "goae.safetensors" and js.name == "goae.json"
    enc_sd, afa_sd, meta = load_converted(tmp_path / "out" / "goae")
    assert EncoderConfig.from_dict(meta["encoder"]) == ecfg
    assert AFAConfig.from_dict(meta["afa"]) == acfg
    sha = hashlib.sha256((tmp_path / "encoder.pt").read_bytes()).hexdigest()
    assert meta["provenance"]["encoder"] == {"file": "encoder.pt", "sha256": sha}
    enc2, afa2 = Encoder(ecfg).eval(), AFA(acfg).eval()
    enc2.load_state_dict(enc_sd, strict=True)
    afa2.load_state_dict(afa_sd, strict=True)
    x = torch.rand(1, 3, ecfg.img_size, ecfg.img_size) * 2 - 1
    with torch.no_grad():
        assert torch.equal(enc2(x)[0], enc.eval()(x)[0])
    # a missing key is named in the error
    off = torch.load(tmp_path / "encoder.pt", weights_only=True)
    del off["mapper_base_channel.2.bias"]
    torch.save(off, tmp_path / "bad.pt")
    with pytest.raises(KeyError, match="mapper_base_channel.2.bias"):
        load_official_goae(tmp_path / "bad.pt", tmp_path / "afa.pt", ecfg, acfg)
    with pytest.raises(FileNotFoundError):
        load_official_goae(tmp_path / "nope.pt", tmp_path / "afa.pt", ecfg, acfg)
