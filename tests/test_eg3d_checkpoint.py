"""Restricted EG3D pickle loading, G_ema extraction/conversion, and goae's safetensors+JSON checkpoints.

The EG3D-like pickle is built here with NVIDIA's record structure (torch_utils/persistence.py): persistent
classes reduce to `torch_utils.persistence._reconstruct_persistent_obj(meta)` with meta = {type, version,
module_src, class_name, state=__dict__}; other classes pickle by module path; tensors by plain pickle.
The fake `torch_utils`/`training`/`dnnlib` modules exist only while dumping.
"""
import contextlib
import copy
import hashlib
import importlib
import io
import json
import os
import pickle
import pickletools
import subprocess
import sys
import types
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch

from goae.eg3d.checkpoint import (PersistentRecord, UnsafePickleError, checkpoint_paths, convert_eg3d_pickle,
                                  extract_generator, load_checkpoint, load_eg3d_pickle, save_checkpoint)

EG3D_NAMESPACES = ("torch_utils", "training", "dnnlib")


# ------------------------------------------------------------------ an EG3D-shaped pickle, built here

def _reconstruct_persistent_obj(meta):  # stands in for NVIDIA's; the loader must never call it
    raise AssertionError("the pickled reconstruct function was called")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


class EasyDict(dict):  # dnnlib.util.EasyDict: a dict subclass pickled by module path
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name)

    def __setattr__(self, name, value):
        self[name] = value


class _Persistent(torch.nn.Module):
    """persistence.persistent_class's Decorator: records init args, pickles as (source, class name, state)."""
    _orig_module_src = ""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self._init_args, self._init_kwargs = copy.deepcopy(args), copy.deepcopy(kwargs)

    def __reduce__(self):
        fields = list(super().__reduce__()) + [None, None]   # (copyreg._reconstructor, args, __dict__)
        meta = dict(type="class", version=6, module_src=self._orig_module_src,
                    class_name=type(self).__name__, state=fields[2])
        return (_reconstruct_persistent_obj, (meta,), None)


class FullyConnectedLayer(_Persistent):
    def __init__(self, in_features, out_features, lr_multiplier=1.0):
        super().__init__(in_features, out_features, lr_multiplier=lr_multiplier)
        self.weight = torch.nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = torch.nn.Parameter(torch.zeros(out_features))
        self.weight_gain = lr_multiplier / np.sqrt(in_features)   # a numpy.float64, as in EG3D


class MappingNetwork(_Persistent):
    def __init__(self, w_dim, num_layers=1):
        super().__init__(w_dim, num_layers=num_layers)
        self.fc0 = FullyConnectedLayer(w_dim, w_dim)
        self.register_buffer("w_avg", torch.zeros(w_dim))


class Backbone(_Persistent):
    def __init__(self, w_dim, mapping_kwargs):
        super().__init__(w_dim, mapping_kwargs=mapping_kwargs)
        self.mapping = MappingNetwork(w_dim, **mapping_kwargs)
        self.const = torch.nn.Parameter(torch.zeros(4, 2, 2))
        self.register_buffer("resample_filter", torch.zeros(4, 4))   # own buffer after own parameter


class MipRayMarcher2(torch.nn.Module):
    pass


class ImportanceRenderer(torch.nn.Module):   # not persistent: pickled by module path
    def __init__(self):
        super().__init__()
        self.ray_marcher = MipRayMarcher2()
        self.plane_axes = torch.eye(3)[None].repeat(3, 1, 1)   # a plain tensor attribute, not a buffer


class OSGDecoder(torch.nn.Module):
    def __init__(self, n_features, lr_mul):
        super().__init__()
        self.net = torch.nn.Sequential(FullyConnectedLayer(n_features, 8, lr_multiplier=lr_mul),
                                       torch.nn.Softplus(), FullyConnectedLayer(8, 5, lr_multiplier=lr_mul))


