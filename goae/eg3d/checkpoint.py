"""NVIDIA EG3D network pickles -> safetensors + JSON without NVIDIA code; goae's own checkpoint files.

Loading an EG3D `.pkl` the official way imports the EG3D tree and `exec`s the module source embedded in
every persistent class (torch_utils/persistence.py, `_reconstruct_persistent_obj`). Here the pickle runs
on a pickle VM whose every import, call and BUILD is whitelisted:
- persistent objects become inert `PersistentRecord`s (their source is a string that is only hashed);
- other classes of the EG3D tree (`training.`, `torch_utils.`, `dnnlib.`), `torch.nn.modules.*` and the
  few numpy names EG3D state holds (`weight_gain = lr / np.sqrt(n)` is a numpy scalar) become
  `InertObject`s that only store what pickle hands them;
- tensor storages (`torch.storage._load_from_bytes`, a legacy torch.save blob) are read by
  `torch.load(weights_only=True)`; views are rebuilt with bounds checks.
Anything else (os.system, builtins.eval, subprocess.Popen, ...) raises `UnsafePickleError` before it runs.
"""
import _compat_pickle
import collections
import dataclasses
import hashlib
import io
import json
import os
import pickle
import struct
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

STUB_NAMESPACES = ("training", "torch_utils", "dnnlib")   # EG3D's own code tree
EXTRA_BUFFERS = ("dataset_label_std",)                    # registered by training_loop.py, not by the class


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something outside the whitelist; nothing it asked for was run."""


# ------------------------------------------------------------------------------------ inert records

@dataclasses.dataclass(eq=False)
class PersistentRecord:
    """A `persistence.persistent_class` instance: its meta dict, with the module source never executed."""
    class_name: str
    version: Any
    module_src: str
    module_src_sha256: str
    state: dict           # the object's __dict__: _parameters, _buffers, _modules, _init_args, ...


class InertObject:
    """An instance of a stubbed class: its pickle path and whatever pickle passed to it, no behaviour."""

    def __init__(self, path: str, args=(), kwargs=None):
        self.path, self.args, self.kwargs = path, tuple(args), dict(kwargs or {})
        self.state, self.items, self.list = None, {}, []

    # SETITEMS/APPENDS target these on dict/list subclasses (dnnlib.EasyDict is a dict subclass).
    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.list.append(value)

    def extend(self, values):
        self.list.extend(values)

    def __repr__(self):
        return f"InertObject({self.path})"


class InertClass:
    """What a stubbed class name resolves to. Not callable: the VM's REDUCE/NEWOBJ make the InertObject."""

    def __init__(self, path: str):
        self.path = path

    def new(self, args=(), kwargs=None) -> InertObject:
        return InertObject(self.path, args, kwargs)

    def __repr__(self):
        return f"InertClass({self.path})"


# ------------------------------------------------------------- safe stand-ins for whitelisted names

def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise UnsafePickleError("persistent object meta is not a {'type': 'class', ...} dict")
    src, name, state = meta.get("module_src"), meta.get("class_name"), meta.get("state")
    if not (isinstance(src, str) and isinstance(name, str) and isinstance(state, dict)):
        raise UnsafePickleError(f"malformed persistent object meta for {name!r}")
    return PersistentRecord(name, meta.get("version"), src, hashlib.sha256(src.encode()).hexdigest(), dict(state))


