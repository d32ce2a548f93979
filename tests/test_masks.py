import pytest
import torch
from torch import nn

from goae.masks import BiSeNetMask, DepthThresholdMask, MaskProvider, build_mask_provider
from goae.nets.bisenet import CLASSES, build_bisenet


def test_bisenet_shapes_and_reference_key_names():
    net = build_bisenet(seed=0)
    assert net.provenance == "random(seed=0)" and not net.training
    assert len(CLASSES) == 19 and CLASSES[0] == "background" and CLASSES[16] == "cloth"
    keys = set(net.state_dict())
    # names of the face-parsing.PyTorch layout (a self-defined key set: it cannot prove the real file loads)
    for k in ("cp.resnet.conv1.weight", "cp.resnet.layer2.0.downsample.0.weight", "cp.resnet.layer4.1.bn2.running_var",
              "cp.arm16.conv.conv.weight", "cp.arm32.conv_atten.weight", "cp.arm32.bn_atten.bias",
              "cp.conv_head32.conv.weight", "cp.conv_head16.bn.weight", "cp.conv_avg.conv.weight",
              "ffm.convblk.conv.weight", "ffm.conv1.weight", "ffm.conv2.weight",
              "conv_out.conv.conv.weight", "conv_out.conv_out.weight", "conv_out16.conv_out.weight",
              "conv_out32.conv.bn.running_mean"):
        assert k in keys, k
    assert not any(k.endswith("conv_out.bias") or k.startswith("sp.") for k in keys)
    assert net.conv_out.conv_out.weight.shape == (19, 256, 1, 1)
    assert net.conv_out16.conv_out.weight.shape == (19, 64, 1, 1)
    x = torch.randn(1, 3, 64, 48)
    main, a16, a32 = net(x)
    assert main.shape == a16.shape == a32.shape == (1, 19, 64, 48)
    torch.testing.assert_close(net.parse(x), main)


def test_bisenet_strict_loading(tmp_path):
    src = build_bisenet(seed=1)
    sd = {"module." + k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "79999_iter.pth")
    net = build_bisenet(tmp_path / "79999_iter.pth")
    assert net.provenance.startswith("79999_iter.pth sha256:") and len(net.provenance.split(":")[1]) == 64
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(net.parse(x), src.parse(x))
    bad = dict(sd)
    bad.pop("module.ffm.conv1.weight")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError):
        build_bisenet(tmp_path / "bad.pth")
    bad = dict(sd, extra=torch.zeros(1))
    torch.save(bad, tmp_path / "bad2.pth")
    with pytest.raises(RuntimeError):
        build_bisenet(tmp_path / "bad2.pth")
    with pytest.raises(FileNotFoundError):
        build_bisenet(tmp_path / "missing.pth")


class _FixedParser(nn.Module):
    """Stand-in parser: label = column index // 4 (so classes 0..3 across a 16-wide image)."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def parse(self, x):
        B, _, H, W = x.shape
        lab = (torch.arange(W) // (W // 4)).expand(B, H, W)
        return nn.functional.one_hot(lab, 19).permute(0, 3, 1, 2).float()


def test_bisenet_mask_background_rule():
    m = BiSeNetMask(size=16)
    assert isinstance(m, MaskProvider) and m.weights == "random(seed=0)"
    real = m.background(torch.zeros(2, 3, 40, 24))
    assert real.shape == (2, 1, 40, 24) and set(real.unique().tolist()) <= {0.0, 1.0}
    m.net = _FixedParser()
    bg = m.background(torch.zeros(1, 3, 32, 32))  # parsed at 16², back to 32² (nearest)
    expect = torch.zeros(1, 1, 32, 32)
    expect[..., :8] = 1                            # only class 0 is background by default
    torch.testing.assert_close(bg, expect)
    m.background_classes = (0, 2)
    assert m.background(torch.zeros(1, 3, 16, 16))[0, 0, 0].tolist() == [1] * 4 + [0] * 4 + [1] * 4 + [0] * 4


def test_depth_threshold_mask():
    dm = build_mask_provider("depth", threshold=3.0, opacity_min=0.5)
    assert dm.name == "depth" and "none" in dm.weights
    depth = torch.tensor([[[[2.5, 3.0], [3.2, 2.0]]]])
    opac = torch.tensor([[[[0.9, 0.9], [0.9, 0.1]]]])
    torch.testing.assert_close(dm.background_from_render(depth, opac), torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]]))
    only_depth = DepthThresholdMask(threshold=3.0)
    torch.testing.assert_close(only_depth.background_from_render(depth), torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]]))
    with pytest.raises(ValueError):
        dm.background_from_render(depth)
    with pytest.raises(NotImplementedError):
        dm.background(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError):
        DepthThresholdMask()
    with pytest.raises(ValueError):
        build_mask_provider("sam")


def test_selfie_segmentation_on_a_real_photo():
    pytest.importorskip("mediapipe")
    skdata = pytest.importorskip("skimage.data")
    sm = build_mask_provider("selfie")
    try:
        assert sm.name == "selfie" and "selfie_segmentation.tflite sha256:" in sm.weights
        img = torch.from_numpy(skdata.astronaut()).permute(2, 0, 1)[None].float() / 127.5 - 1  # 512², a person
        img = nn.functional.interpolate(img, (128, 128), mode="area")
        bg = sm.background(torch.cat([img, img.flip(-1)]))
        assert bg.shape == (2, 1, 128, 128) and set(bg.unique().tolist()) <= {0.0, 1.0}
        assert 0.2 < bg.mean().item() < 0.8
        assert bg[:, 0, 64, 64].tolist() == [0.0, 0.0]          # face (centre) is foreground
        assert (bg[0] == bg[1].flip(-1)).float().mean() > 0.9   # mirror image: about the mirrored mask
    finally:
        sm.close()
