"""ArcFace IR-SE50: key set and size from the architecture spec, forward contract, strict load."""
import pytest
import torch
import torch.nn.functional as F

from goae.nets.arcface import IRSE50, id_embedding, load_arcface, random_arcface

# IR-SE50 spec: stages (cin, depth, units), first unit of each stage strided.
STAGES = [(64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3)]


@pytest.fixture(scope="module")
def net():
    return random_arcface(seed=0)


def _units():
    return [(cin if u == 0 else d, d) for cin, d, n in STAGES for u in range(n)]


def test_key_set_and_param_count_match_spec(net):
    sd = net.state_dict()
    units = _units()
    n_proj = sum(cin != d for cin, d in units)
    # input conv+bn(5)+prelu = 7; unit: 2 bn(10) + 2 conv + prelu + se fc1/fc2 = 15; projection conv+bn = 6;
    # output bn2d(5) + linear(2) + bn1d(5) = 12
    assert len(units) == 24 and n_proj == 3
    assert len(sd) == 7 + 15 * len(units) + 6 * n_proj + 12
    bn = lambda c: 2 * c
    params = 3 * 64 * 9 + bn(64) + 64
    for cin, d in units:
        params += bn(cin) + cin * d * 9 + d + d * d * 9 + bn(d) + 2 * d * (d // 16)
        params += (cin * d + bn(d)) if cin != d else 0
    params += bn(512) + 512 * 7 * 7 * 512 + 512 + bn(512)
    assert sum(p.numel() for p in net.parameters()) == params
    # names of model_ir_se50.pth (TreB1eN Backbone): spot checks incl. shapes
    assert sd["input_layer.0.weight"].shape == (64, 3, 3, 3)
    assert sd["body.3.shortcut_layer.0.weight"].shape == (128, 64, 1, 1)
    assert not any(k.startswith("body.0.shortcut_layer") for k in sd)  # identity units: MaxPool2d(1, s)
    assert sd["body.23.res_layer.5.fc1.weight"].shape == (32, 512, 1, 1)
    assert sd["output_layer.3.weight"].shape == (512, 512 * 7 * 7)
    assert "output_layer.4.running_var" in sd and "output_layer.4.weight" in sd


def test_forward_unit_norm_and_embedding_recipe(net):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 112, 112, generator=g) * 2 - 1
    e = net(x)
    assert e.shape == (2, 512)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(2))
    # e4e recipe: 512 input is area-pooled to 256, then crop [35:223, 32:220] and pool to 112
    img = torch.rand(1, 3, 512, 512, generator=g) * 2 - 1
    ref = net(F.adaptive_avg_pool2d(F.avg_pool2d(img, 2)[:, :, 35:223, 32:220], 112))
    torch.testing.assert_close(id_embedding(net, img), ref, atol=1e-5, rtol=0)
    assert not torch.allclose(e[0], e[1], atol=1e-3)


def test_random_is_seeded_and_leaves_global_rng(net):
    state = torch.random.get_rng_state()
    again = random_arcface(seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(again.body[5].res_layer[1].weight, net.body[5].res_layer[1].weight)
    assert not torch.equal(random_arcface(seed=1).body[5].res_layer[1].weight, net.body[5].res_layer[1].weight)
    assert net.provenance == "random(seed=0, layers=50)"
    assert random_arcface(0, num_layers=4)(torch.zeros(1, 3, 112, 112)).shape == (1, 512)


def test_strict_load_roundtrip(net, tmp_path):
    path = tmp_path / "model_ir_se50.pth"
    torch.save(net.state_dict(), path)
    loaded = load_arcface(path, "cpu")
    assert isinstance(loaded, IRSE50) and not loaded.training
    assert loaded.provenance.startswith("model_ir_se50.pth sha256:") and len(loaded.provenance.split(":")[1]) == 64
    x = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(2)) * 2 - 1
    torch.testing.assert_close(loaded(x), net(x), atol=0, rtol=0)
    torch.save({"output_layer.3.bias": torch.zeros(512)}, path)  # a foreign/partial state_dict
    with pytest.raises(RuntimeError, match="not an IR-SE50"):
        load_arcface(path, "cpu")
    with pytest.raises(FileNotFoundError, match="model_ir_se50.pth"):
        load_arcface(tmp_path / "nope.pth", "cpu")