class TriPlaneGenerator(_Persistent):
    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs={}, rendering_kwargs={},
                 **synthesis_kwargs):
        super().__init__(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                         img_channels=img_channels, mapping_kwargs=mapping_kwargs,
                         rendering_kwargs=rendering_kwargs, **synthesis_kwargs)
        self.z_dim, self.w_dim = z_dim, w_dim
        self.renderer = ImportanceRenderer()
        self.backbone = Backbone(w_dim, mapping_kwargs)
        self.decoder = OSGDecoder(4, rendering_kwargs["decoder_lr_mul"])
        self.register_buffer("scratch", torch.zeros(2), persistent=False)   # never in state_dict()
        self.neural_rendering_resolution = 64
        self.rendering_kwargs = rendering_kwargs
        self._last_planes = None


_FAKES = {"torch_utils.persistence": {"_reconstruct_persistent_obj": _reconstruct_persistent_obj},
          "training.volumetric_rendering.renderer": {"ImportanceRenderer": ImportanceRenderer},
          "training.volumetric_rendering.ray_marcher": {"MipRayMarcher2": MipRayMarcher2},
          "training.triplane": {"OSGDecoder": OSGDecoder},
          "dnnlib.util": {"EasyDict": EasyDict}}
for _mod, _attrs in _FAKES.items():
    for _name, _obj in _attrs.items():
        _obj.__module__, _obj.__qualname__ = _mod, _name
RENDERING_KWARGS = dict(image_resolution=16, decoder_lr_mul=1.0, ray_start=2.25, ray_end=3.3,
                        superresolution_module="training.superresolution.SuperresolutionHybrid8XDC",
                        avg_camera_pivot=[0, 0, 0.2])
INIT_KWARGS = dict(z_dim=8, c_dim=25, w_dim=8, img_resolution=16, img_channels=3,
                   mapping_kwargs=EasyDict(num_layers=1), rendering_kwargs=RENDERING_KWARGS, conv_clamp=None,
                   channel_base=64, sr_kwargs=EasyDict(channel_max=8))


@contextlib.contextmanager
def _fake_eg3d_modules():
    names = {".".join(m.split(".")[:i + 1]) for m in _FAKES for i in range(m.count(".") + 1)}
    assert not names & set(sys.modules)
    try:
        for n in names:
            sys.modules[n] = types.ModuleType(n)
        for mod, attrs in _FAKES.items():
            vars(sys.modules[mod]).update(attrs)
        yield
    finally:
        for n in names:
            sys.modules.pop(n, None)


def _dumps(obj, protocol=4) -> bytes:
    with _fake_eg3d_modules():
        return pickle.dumps(obj, protocol=protocol)


def _fill(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict().values():
            t.copy_(torch.randn(t.shape, generator=g))


def _generator(seed):
    G = TriPlaneGenerator(**INIT_KWARGS)
    G.register_buffer("dataset_label_std", torch.zeros(25))   # as training_loop.py:159 does
    _fill(G, seed)
    return G.eval().requires_grad_(False)


def _snapshot(G_ema):
    D = FullyConnectedLayer(3, 1)
    _fill(D, 7)
    return dict(G=_generator(1), D=D, G_ema=G_ema, augment_pipe=None,
                training_set_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="ffhq.zip",
                                         use_labels=True, xflip=True, resolution=16))


@pytest.fixture
def evil_src(tmp_path, monkeypatch):
    marker = tmp_path / "src_was_executed"
    monkeypatch.setattr(_Persistent, "_orig_module_src", f"import os\nos.system('touch {marker}')\n")
    return marker


