"""Each inversion fast path (goae.model.fast) against the exact GOAE.invert on CPU, tiny config.

Tolerances: exact FastPaths and the same draws -> bitwise equal; channels_last, batched modconv ->
max abs error 1e-4 of the tensor's range (rounding only: reordered fp32 sums; the tri-plane reaches |20|,
where 1e-4 absolute is ~40 ulps and an AMD EPYC CPU measured 1.04e-4); bf16/fp16 autocast -> the suite's STATED_LOWP_TOL (relative L2).
"""
import sys
from pathlib import Path

import pytest
import torch

from goae.config import GeneratorConfig, RuntimeConfig
from goae.data.world import build_embedded_generator
from goae.eg3d import camera as cam
from goae.model.afa import AFA, AFAConfig
from goae.model.encoder import Encoder, EncoderConfig
from goae.model.fast import FastInverter, FastPaths
from goae.model.goae import GOAE
from goae.train.common import feature_channels

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _tiny import TINY_GENERATOR  # noqa: E402
from gpu_suite import STATED_LOWP_TOL  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    G, _ = build_embedded_generator(GeneratorConfig(**TINY_GENERATOR))
    m = GOAE(G, Encoder(EncoderConfig.tiny()).eval(),
             AFA(AFAConfig.tiny(d_model=feature_channels(G), heads=4)).eval()).eval()
    img = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    c = cam.yaw_pitch_camera(torch.tensor([0.0, 0.4]), torch.tensor([0.0, -0.1]))
    ref = m.invert(img, c, generator=torch.Generator().manual_seed(5))
    return m, img, c, ref


def _run(m, img, c, fp):
    return FastInverter(m, fp)(img, c, generator=torch.Generator().manual_seed(5))


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_runtime_resolution_is_off_on_cpu():
    rt = RuntimeConfig()
    assert FastPaths.from_runtime(rt, "cpu").exact
    on = FastPaths.from_runtime(rt, "cpu", on_cpu=True)
    assert on.autocast == "bf16" and on.channels_last and on.batched_modconv and not on.cuda_graphs
    with pytest.raises(ValueError):
        FastPaths.from_runtime(RuntimeConfig(inv_autocast="int8"), "cpu", on_cpu=True)


def test_exact_fast_inverter_equals_invert(setup):
    m, img, c, ref = setup
    r = _run(m, img, c, FastPaths())
    for k in ("w_plus", "image", "depth", "planes_mix", "masks", "feat_star"):
        assert torch.equal(getattr(r, k), getattr(ref, k)), k
    with pytest.raises(ValueError, match="one instance per shape"):
        inv = FastInverter(m, FastPaths())
        inv(img, c)
        inv(img[:1], c[:1])


@pytest.mark.parametrize("fp", [FastPaths(channels_last=True), FastPaths(batched_modconv=True)],
                         ids=["channels_last", "batched_modconv"])
def test_layout_paths_within_rounding(setup, fp):
    m, img, c, ref = setup
    try:
        r = _run(m, img, c, fp)
    finally:
        from goae.model.fast import set_channels_last
        set_channels_last(m, False)
    for k in ("image", "depth", "planes_mix", "w_plus"):
        a, b = getattr(r, k), getattr(ref, k)
        assert (a - b).abs().max() <= 1e-4 * max(1.0, float(b.abs().max())), k
    assert torch.equal(r.masks, ref.masks)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_autocast_within_stated_tolerance(setup, dtype):
    m, img, c, ref = setup
    r = _run(m, img, c, FastPaths(autocast=dtype))
    tol = STATED_LOWP_TOL[dtype]
    for k in ("w_plus", "planes_wplus", "planes_fstar", "image", "depth"):
        assert _rel(getattr(r, k), getattr(ref, k)) <= tol[k], k
    assert (r.masks - ref.masks).abs().gt(0.5).float().mean() <= tol["mask_cells_flipped"]
    assert all(getattr(r, k).dtype == torch.float32 for k in ("w_plus", "image", "depth", "masks"))


def _host_watch(bad: list):
    """Dispatch mode recording what would stall a GPU or break a graph capture: .item()/nonzero and
    copies whose source lives on the CPU."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = str(func)
            if "_local_scalar_dense" in name or "nonzero" in name:
                bad.append(name)
            if "_to_copy" in name or name.startswith("aten.copy"):
                src = args[1] if name.startswith("aten.copy") else args[0]
                if isinstance(src, torch.Tensor) and src.device.type == "cpu":
                    bad.append(f"{name} from cpu")
            return func(*args, **kwargs)

    return Watch()


def test_mix_has_no_host_round_trips():
    """The visibility mask + mix with fake CUDA tensors: nothing recorded by _host_watch."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from goae.model.mix import MixConfig, occlusion_aware_mix

    bad = []
    with FakeTensorMode(allow_non_fake_inputs=False):
        dev = torch.device("cuda")
        B, M, H = 2, 64, 32
        pf, pw = torch.empty(B, 3, 4, H, H, device=dev), torch.empty(B, 3, 4, H, H, device=dev)
        depth = torch.empty(B, M, 1, device=dev)
        o, d = torch.empty(B, M, 3, device=dev), torch.empty(B, M, 3, device=dev)
        with _host_watch(bad):
            mix, masks = occlusion_aware_mix(pf, pw, depth, o, d, 1.0, MixConfig(), render_res=8)
    assert mix.shape == pf.shape and masks.shape == (B, 3, 1, H, H)
    assert not bad, bad


def test_fast_renderer_has_no_host_round_trips_after_warm_up():
    """The fast renderer on fake CUDA tensors: after one warm-up call (which caches the plane-axis
    table on the device) a render neither syncs nor copies host data."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from goae.data.world import ffhq_rendering_kwargs
    from goae.eg3d.renderer import ImportanceRenderer, OSGDecoder

    bad = []
    rk = ffhq_rendering_kwargs(6, 6, 128)
    R = ImportanceRenderer()  # real CPU plane axes, as in a model moved to the GPU
    R.axis_pairs("cpu")       # host-side table of the plane axes (computed once per renderer)
    with FakeTensorMode(allow_non_fake_inputs=True):
        dev = torch.device("cuda")
        with dev:
            dec = OSGDecoder(32)
        planes = torch.empty(1, 3, 32, 16, 16, device=dev)
        o, d = torch.empty(1, 64, 3, device=dev), torch.empty(1, 64, 3, device=dev)
        R(planes, dec, o, d, rk)  # warm-up
        with _host_watch(bad):
            rgb, depth, wsum = R(planes, dec, o, d, rk)
    assert rgb.shape == (1, 64, 32) and depth.shape == (1, 64, 1)
    assert not bad, bad
