"""Typed configuration for every `params.yaml` section, with strict validation.

`load_params(path)` parses the YAML into `Params` before any work happens: unknown keys, wrong types and
out-of-range values raise `ConfigError` naming the dotted key (e.g. `loss.lambda5`). Defaults are the
paper's values where the paper gives one (loss weights §4.5, schedule, D_avg sample count); the embedded
tiny world shrinks sizes, never the weights. Imports nothing else from goae.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import yaml


class ConfigError(ValueError):
    """A params value is wrong; the message names the dotted key."""


def _rng(lo=None, hi=None, choices=None):
    return {"min": lo, "max": hi, "choices": choices}


@dataclass
class DataConfig:
    source: Literal["embedded", "folders"] = "embedded"
    seed: int = field(default=0, metadata=_rng(0))
    # embedded tiny world (rendered by `ingest` with the embedded generator)
    n_train: int = field(default=64, metadata=_rng(1))
    n_celeba: int = field(default=8, metadata=_rng(1))
    n_mead_ids: int = field(default=4, metadata=_rng(1))
    mead_yaws_deg: list[float] = field(default_factory=lambda: [-60.0, -30.0, 0.0, 30.0, 60.0])
    train_yaw_deg: float = field(default=35.0, metadata=_rng(0, 90))
    train_pitch_deg: float = field(default=15.0, metadata=_rng(0, 60))
    photos: bool = True  # add the real photos installed packages ship (astronaut, grace_hopper)
    gap: float = field(default=0.0, metadata=_rng(0))  # teacher detail / clean plane spread (goae.data.teacher); 0 = G itself
    # user folders (source: folders)
    ffhq: Optional[str] = None
    celeba: Optional[str] = None
    mead: Optional[str] = None
    wild: Optional[str] = None


@dataclass
class GeneratorConfig:
    """The embedded generator (used when assets.generator is null and 'embedded' is allowed)."""
    seed: int = field(default=0, metadata=_rng(0))
    img_resolution: int = field(default=128, metadata=_rng(choices=[128, 256, 512]))  # official SR classes: 2X→128, 4X→256, 8XDC→512
    channel_base: int = field(default=1024, metadata=_rng(64))
    channel_max: int = field(default=32, metadata=_rng(8))
    neural_rendering_resolution: int = field(default=32, metadata=_rng(8))
    depth_resolution: int = field(default=12, metadata=_rng(2))
    depth_resolution_importance: int = field(default=12, metadata=_rng(0))
    w_avg_samples: int = field(default=2000, metadata=_rng(1))
    sr_channel_divisor: int = field(default=1, metadata=_rng(choices=[1, 2, 4, 8]))  # 1 = official SR widths


@dataclass
class AssetsConfig:
    """Paths of external weights (null = use a fallback, if allowed below)."""
    generator: Optional[str] = None
    goae_encoder: Optional[str] = None
    goae_afa: Optional[str] = None
    arcface: Optional[str] = None
    bisenet: Optional[str] = None
    swin: Optional[str] = None
    lpips_alexnet: Optional[str] = None
    lpips_vgg: Optional[str] = None     # PTI's LPIPS-VGG trunk (eval.optim_recipe: pti)
    inception: Optional[str] = None
    allow_fallbacks: list[str] = field(default_factory=lambda: ["embedded", "packaged", "random"])
    random_arcface: Literal["ir_se50", "tiny"] = "ir_se50"  # the 'random' ArcFace stand-in's size


@dataclass
class PrepareConfig:
    # 68-point landmarks for the camera: 'auto' = FAN when its weights are found, else dlib 68, else FaceMesh
    detector: Literal["auto", "fan", "dlib68", "mediapipe68", "mtcnn"] = "auto"
    fan_weights: Optional[str] = None      # face-alignment 2DFAN-4 file (else $GOAE_FAN_WEIGHTS / its cache)
    pose_depth: Literal["facemesh", "none"] = "facemesh"  # the face's own depth for the rotation (pose.fit_camera)
    output_size: int = field(default=512, metadata=_rng(64))
    min_face_px: int = field(default=32, metadata=_rng(1))
    flip: bool = False
    roll_align: bool = False
    mead_yaw: Literal["auto", "names", "camera"] = "auto"   # MEAD meta.json: yaw from camera names or fit (goae.data.mead)


@dataclass
class DavgConfig:
    n_samples: int = field(default=100_000, metadata=_rng(1))  # paper: 0.1 million canonical samples
    batch_size: int = field(default=16, metadata=_rng(1))
    seed: int = field(default=0, metadata=_rng(0))
    mask: Literal["depth", "selfie", "bisenet"] = "bisenet"    # paper: BiSeNet face parsing [52]
    opacity_min: float = field(default=0.5, metadata=_rng(0.0, 1.0))  # 'depth' mask: background = opacity below


@dataclass
class EncoderPreset:
    """Which goae.model.encoder.EncoderConfig preset (paper SwinV2-B or tiny) and the knobs it takes."""
    size: Literal["tiny", "paper"] = "paper"
    drop_path_rate: float = field(default=0.2, metadata=_rng(0.0, 1.0))
    schedule: list[int] = field(default_factory=lambda: [10000, 20000, 30000])


@dataclass
class AfaPreset:
    """Which goae.model.afa.AFAConfig preset; its width follows the generator's F."""
    size: Literal["tiny", "paper"] = "paper"