def _no_eg3d_modules():
    return not [m for m in sys.modules if m.split(".")[0] in EG3D_NAMESPACES]


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_convert_eg3d_shaped_pickle(tmp_path, evil_src, protocol):
    G_ema = _generator(2)
    G_ema.neural_rendering_resolution = 128   # training_loop.py copies G's onto G_ema
    data = _dumps(_snapshot(G_ema), protocol)
    pkl = tmp_path / "ffhqrebalanced512-128.pkl"
    pkl.write_bytes(data + b"tail")   # bytes after STOP still count in the file's sha256 and size
    # The file really has NVIDIA's structure (names are strings in the opcode stream).
    strings = {a for _, a, _ in pickletools.genops(data) if isinstance(a, str)}
    for s in ("_reconstruct_persistent_obj", "ImportanceRenderer", "_rebuild_tensor_v2", "_load_from_bytes",
              "_rebuild_parameter", "module_src", "_init_kwargs", "_parameters", "_buffers", "_modules"):
        assert any(s in x for x in strings), s
    assert _no_eg3d_modules()

    cfg = convert_eg3d_pickle(pkl, tmp_path / "out" / "gen.safetensors")
    assert not evil_src.exists() and _no_eg3d_modules()

    expected = G_ema.state_dict()
    tensors, meta = extract_generator(load_eg3d_pickle(pkl))
    assert list(tensors) == list(expected)                     # official keys, state_dict() order
    assert "scratch" not in tensors and "renderer.plane_axes" not in tensors
    assert meta["buffers"] == ["dataset_label_std", "backbone.resample_filter", "backbone.mapping.w_avg"]
    for k, v in expected.items():
        assert tensors[k].dtype == torch.float32 and torch.equal(tensors[k], v), k
    loaded, cfg2 = load_checkpoint(tmp_path / "out" / "gen")
    assert cfg2 == cfg and set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    assert not torch.equal(loaded["backbone.const"], _generator(1).backbone.const)   # G_ema, not G

    assert cfg["init_kwargs"] == json.loads(json.dumps(INIT_KWARGS)) and cfg["init_args"] == []
    assert cfg["init_kwargs_source"] == "_init_kwargs"
    assert cfg["rendering_kwargs"] == RENDERING_KWARGS and cfg["rendering_kwargs_source"] == "attribute"
    assert cfg["neural_rendering_resolution"] == 128 and cfg["neural_rendering_resolution_source"] == "attribute"
    assert cfg["extra_buffers"] == ["dataset_label_std"]
    assert cfg["class_name"] == "TriPlaneGenerator" and cfg["attributes"]["z_dim"] == 8
    prov = cfg["provenance"]
    assert prov["source"] == pkl.name and prov["size"] == len(data) + 4
    assert prov["sha256"] == hashlib.sha256(data + b"tail").hexdigest()
    assert prov["converted_by"] == "goae" and prov["key"] == "G_ema" and prov["persistence_version"] == 6
    src_sha = hashlib.sha256(_Persistent._orig_module_src.encode()).hexdigest()
    assert prov["module_src_sha256"] == {n: src_sha for n in ("TriPlaneGenerator", "Backbone", "MappingNetwork",
                                                             "FullyConnectedLayer")}
    for c in ("TriPlaneGenerator (persistent)", "training.volumetric_rendering.renderer.ImportanceRenderer",
              "training.triplane.OSGDecoder", "torch.nn.modules.activation.Softplus"):
        assert c in prov["classes"], c
    assert "torch_utils.persistence._reconstruct_persistent_obj" in prov["pickle_globals"]


def test_records_are_inert_and_complete(tmp_path, evil_src):
    obj = load_eg3d_pickle(io.BytesIO(_dumps(_snapshot(_generator(2)))))
    assert set(obj) == {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}
    g = obj["G_ema"]
    assert isinstance(g, PersistentRecord) and g.class_name == "TriPlaneGenerator" and g.version == 6
    assert g.module_src == _Persistent._orig_module_src and not evil_src.exists()
    fc = g.state["_modules"]["decoder"].state["_modules"]["net"].state["_modules"]["0"]
    assert type(fc.state["weight_gain"]) is float and fc.state["weight_gain"] == pytest.approx(0.5)  # numpy f8
    assert torch.equal(g.state["_modules"]["renderer"].state["plane_axes"], torch.eye(3)[None].repeat(3, 1, 1))
    assert obj["training_set_kwargs"]["path"] == "ffhq.zip" and obj["augment_pipe"] is None