def _load_storage(data):
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError(f"storage blob is {type(data).__name__}, not bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # TypedStorage / legacy-format deprecation notes
            storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafePickleError(f"tensor storage blob refused by torch.load(weights_only=True): {e}") from e
    except Exception as e:
        raise pickle.UnpicklingError(f"unreadable tensor storage blob: {e}") from e
    if not isinstance(storage, torch.storage.TypedStorage):
        raise UnsafePickleError(f"storage blob held a {type(storage).__name__}, not a storage")
    return storage


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    if not isinstance(storage, torch.storage.TypedStorage):
        raise UnsafePickleError(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
    size, stride = tuple(size), tuple(stride)
    ints = (offset, *size, *stride)
    if any(type(v) is not int or v < 0 for v in ints) or len(size) != len(stride):
        raise UnsafePickleError(f"bad tensor geometry: offset {offset}, size {size}, stride {stride}")
    if hooks or metadata:
        raise UnsafePickleError("tensor carries backward hooks or metadata")
    untyped = storage._untyped_storage
    numel = untyped.nbytes() // storage.dtype.itemsize
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= numel:   # Tensor.set_ does not check this: an unchecked view would read past the storage
        raise UnsafePickleError(f"tensor view (offset {offset}, size {size}, stride {stride}) "
                                f"exceeds its storage of {numel} elements")
    return torch.empty(0, dtype=storage.dtype).set_(untyped, offset, size, stride)


def _rebuild_tensor_v1(storage, offset, size, stride):
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    # Returns the plain tensor: parameter vs buffer is known from where the walker finds it.
    if not isinstance(data, torch.Tensor) or hooks:
        raise UnsafePickleError("parameter without tensor data, or with backward hooks")
    return data


def _codecs_encode(text, encoding="utf-8"):
    # Protocols < 3 store bytes as _codecs.encode(latin-1 str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode is allowed only as latin-1 bytes")
    return text.encode("latin1")


def _reconstructor(cls, base, state):
    # copyreg._reconstructor: how protocols 0/1 pickle plain objects and dict subclasses.
    if not isinstance(cls, InertClass) or base not in (object, dict) or (base is object and state is not None):
        raise UnsafePickleError(f"copyreg._reconstructor refused for {cls!r} on {base!r}")
    obj = cls.new()
    if base is dict and state:
        obj.items.update(state)
    return obj


_NUMPY_FORMATS = {"f8": "d", "f4": "f", "f2": "e", "i8": "q", "i4": "i", "i2": "h", "i1": "b",
                  "u8": "Q", "u4": "I", "u2": "H", "u1": "B", "b1": "?"}


def _numpy_scalar(dtype, data=None):
    # numpy scalars pickle as scalar(dtype(code, False, True) + BUILD (3, byteorder, ...), raw bytes).
    if isinstance(dtype, InertObject) and dtype.path == "numpy.dtype" and dtype.args and isinstance(data, bytes):
        fmt = _NUMPY_FORMATS.get(dtype.args[0])
        order = ">" if isinstance(dtype.state, tuple) and len(dtype.state) > 1 and dtype.state[1] == ">" else "<"
        if fmt and struct.calcsize(order + fmt) == len(data):
            return struct.unpack(order + fmt, data)[0]
    return InertObject("numpy.scalar", (dtype, data))


_SAFE = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor_v1,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}
_CALLABLES = tuple(_SAFE.values())
# Plain values (never callable by the VM): copyreg._reconstructor bases and torch dtypes.
_VALUES = {("builtins", "object"): object, ("builtins", "dict"): dict,
           **{("torch", n): getattr(torch, n) for n in ("float64", "float32", "float16", "bfloat16", "int64",
                                                        "int32", "int16", "int8", "uint8", "bool")}}
_NUMPY_STUBS = {("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct")}


def _is_stub(module: str, name: str) -> bool:
    return (module.split(".")[0] in STUB_NAMESPACES or module.startswith("torch.nn.modules.")
            or (module, name) in _NUMPY_STUBS)


def _describe(obj) -> str:
    return getattr(obj, "path", None) or f"{type(obj).__module__}.{type(obj).__qualname__} instance"


# ------------------------------------------------------------------------------------ the pickle VM

class RestrictedUnpickler(pickle._Unpickler):
    """Pure-Python pickle VM with whitelisted find_class, REDUCE, NEWOBJ, INST/OBJ and BUILD.

    The pure-Python VM (not the C one) so that every opcode that calls or mutates an object is ours.
    `globals_seen` lists every `module.name` the file imported, for provenance.
    """
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file):
        super().__init__(file)
        self.globals_seen: set[str] = set()
        self._classes: dict[str, InertClass] = {}

    def find_class(self, module, name):
        sys.audit("pickle.find_class", module, name)
        if self.proto < 3 and self.fix_imports:   # Python-2 names, as the stdlib maps them
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        path = f"{module}.{name}"
        if (module, name) in _SAFE:
            obj = _SAFE[(module, name)]
        elif (module, name) in _VALUES:
            obj = _VALUES[(module, name)]
        elif _is_stub(module, name):
            obj = self._classes.setdefault(path, InertClass(path))
        else:
            raise UnsafePickleError(f"refused pickle global '{path}': not on the EG3D whitelist")
        self.globals_seen.add(path)
        return obj

    def persistent_load(self, pid):
        raise UnsafePickleError("refused persistent id: plain EG3D pickles have none")

    def _call(self, func, args, kwargs=None):
        if not isinstance(args, tuple) or not isinstance(kwargs or {}, dict):
            raise UnsafePickleError("call arguments are not a tuple/dict")
        if isinstance(func, InertClass):
            return func.new(args, kwargs)
        if any(func is f for f in _CALLABLES):
            return func(*args, **(kwargs or {}))
        raise UnsafePickleError(f"refused call of {_describe(func)}: not a whitelisted callable")

    def _new(self, cls, args, kwargs=None):
        if not isinstance(cls, InertClass):
            raise UnsafePickleError(f"refused NEWOBJ of {_describe(cls)}: only stubbed classes are built")
        return self._call(cls, args, kwargs)

    def load_reduce(self):
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)
    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args))
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def _instantiate(self, klass, args):   # INST / OBJ (protocols 0/1)
        self.append(self._call(klass, tuple(args)))

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, InertObject):
            raise UnsafePickleError(f"refused BUILD on {_describe(inst)}: only stub instances take state")
        inst.state = state
    dispatch[pickle.BUILD[0]] = load_build

    def _refuse_ext(self):
        raise UnsafePickleError("refused EXT opcode (copyreg extension registry)")
    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse_ext
    del _op