@dataclass
class LossConfig:
    lambda1: float = field(default=1.0, metadata=_rng(0.0))     # L2          (Eq. 10)
    lambda2: float = field(default=0.8, metadata=_rng(0.0))     # LPIPS       (Eq. 10)
    lambda3: float = field(default=0.25, metadata=_rng(0.0))    # ID          (Eq. 10)
    lambda4: float = field(default=0.05, metadata=_rng(0.0))    # L_adv^E     (Eq. 11)
    lambda5: float = field(default=5.0, metadata=_rng(0.0))     # L_BG        (Eq. 11)
    lambda6: float = field(default=0.001, metadata=_rng(0.0))   # L_w+        (§4.5)
    lambda7: float = field(default=0.0001, metadata=_rng(0.0))  # L_ΔF        (§4.5)
    r1_gamma: float = field(default=10.0, metadata=_rng(0.0))   # R1 weight γ (Eq. 2)
    r1_interval: int = field(default=16, metadata=_rng(1))      # lazy R1 (e4e d_reg_every)
    d_rows: Literal["all", "base"] = "all"                      # paper: every w_i; release: row 0
    canonical: Literal["paper", "release"] = "paper"            # w_c pose: static vs yaw/pitch jitter
    d_avg: Literal["scalar", "map"] = "scalar"                  # Eq. 4 target: mean or per-pixel map
    stage2_bg: bool = True                                      # paper §4.2: λ5·L_BG in stage 2 too; release: off


@dataclass
class TrainConfig:
    gpus: int = field(default=1, metadata=_rng(1))
    nnodes: int = field(default=1, metadata=_rng(1))
    checkpoint_every: int = field(default=50, metadata=_rng(1))
    log_every: int = field(default=10, metadata=_rng(1))
    resume: bool = True


@dataclass
class StageConfig:
    """Stage 2 (the AFA alone); stage 1 adds the latent discriminator's learning rate."""
    iters: int = field(default=100, metadata=_rng(1))
    batch_size: int = field(default=4, metadata=_rng(1))
    lr: float = field(default=1e-4, metadata=_rng(0.0))
    seed: int = field(default=0, metadata=_rng(0))


@dataclass
class Stage1Config(StageConfig):
    d_lr: float = field(default=2e-5, metadata=_rng(0.0))   # D_Wc (Eq. 2)


@dataclass
class MixConfig:
    """The occlusion-aware mix (Eqs. 7-8), passed as is to goae.model.mix. All planes + fixed blur is OUR
    READING of the paper (Eqs. 7-8 name neither); the release mixes plane 0 with a random σ."""
    planes: Literal["all", "xy"] = "all"          # interpretation: all three planes; release: plane 0 (XY) only
    blur: Literal["fixed", "random"] = "fixed"    # interpretation: fixed σ; release: σ ~ U[sigma_range] per call
    sigma: float = field(default=1.5, metadata=_rng(0.0))
    sigma_range: tuple[float, float] = (1.0, 2.0)
    threshold: float = field(default=0.35, metadata=_rng(0.0, 1.0))  # release binarises the first blur at > 0.35
    kernel: int = field(default=9, metadata=_rng(1))                  # release GaussianBlur(9, ...)