def test_missing_resolution_falls_back_to_64(tmp_path, evil_src):
    G_ema = _generator(2)
    del G_ema.neural_rendering_resolution
    with pytest.warns(UserWarning, match="neural_rendering_resolution"):
        _, meta = extract_generator(load_eg3d_pickle(io.BytesIO(_dumps(_snapshot(G_ema)))))
    assert meta["neural_rendering_resolution"] == 64 and meta["neural_rendering_resolution_source"] == "default"


# ------------------------------------------------------------------------------- malicious pickles

class _Call:
    """Pickles as func(*args): the classic pickle payload."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    return {
        "posix.system": pickle.dumps(_Call(os.system, f"touch {marker}")),
        "builtins.exec": pickle.dumps(_Call(exec, f"open({str(marker)!r}, 'w').close()")),
        "builtins.eval": pickle.dumps(_Call(eval, f"open({str(marker)!r}, 'w')")),
        "subprocess.Popen": pickle.dumps(_Call(subprocess.Popen, ["touch", str(marker)])),
        "os.system": f"cos\nsystem\n(S'touch {marker}'\ntR.".encode(),              # hand-written, protocol 0
        "builtins.getattr": b"cbuiltins\ngetattr\n(cbuiltins\nobject\nS'__subclasses__'\ntR.",
        "importlib.import_module": pickle.dumps(_Call(importlib.import_module, "os")),
    }


def test_payloads_are_live(tmp_path):
    """Control: the stdlib unpickler does run such a payload (so the refusals below mean something)."""
    control = tmp_path / "control"
    pickle.Unpickler(io.BytesIO(_payloads(control)["builtins.exec"])).load()
    assert control.exists()


@pytest.mark.parametrize("name", list(_payloads("x")))
def test_malicious_pickle_refused(tmp_path, name):
    marker = tmp_path / "pwned"
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(_payloads(marker)[name])
    with pytest.raises(UnsafePickleError, match=name.replace(".", r"\.")):
        convert_eg3d_pickle(pkl, tmp_path / "out")
    assert not marker.exists()
    assert not any(p.exists() for p in checkpoint_paths(tmp_path / "out"))


def test_global_alone_refused():
    with pytest.raises(UnsafePickleError, match=r"subprocess\.Popen"):
        load_eg3d_pickle(io.BytesIO(pickle.dumps(subprocess.Popen)))


@pytest.mark.parametrize("where", ["module_attribute", "init_kwargs", "meta_state"])
def test_payload_nested_in_valid_record_refused(tmp_path, evil_src, where):
    marker = tmp_path / "pwned"
    evil = _Call(subprocess.Popen, ["touch", str(marker)])
    G_ema = _generator(2)
    if where == "module_attribute":
        G_ema.renderer.ray_marcher.note = evil                     # inside a by-path module's BUILD state
    elif where == "init_kwargs":
        G_ema._init_kwargs["rendering_kwargs"] = {**RENDERING_KWARGS, "x": evil}
    else:
        G_ema.backbone.mapping.fc0.hook = [1, evil]                # inside a persistent record's state
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(_dumps(_snapshot(G_ema)))
    with pytest.raises(UnsafePickleError, match=r"subprocess\.Popen"):
        convert_eg3d_pickle(pkl, tmp_path / "out")
    assert not marker.exists() and not evil_src.exists() and _no_eg3d_modules()


def _storage(t):  # a TypedStorage, which pickles as torch.storage._load_from_bytes (legacy torch.save blob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return t.storage()


def _rebuild(*args):
    return pickle.dumps(_Call(torch._utils._rebuild_tensor_v2, *args), protocol=4)


@pytest.mark.parametrize("blob, match", [
    # REDUCE whose callable is not whitelisted (a stub instance): GLOBAL stub, NEWOBJ, then call it.
    (b"\x80\x02ctraining.x\nFoo\n)\x81)R.", "not a whitelisted callable"),
    # BUILD on something that is not a stub instance.
    (b"\x80\x02ccollections\nOrderedDict\n)R}X\x01\x00\x00\x00aK\x01sb.", "refused BUILD"),
    # NEWOBJ of a whitelisted but non-stub class.
    (b"\x80\x02ccollections\nOrderedDict\n)\x81.", "refused NEWOBJ"),
    # Tensor rebuilt from something that is not a storage, and a view past the end of its storage.
    (_rebuild("not a storage", 0, (1,), (1,), False, OrderedDict()), "not a storage"),
    (_rebuild(_storage(torch.arange(3.0)), 2, (2,), (1,), False, OrderedDict()), "exceeds its storage"),
    # A storage blob that is itself a malicious pickle: torch.load(weights_only=True) refuses it.
    (pickle.dumps(_Call(torch.storage._load_from_bytes, pickle.dumps(_Call(os.system, "true"), protocol=2))),
     "weights_only"),
    # Persistent ids (torch.save's zip format uses them; plain EG3D pickles do not).
    (b"\x80\x02X\x01\x00\x00\x00aQ.", "persistent id"),
])
def test_handcrafted_refusals(blob, match):
    with pytest.raises(UnsafePickleError, match=match):
        load_eg3d_pickle(io.BytesIO(blob))


def test_valid_tensor_view_rebuilds():
    base = torch.arange(6.0)
    t = load_eg3d_pickle(io.BytesIO(_rebuild(_storage(base), 1, (2, 2), (2, 1), False, OrderedDict())))
    assert torch.equal(t, base[1:5].view(2, 2))


# ------------------------------------------------------------------------------- our checkpoints

def test_checkpoint_roundtrip(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 3, generator=g)
    tensors = {"a": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g).to(torch.bfloat16),
               "c": torch.arange(7), "t": base.t(), "s0": base[:2], "s1": base[2:]}
    tensors["tied"] = tensors["a"]   # the same tensor twice: safetensors refuses shared memory
    config = {"step": 3, "nested": {"x": [1.5, None, "y"]}, "flag": True}
    st, js = save_checkpoint(tmp_path / "ck" / "model.safetensors", tensors, config)
    assert (st.name, js.name) == ("model.safetensors", "model.json")
    for prefix in (tmp_path / "ck" / "model", str(tmp_path / "ck" / "model.json")):
        out, cfg = load_checkpoint(prefix, device="cpu")
        assert cfg == config and set(out) == set(tensors)
        for k, v in tensors.items():
            assert out[k].dtype == v.dtype and torch.equal(out[k], v), k
    assert sorted(os.listdir(tmp_path / "ck")) == ["model.json", "model.safetensors"]


def test_checkpoint_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_checkpoint(tmp_path / "nope")
    save_checkpoint(tmp_path / "m", {"a": torch.ones(1)}, {})
    (tmp_path / "m.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"m\.json"):
        load_checkpoint(tmp_path / "m")


def test_checkpoint_atomic_on_error(tmp_path):
    with pytest.raises(TypeError, match="bad keys"):
        save_checkpoint(tmp_path / "m", {"a": torch.ones(1), "b": [1.0]}, {})
    assert os.listdir(tmp_path) == []
    save_checkpoint(tmp_path / "m", {"a": torch.ones(2)}, {"v": 1})
    before = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)}
    # Fails mid-way: the tensors temp file is already written when the config turns out not to be JSON.
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "m", {"a": torch.zeros(2)}, {"v": object()})
    assert {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)} == before
    out, cfg = load_checkpoint(tmp_path / "m")
    assert cfg == {"v": 1} and torch.equal(out["a"], torch.ones(2))