class _HashingReader:
    """File wrapper that hashes and counts every byte the VM reads (one pass over a large file)."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def _seen(self, b):
        self.sha.update(b)
        self.size += len(b)
        return b

    def read(self, n=-1):
        return self._seen(self.f.read(n))

    def readline(self):
        return self._seen(self.f.readline())


def load_eg3d_pickle(src) -> Any:
    """Unpickle an EG3D network pickle (path or binary file) into inert records. Executes nothing."""
    if isinstance(src, (str, os.PathLike)):
        with open(src, "rb") as f:
            return RestrictedUnpickler(f).load()
    return RestrictedUnpickler(src).load()


# ------------------------------------------------------------------------------ G_ema -> state dict

def _node_state(node) -> dict:
    if isinstance(node, PersistentRecord):
        return node.state
    if isinstance(node, InertObject):
        st = node.state
        if isinstance(st, tuple) and len(st) == 2:   # (__dict__, slots) form of BUILD
            st = {**(st[0] or {}), **(st[1] or {})}
        return st if isinstance(st, dict) else {}
    raise ValueError(f"expected a pickled module, got {type(node).__name__}")


def _as_dict(x, where: str) -> dict:
    if x is None:
        return {}
    if isinstance(x, dict):
        return x
    raise ValueError(f"{where} is a {type(x).__name__}, not a dict")


def _walk(node, prefix, out, buffers, classes, srcs, active):
    """Module.state_dict()'s order: own parameters, own persistent buffers, then children in order."""
    if id(node) in active:
        raise ValueError(f"module cycle at {prefix or '<root>'}")
    active.add(id(node))
    state = _node_state(node)
    if isinstance(node, PersistentRecord):
        classes.add(f"{node.class_name} (persistent)")
        srcs[node.class_name] = node.module_src_sha256
    else:
        classes.add(node.path)
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for kind in ("_parameters", "_buffers"):
        for name, t in _as_dict(state.get(kind), f"{prefix}{kind}").items():
            if t is None or (kind == "_buffers" and name in skip):
                continue
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{prefix}{name} in {kind} is a {type(t).__name__}, not a tensor")
            out[prefix + name] = t
            if kind == "_buffers":
                buffers.append(prefix + name)
    for name, child in _as_dict(state.get("_modules"), f"{prefix}_modules").items():
        if child is not None:
            _walk(child, f"{prefix}{name}.", out, buffers, classes, srcs, active)
    active.discard(id(node))


def _plain(x, where: str):
    """JSON-able copy of pickled config data (EasyDict stubs -> dicts, tuples -> lists)."""
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(x)]
    if isinstance(x, (set, frozenset)):
        return sorted(_plain(v, where) for v in x)
    if isinstance(x, InertObject) and not x.args and x.state in (None, {}) and not x.list:
        return _plain(x.items, where)
    warnings.warn(f"{where}: {type(x).__name__} {getattr(x, 'path', '')} kept as its description only")
    return f"<{_describe(x) if not isinstance(x, PersistentRecord) else x.class_name}>"