@dataclass
class EvalConfig:
    n_celeba: int = field(default=8, metadata=_rng(1))
    n_mead_ids: int = field(default=4, metadata=_rng(1))
    methods: list[str] = field(default_factory=lambda: ["goae", "goae_wplus", "goae_nomix", "optim"])
    optim_w_steps: int = field(default=20, metadata=_rng(0))
    optim_g_steps: int = field(default=10, metadata=_rng(0))
    fid: bool = True
    seed: int = field(default=0, metadata=_rng(0))
    extra_encoders: list[str] = field(default_factory=list)
    metric_size: Optional[int] = field(default=None, metadata=_rng(16))  # MSE/LPIPS resolution (pSp: 256); null = native
    optim_recipe: Literal["pti_like", "pti"] = "pti_like"  # pti: w, LPIPS-VGG (PTI); pti_like: w+, LPIPS-alex
    official_mix: Literal["release", "params"] = "release"  # goae_official row: the release's mix, or mix.*


@dataclass
class RuntimeConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = field(default=0, metadata=_rng(0))  # 0 = torch default
    bf16: bool = True          # autocast on CUDA only
    tf32: bool = True
    compile: bool = False      # torch.compile: encoder/AFA in training, the fixed-shape inversion (goae.model.fast)
    fp16_sr: bool = True       # official: SR in fp16 on GPU
    # inversion fast paths (goae.model.fast); CUDA only unless a caller asks for them on CPU (tests)
    inv_autocast: Literal["off", "bf16", "fp16"] = "bf16"  # encoder, EG3D convs, SR, AFA; marcher + mix stay fp32
    channels_last: bool = True       # NHWC convs in the EG3D/SR blocks and the AFA CNN
    batched_modconv: bool = True     # batch > 1: shared-weight conv on modulated activations (non-fused form)
    cuda_graphs: bool = True         # capture the fixed-shape inversion once, replay it per batch


@dataclass
class Params:
    data: DataConfig = field(default_factory=DataConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    assets: AssetsConfig = field(default_factory=AssetsConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    davg: DavgConfig = field(default_factory=DavgConfig)
    encoder: EncoderPreset = field(default_factory=EncoderPreset)
    afa: AfaPreset = field(default_factory=AfaPreset)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: StageConfig = field(default_factory=StageConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


# ------------------------------------------------------------------------------------------ parsing

def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # `dvc exp run -S x=3` writes an int; accept ints for floats, refuse strings like 'abc'.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls, data: Any, prefix: str = ""):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'params'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        keys = ", ".join(f"{prefix + '.' if prefix else ''}{k}" for k in unknown)
        raise ConfigError(f"unknown key(s): {keys} (known: {sorted(names)})")
    kwargs = {}
    for name, f in names.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            continue
        value = _convert(data[name], hints[name], key)
        meta = f.metadata or {}
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lo, hi = meta.get("min"), meta.get("max")
            if lo is not None and value < lo:
                raise ConfigError(f"{key}: {value} is below the minimum {lo}")
            if hi is not None and value > hi:
                raise ConfigError(f"{key}: {value} is above the maximum {hi}")
        if meta.get("choices") is not None and value not in meta["choices"]:
            raise ConfigError(f"{key}: {value!r} is not one of {meta['choices']}")
        kwargs[name] = value
    return cls(**kwargs)


def params_from_dict(data: dict) -> Params:
    p = _build(Params, data)
    _cross_checks(p)
    return p


def _cross_checks(p: Params) -> None:
    if sorted(p.encoder.schedule) != p.encoder.schedule or len(p.encoder.schedule) != 3:
        raise ConfigError("encoder.schedule: expected three increasing iteration counts")
    if len(p.mix.sigma_range) != 2 or not 0 < p.mix.sigma_range[0] <= p.mix.sigma_range[1]:
        raise ConfigError("mix.sigma_range: expected [low, high] with 0 < low <= high")
    bad = [f for f in p.assets.allow_fallbacks if f not in ("embedded", "packaged", "random")]
    if bad:
        raise ConfigError(f"assets.allow_fallbacks: unknown fallback(s) {bad}")
    known = {"goae", "goae_wplus", "goae_nomix", "optim"}
    bad = [m for m in p.eval.methods if m not in known]
    if bad:
        raise ConfigError(f"eval.methods: unknown method(s) {bad} (known: {sorted(known)})")
    if p.data.source == "folders" and not (p.data.ffhq or p.data.celeba or p.data.mead or p.data.wild):
        raise ConfigError("data.source: 'folders' needs at least one of data.ffhq/celeba/mead/wild")


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return params_from_dict(data)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested mapping → dotted keys (`loss.lambda5`), lists kept as values. The one flatten (params, metrics)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def params_hash(obj, n: int = 12) -> str:
    """sha1 of canonical JSON (key order and YAML comments do not count): resume fingerprints, run keys."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()).hexdigest()[:n]