def extract_generator(obj, key: str = "G_ema") -> tuple[dict[str, torch.Tensor], dict]:
    """State dict (official dotted keys, state_dict() order) and JSON-able meta of `obj[key]`.

    meta: class_name, init_args, init_kwargs (+ where found), rendering_kwargs, neural_rendering_resolution
    (+ source), buffers, extra_buffers (e.g. dataset_label_std: kept, our generator drops it on load),
    attributes (root scalars), classes, module_src_sha256, persistence_version.
    """
    if not isinstance(obj, dict) or key not in obj:
        raise KeyError(f"{key!r} not in the pickle (top-level: "
                       f"{sorted(obj) if isinstance(obj, dict) else type(obj).__name__})")
    root = obj[key]
    if not isinstance(root, (PersistentRecord, InertObject)):
        raise ValueError(f"{key} is a {type(root).__name__}, not a pickled network")
    tensors, buffers, classes, srcs = {}, [], set(), {}
    _walk(root, "", tensors, buffers, classes, srcs, set())
    state = _node_state(root)

    init_args, init_kwargs, init_src = [], None, None
    for a, k in (("_init_args", "_init_kwargs"), ("init_args", "init_kwargs")):  # persistence.py uses _init_*
        if a in state or k in state:
            init_args, init_kwargs = _plain(state.get(a) or (), a), _plain(state.get(k) or {}, k)
            init_src = k
            break
    if init_kwargs is None:
        warnings.warn(f"{key}: no _init_args/_init_kwargs in its state; the generator cannot be rebuilt from it")

    if state.get("rendering_kwargs") is not None:   # the attribute wins: training copies G's onto G_ema
        rk, rk_src = _plain(state["rendering_kwargs"], "rendering_kwargs"), "attribute"
    else:
        rk = (init_kwargs or {}).get("rendering_kwargs")
        rk_src = "init_kwargs" if rk is not None else None
    nrr, nrr_src = state.get("neural_rendering_resolution"), "attribute"
    if not (type(nrr) is int and nrr > 0):
        nrr, nrr_src = (rk or {}).get("neural_rendering_resolution"), "rendering_kwargs"
        if not (type(nrr) is int and nrr > 0):
            nrr, nrr_src = 64, "default"
            warnings.warn(f"{key}: no neural_rendering_resolution attribute; using TriPlaneGenerator's 64")

    attributes = {k: v for k, v in state.items() if not k.startswith("_") and k != "training"
                  and (v is None or isinstance(v, (bool, int, float, str)))}
    meta = dict(
        class_name=root.class_name if isinstance(root, PersistentRecord) else root.path,
        init_args=init_args, init_kwargs=init_kwargs, init_kwargs_source=init_src,
        rendering_kwargs=rk, rendering_kwargs_source=rk_src,
        neural_rendering_resolution=nrr, neural_rendering_resolution_source=nrr_src,
        buffers=buffers, extra_buffers=[b for b in EXTRA_BUFFERS if b in tensors],
        attributes=attributes, classes=sorted(classes), module_src_sha256=srcs,
        persistence_version=root.version if isinstance(root, PersistentRecord) else None)
    return tensors, meta


def convert_eg3d_pickle(pkl_path, out_prefix, key: str = "G_ema") -> dict:
    """EG3D `.pkl` -> `<out>.safetensors` (tensors as stored, contiguous) + `<out>.json`; returns the JSON."""
    pkl_path = Path(pkl_path)
    with open(pkl_path, "rb") as f:
        reader = _HashingReader(f)
        vm = RestrictedUnpickler(reader)
        obj = vm.load()
        while reader.read(1 << 20):   # trailing bytes after STOP still belong to the file's hash
            pass
    tensors, meta = extract_generator(obj, key)
    provenance = dict(source=pkl_path.name, sha256=reader.sha.hexdigest(), size=reader.size,
                      converted_by="goae", key=key, classes=meta.pop("classes"),
                      module_src_sha256=meta.pop("module_src_sha256"),
                      persistence_version=meta.pop("persistence_version"),
                      pickle_globals=sorted(vm.globals_seen), torch=torch.__version__)
    config = {**meta, "provenance": provenance}
    save_checkpoint(out_prefix, tensors, config)
    return config


# ------------------------------------------------------------------------- goae's own checkpoints

def checkpoint_paths(prefix) -> tuple[Path, Path]:
    """`<prefix>.safetensors`, `<prefix>.json`; a prefix given with either suffix is accepted."""
    p = Path(prefix)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _temp_beside(path: Path) -> str:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)   # mkstemp's 0600 would otherwise survive os.replace
    return tmp


def _fsync(path: str):
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_checkpoint(prefix, tensors: dict, config: dict) -> tuple[Path, Path]:
    """Write `<prefix>.safetensors` + `<prefix>.json` atomically (temp files + os.replace, JSON last).

    On any error nothing at the final paths changes and no temp file is left behind.
    """
    bad = [k for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"save_checkpoint: values must be tensors keyed by str; bad keys: {bad[:5]}")
    st_path, js_path = checkpoint_paths(prefix)
    st_path.parent.mkdir(parents=True, exist_ok=True)
    flat, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().to("cpu").contiguous()
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen and v.numel():   # safetensors refuses tensors that share memory
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        flat[k] = v
    tmps = []
    try:
        tmps.append(_temp_beside(st_path))
        safetensors.torch.save_file(flat, tmps[-1], metadata={"format": "pt"})
        _fsync(tmps[-1])
        tmps.append(_temp_beside(js_path))
        with open(tmps[-1], "w") as f:
            json.dump(config, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmps[0], st_path)
        os.replace(tmps[1], js_path)
    finally:
        for t in tmps:
            if os.path.exists(t):
                os.unlink(t)
    return st_path, js_path


def load_checkpoint(prefix, device="cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors on `device`, config) from `<prefix>.safetensors` + `<prefix>.json`."""
    st_path, js_path = checkpoint_paths(prefix)
    missing = [str(p) for p in (st_path, js_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {prefix}: missing {', '.join(missing)}")
    tensors = safetensors.torch.load_file(str(st_path), device=str(torch.device(device)))
    return tensors, json.loads(js_path.read_text())
