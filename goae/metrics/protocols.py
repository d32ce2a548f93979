"""Table 1 evaluation: ONE function, `evaluate_method`, gives the metrics row of any inverter.

Protocols (paper §5.2; facts §4):
  celeba  input-view reconstruction of the test split (first `n` images, in dataset.json order):
          MSE (per image mean over C,H,W of images in [-1,1], so range [0,4]: the pSp/e4e scale Table 1 uses),
          LPIPS (alex v0.1), FID (renders vs the inputs), ID (ArcFace cosine), Geo. Err. (rendered depth vs
          the exact or user-supplied pseudo-GT depth `depth/<stem>.npy` in the convention of
          `depth/convention.json` (goae.metrics.geometry), face region = pixels where that reference is defined,
          further restricted to GT opacity `depth/<stem>.opacity.npy` >= 0.4 where one exists; no depth -> null
          and the protocol block says why), time per image (invert + input-view render of one image,
          device-synchronised, warm-up excluded).
  mead    per identity, invert a source view (yaw 0 or ±60) and render each OTHER view of that identity at
          its camera; compare with the real views: LPIPS, FID, ID, Geo. Err. Metrics are computed per
          source yaw; Table 1's groups are `yaw_pm60` (the -60 and +60 sources, averaged) and `yaw_0`.
Renders are clamped to [-1,1] before any metric (as saved images are). "Input-view render" is the render
at the input camera for every method. Every render draws its randomness from a torch.Generator seeded by
sha256(eval.seed, protocol, purpose, chunk, view): the same draws for every method, so rows differ only by
the inversion. FID with few samples (N << 2048) is biased upward and only indicative (compare at equal N).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
import torch

from goae.data.dataset import LabeledImages
from goae.metrics.fid import fid_from_features, inception_features
from goae.metrics.geometry import DepthConvention, geometry_error, ray_to_z
from goae.metrics.identity import id_similarity
from goae.metrics.image import lpips_distance, mse
from goae.metrics.timing import time_per_image

CELEBA_KEYS = ("mse", "lpips", "fid", "id", "geo_err", "time_s")
NOVEL_KEYS = ("lpips", "fid", "id", "geo_err")
MEAD_GROUPS: dict[str, tuple[float, ...]] = {"yaw_pm60": (-60.0, 60.0), "yaw_0": (0.0,)}


@runtime_checkable
class Inverter(Protocol):
    """What `evaluate_method` needs from a method. `generator` is the torch.Generator of the renderer's
    random draws; `render` returns at least {'image' [B,3,H,W] in ~[-1,1], 'image_depth' [B,1,r,r]} for one
    camera per inverted image. Optional attribute `timing = (warmup, repeats)` overrides the protocol's."""
    name: str
    weights: str

    def invert(self, images: torch.Tensor, cameras: torch.Tensor, generator: torch.Generator) -> Any: ...

    def render(self, handle: Any, cameras: torch.Tensor, generator: torch.Generator) -> dict: ...


@dataclass(frozen=True)
class EvalProtocol:
    name: str                               # 'celeba' | 'mead'
    seed: int = 0                           # eval.seed
    fid: bool = True
    batch_size: int = 4
    opacity_min: float = 0.4                # face region of Geo. Err. (exact GT opacity)
    metric_size: int | None = None          # resize before MSE/LPIPS (None: native resolution)
    timing_warmup: int = 2
    timing_repeats: int = 3
    groups: dict = field(default_factory=lambda: dict(MEAD_GROUPS))
    grid_n: int = 4                         # images per grid row
    grid_yaws_deg: tuple[float, ...] = (-30.0, 30.0)   # celeba grid: novel views


@dataclass
class SplitData:
    name: str
    folder: str
    images: torch.Tensor                    # [N,3,H,W] in [-1,1]
    labels: torch.Tensor                    # [N,25]
    names: list[str]
    depth: torch.Tensor | None = None       # [N,1,h,w] exact/pseudo-GT depth (None: no Geo. Err.)
    face: torch.Tensor | None = None        # [N,1,h,w] bool face region of the depth
    identities: list[list[int]] = field(default_factory=list)   # mead: indices per identity, yaw order
    identity_names: list[str] = field(default_factory=list)
    yaws: list[float] = field(default_factory=list)
    cache: dict = field(default_factory=dict, repr=False)       # reference Inception features
    depth_convention: Any = None            # goae.metrics.geometry.DepthConvention of `depth`
    depth_note: str = ""                    # how Geo. Err. is computed, or why it is not available


@dataclass
class MetricNets:
    lpips: Any                  # goae.metrics.image.LPIPSNet
    arcface: Any                # goae.nets.arcface.IRSE50
    inception: Any | None       # goae.metrics.fid.Inception (None: FID off)
    lpips_vgg: Any | None = None  # PTI's loss net (eval.optim_recipe: pti); not a metric

    def provenance(self) -> dict:
        out = {"lpips": self.lpips.provenance, "arcface": self.arcface.provenance,
               "inception": self.inception.provenance if self.inception is not None else "disabled"}
        if self.lpips_vgg is not None:
            out["lpips_vgg"] = self.lpips_vgg.provenance
        return out


# ------------------------------------------------------------------------------------------- data

def _depth_and_face(ds: LabeledImages, idx: list[int], opacity_min: float):
    """(depth [N,1,h,w] larger = farther, face [N,1,h,w], convention, note). The face region is where the
    reference is defined (goae.metrics.geometry.DepthConvention), further restricted to opacity >=
    `opacity_min` where an opacity map exists; no depth for some image -> (None, None, None, why)."""
    folder = ds.folder / "depth"
    if not folder.is_dir():
        return None, None, None, f"no pseudo-GT depth: {folder} does not exist"
    conv = DepthConvention.read(folder)
    depths, faces, any_opacity = [], [], False
    for i in idx:
        d = ds.load_depth(i)
        if d is None:   # no pseudo-GT for part of the split: Geo. Err. undefined (NaN), not biased
            return None, None, None, f"no pseudo-GT depth for {ds.name(i)} (depth/<stem>.npy)"
        d = conv.reference(d)
        face = torch.isfinite(d)
        op = folder / (Path(ds.name(i)).stem + ".opacity.npy")
        if op.is_file():
            face &= torch.from_numpy(np.load(op)).float()[None] >= opacity_min
            any_opacity = True
        depths.append(d)
        faces.append(face)
    sizes = {tuple(d.shape) for d in depths}
    if len(sizes) > 1:
        raise ValueError(f"{folder}: depth maps of different sizes {sorted(sizes)}; use one resolution")
    return torch.stack(depths), torch.stack(faces), conv, f"{conv.describe()}; face = defined pixels" + \
        (f" with opacity >= {opacity_min} where depth/<stem>.opacity.npy exists" if any_opacity else "")


def load_split(folder: str | Path, kind: str, n: int, resolution: int, opacity_min: float = 0.4) -> SplitData:
    """celeba: the first `n` images. mead: the first `n` identities (sorted ids) of `meta.json`
    ({"identities": {id: [names in yaw order]}, "yaws_deg": [...]}), every view of each."""
    ds = LabeledImages(folder, resolution=resolution)
    if kind == "celeba":
        idx, ids, id_names, yaws = list(range(min(n, len(ds)))), [], [], []
    elif kind == "mead":
        meta = json.loads((Path(folder) / "meta.json").read_text())
        # by the path without extension: a real MEAD layout repeats stems (M003/front/001, M003/left_30/001)
        by_stem = {Path(ds.name(i)).with_suffix("").as_posix(): i for i in range(len(ds))}
        id_names = sorted(meta["identities"])[:n]
        yaws = [float(y) for y in meta["yaws_deg"]]
        idx, ids = [], []
        for k in id_names:
            views = [by_stem[Path(v).with_suffix("").as_posix()] for v in meta["identities"][k]]
            if len(views) != len(yaws):
                raise ValueError(f"{folder}: identity {k} has {len(views)} views for {len(yaws)} yaws")
            ids.append(list(range(len(idx), len(idx) + len(views))))
            idx += views
    else:
        raise ValueError(f"unknown split kind {kind!r}")
    if not idx:
        raise ValueError(f"{folder}: no {kind} samples")
    b = ds.batch(idx)
    depth, face, conv, note = _depth_and_face(ds, idx, opacity_min)
    return SplitData(kind, str(folder), b["image"], b["label"], [ds.name(i) for i in idx], depth, face,
                     ids, id_names, yaws, depth_convention=conv, depth_note=note)


# ------------------------------------------------------------------------------------- randomness

def render_seed(*keys) -> int:
    """Stable 63-bit seed from any keys (not Python's salted hash())."""
    return int.from_bytes(hashlib.sha256(repr(keys).encode()).digest()[:8], "little") >> 1


def _gen(p: EvalProtocol, device: torch.device, *keys) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(render_seed(p.seed, p.name, *keys))


# ---------------------------------------------------------------------------------------- metrics

def _nanmean(x: torch.Tensor | list) -> float:
    x = torch.as_tensor(x, dtype=torch.float64)
    x = x[torch.isfinite(x)]
    return float(x.mean()) if x.numel() else math.nan


def _fid(p: EvalProtocol, nets: MetricNets, fake: torch.Tensor, real: torch.Tensor, data: SplitData,
         key, device) -> float:
    if not p.fid or nets.inception is None or fake.shape[0] < 2:
        return math.nan
    if key not in data.cache:
        data.cache[key] = inception_features(nets.inception, real, device)
    return fid_from_features(*fid_subspace(inception_features(nets.inception, fake, device), data.cache[key]))


def fid_subspace(f1: np.ndarray, f2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both feature sets in an orthonormal basis of the subspace FID depends on (exact, not an approximation).

    FID sees the centred features and the mean gap only, and is invariant under an orthonormal change of
    basis; with N1 + N2 + 1 < D those span a subspace of dim k <= N1 + N2 + 1, so the 2048x2048 sqrtm
    (about a minute on a small CPU, per FID) becomes a k x k one. The eps*I retry of
    `frechet_distance` acts on k instead of D dims: a difference of order eps.
    """
    m1, m2 = f1.mean(0), f2.mean(0)
    span = np.concatenate([f1 - m1, f2 - m2, (m1 - m2)[None]])
    if span.shape[0] >= span.shape[1]:
        return f1, f2
    q, _ = np.linalg.qr(span.T)      # [D, k] orthonormal columns
    return f1 @ q, f2 @ q


def _geo(depth: torch.Tensor, data: SplitData, idx: list[int]) -> float:
    """Rendered ray-distance depth at the cameras of `idx` vs their pseudo-GT, in the GT's convention."""
    if data.depth is None:
        return math.nan
    if data.depth_convention.kind == "z":
        depth = ray_to_z(depth, data.labels[idx])
    return _nanmean(geometry_error(depth, data.depth[idx], data.face[idx]))


def _novel_metrics(p, nets, data, fake, depth, idx, key, device) -> dict:
    real = data.images[idx]
    return {"lpips": float(lpips_distance(nets.lpips, fake, real, device, size=p.metric_size).mean()),
            "fid": _fid(p, nets, fake, real, data, key, device),
            "id": float(id_similarity(nets.arcface, fake, real, device).mean()),
            "geo_err": _geo(depth, data, idx)}


def _out(r: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return r["image"].detach().float().clamp(-1, 1).cpu(), r["image_depth"].detach().float().cpu()


def depth_to_image(depth: torch.Tensor, size: int) -> torch.Tensor:
    """[B,1,r,r] depth -> [B,3,size,size] in [-1,1] for grids (per image min-max, near = bright)."""
    d = depth.float()
    lo, hi = d.amin((1, 2, 3), keepdim=True), d.amax((1, 2, 3), keepdim=True)
    x = 1 - 2 * (d - lo) / (hi - lo).clamp_min(1e-8)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="nearest").expand(-1, 3, -1, -1)


# ------------------------------------------------------------------------------------ the row

def evaluate_method(method: Inverter, data: SplitData, protocol: EvalProtocol, nets: MetricNets,
                    device: torch.device | str, samples: dict | None = None) -> dict:
    """Metrics row of `method` on `data` under `protocol` (celeba: CELEBA_KEYS; mead: per group and per
    source yaw, NOVEL_KEYS). If `samples` is a dict, grid rows (tensors in [-1,1]) are stored in it."""
    device = torch.device(device)
    if protocol.name == "celeba":
        return _celeba_row(method, data, protocol, nets, device, samples)
    if protocol.name == "mead":
        return _mead_row(method, data, protocol, nets, device, samples)
    raise ValueError(f"unknown protocol {protocol.name!r}")


def _celeba_row(m: Inverter, data: SplitData, p: EvalProtocol, nets, device, samples) -> dict:
    from goae.eg3d import camera as cam
    n = data.images.shape[0]
    recs, depths = [], []
    for s in range(0, n, p.batch_size):
        x, c = data.images[s:s + p.batch_size].to(device), data.labels[s:s + p.batch_size].to(device)
        h = m.invert(x, c, _gen(p, device, "invert", s))
        img, dep = _out(m.render(h, c, _gen(p, device, "render", s, 0)))
        recs.append(img)
        depths.append(dep)
        if samples is not None and s == 0:
            k = min(p.grid_n, x.shape[0])
            cols = [data.images[:k], img[:k]]
            for j, yaw in enumerate(p.grid_yaws_deg):
                cn = cam.yaw_pitch_camera(torch.full((x.shape[0],), math.radians(yaw)),
                                          torch.zeros(x.shape[0]), device=device)
                cols.append(_out(m.render(h, cn, _gen(p, device, "grid", s, j)))[0][:k])
            cols.append(depth_to_image(dep[:k], img.shape[-1]))
            # one grid row per image, one column per kind of view (the labels are drawn above them)
            samples.update(rows=[torch.stack([c[i] for c in cols]) for i in range(k)],
                           labels=[f"image {i}" for i in range(k)], nrow=len(cols),
                           columns=["input", "reconstruction", *[f"yaw {y:+.0f}" for y in p.grid_yaws_deg], "depth"])
        del h
    rec, depth = torch.cat(recs), torch.cat(depths)
    idx = list(range(n))
    warmup, repeats = getattr(m, "timing", (p.timing_warmup, p.timing_repeats))
    x1, c1 = data.images[:1].to(device), data.labels[:1].to(device)
    g = _gen(p, device, "timing")
    t = time_per_image(lambda x: m.render(m.invert(x, c1, g), c1, g), x1, device, warmup=warmup, repeats=repeats)
    return {"mse": float(mse(rec, data.images, size=p.metric_size).mean()),
            "lpips": float(lpips_distance(nets.lpips, rec, data.images, device, size=p.metric_size).mean()),
            "fid": _fid(p, nets, rec, data.images, data, ("celeba", "all"), device),
            "id": float(id_similarity(nets.arcface, rec, data.images, device).mean()),
            "geo_err": _geo(depth, data, idx),
            "time_s": float(t)}


def _yaw_pos(yaws: list[float], y: float) -> int | None:
    hits = [i for i, v in enumerate(yaws) if abs(v - y) < 1e-3]
    return hits[0] if hits else None


def source_key(y: float) -> str:
    """Per-source key usable as an MLflow metric name: src_m60, src_0, src_p60."""
    return "src_0" if y == 0 else f"src_{'m' if y < 0 else 'p'}{abs(y):g}"


def _mead_row(m: Inverter, data: SplitData, p: EvalProtocol, nets, device, samples) -> dict:
    ids, yaws = data.identities, data.yaws
    per_source: dict[float, dict] = {}
    for y_src in sorted({y for g in p.groups.values() for y in g}):
        j = _yaw_pos(yaws, y_src)
        if j is None:
            continue
        targets = [k for k in range(len(yaws)) if k != j]
        fakes, depths, tgt_idx = [], [], []
        for s in range(0, len(ids), p.batch_size):
            chunk = ids[s:s + p.batch_size]
            src = [v[j] for v in chunk]
            x, c = data.images[src].to(device), data.labels[src].to(device)
            h = m.invert(x, c, _gen(p, device, "invert", y_src, s))
            views = {}
            for k in (range(len(yaws)) if samples is not None and s == 0 else targets):
                tgt = [v[k] for v in chunk]
                views[k] = _out(m.render(h, data.labels[tgt].to(device), _gen(p, device, "render", y_src, s, k)))
                if k != j:
                    fakes.append(views[k][0])
                    depths.append(views[k][1])
                    tgt_idx += tgt
            if samples is not None and s == 0:   # identity 0: real views over the renders from this source
                samples.setdefault("rows", []).extend([data.images[chunk[0]], torch.cat([views[k][0][:1]
                                                                                         for k in range(len(yaws))])])
                samples.setdefault("labels", []).extend([f"real views ({data.identity_names[0]})",
                                                         f"from yaw {y_src:+.0f}"])
                samples["nrow"] = len(yaws)
                samples["columns"] = [f"yaw {y:+.0f}" for y in yaws]
            del h
        fake, depth = torch.cat(fakes), torch.cat(depths)
        per_source[y_src] = _novel_metrics(p, nets, data, fake, depth, tgt_idx, ("mead", y_src), device)
    row = {}
    for gname, ys in p.groups.items():
        present = [per_source[y] for y in ys if y in per_source]
        row[gname] = {k: (_nanmean([r[k] for r in present]) if present else math.nan) for k in NOVEL_KEYS}
    for y, r in per_source.items():
        row[source_key(y)] = r
    return row


# ------------------------------------------------------------------------------ methods and nets

def build_metric_nets(p, device, provenance: dict) -> MetricNets:
    """LPIPS / ArcFace / Inception from `assets` (or the allowed fallbacks), provenance recorded."""
    from goae.metrics.fid import load_inception
    from goae.metrics.image import build_lpips
    from goae.nets import arcface
    from goae.model.io import asset, resolve
    alex = asset(p, "lpips_alexnet", provenance)
    arc = asset(p, "arcface", provenance)
    lp = build_lpips(alexnet_path=alex, seed=0).to(device)
    if arc:
        net = arcface.load_arcface(arc, device)
    else:   # the random stand-in, as the training losses build it (assets.random_arcface sets its size)
        net = arcface.random_arcface(0, num_layers=4 if p.assets.random_arcface == "tiny" else 50).to(device)
    from goae.params_view import depends_on
    depends_on(p, "assets.inception", "assets.lpips_vgg")  # declared; used only with eval.fid / the pti recipe
    inc = None
    if p.eval.fid:
        r = resolve(p, "inception", provenance)        # a file, or the packaged TorchScript trunk
        inc = load_inception(r.path).to(device)
    vgg = None
    if "optim" in p.eval.methods and p.eval.optim_recipe == "pti":
        from goae.metrics.image import TRUNK_FILES, torch_hub_file
        path = asset(p, "lpips_vgg", provenance) if p.assets.lpips_vgg else torch_hub_file(TRUNK_FILES["vgg"])
        if path is None:
            resolve(p, "lpips_vgg", provenance)         # the allowed fallback ('random'), or a clear error
        vgg = build_lpips(net="vgg", trunk_path=path, seed=0).to(device)
    return MetricNets(lp, net, inc, vgg)


class GOAEInverter:
    """GOAE variants through the same interface: full (AFA + mix), no mix (render the F* tri-plane),
    w+ only (encoder, no AFA)."""

    def __init__(self, name: str, model, weights: str, use_afa: bool = True, use_mix: bool = True):
        self.name, self.model, self.weights = name, model, weights
        self.use_afa, self.use_mix = use_afa, use_mix

    def invert(self, images, cameras, generator):
        return self.model.invert(images, cameras, use_afa=self.use_afa, use_mix=self.use_mix, generator=generator)

    def render(self, handle, cameras, generator) -> dict:
        out = self.model.render(handle, cameras, generator)
        return {"image": out["image"], "image_depth": out["image_depth"]}


def _ckpt_weights(prefix: Path) -> tuple[str, dict]:
    from goae.assets import sha256_file
    st, js = prefix.with_suffix(".safetensors"), prefix.with_suffix(".json")
    cfg = json.loads(js.read_text()) if js.is_file() else {}
    prov = cfg.get("provenance", {}) or {}
    g = prov.get("generator")
    gk = g.get("kind", json.dumps(g, sort_keys=True)) if isinstance(g, dict) else str(g)
    s = f"{st} sha256:{sha256_file(st)[:16]} steps={cfg.get('steps', '?')} trained_with_generator={gk}"
    return s, prov


def generator_weights(gprov) -> str:
    return json.dumps(gprov, sort_keys=True, separators=(",", ":")) if isinstance(gprov, dict) else str(gprov)


MIX_INTERPRETATION = ("all three planes with a fixed blur is this project's reading of the paper's "
                      "occlusion-aware mix (Eqs. 7-8 do not say which planes or which blur); the release mixes "
                      "plane 0 (XY) with σ ~ U[1,2] per call (mix.planes: xy, mix.blur: random)")
RELEASE_MIX = dict(planes="xy", blur="random", sigma=1.5, threshold=0.35, kernel=9)   # facts §3.6


def mix_label(mix) -> str:
    """The mix a row used, with 'paper reading (interpretation)' or 'release recipe' spelled out."""
    kind = ("release recipe" if (mix.planes, mix.blur) == ("xy", "random") else
            "interpretation of the paper" if (mix.planes, mix.blur) == ("all", "fixed") else "custom")
    sigma = f"U[{mix.sigma_range[0]:g},{mix.sigma_range[1]:g}]" if mix.blur == "random" else mix.sigma
    return f"mix(planes={mix.planes},blur={mix.blur},sigma={sigma},threshold={mix.threshold}; {kind})"


def build_official(p, G, device, weights: dict):
    """Row `goae_official`: the released GOAE encoder + AFA (`assets.goae_encoder` / `assets.goae_afa`: the
    official .pt files, or both pointing at one `goae convert-goae` output `PREFIX.safetensors`) under the
    same protocol, mixed with the release recipe unless `eval.official_mix: params` (then the params' mix
    section, as the goae row). None when unset."""
    from goae.model.afa import AFA, AFAConfig
    from goae.model.encoder import Encoder, EncoderConfig
    from goae.model.goae import GOAE
    from goae.model.io import resolve
    from goae.model.mix import MixConfig
    from goae.model.official import load_converted, load_official_goae
    from goae.params_view import whole_section
    if not (p.assets.goae_encoder and p.assets.goae_afa):
        if p.assets.goae_encoder or p.assets.goae_afa:
            raise ValueError("assets.goae_encoder and assets.goae_afa: set both (or neither) for goae_official")
        return None
    prov: dict = {}
    enc, afa = (resolve(p, k, prov).path for k in ("goae_encoder", "goae_afa"))
    if enc.suffix == ".safetensors":      # a converted prefix carries its configs
        if afa != enc:
            raise ValueError("assets.goae_encoder/goae_afa: a converted .safetensors must be given for both")
        enc_sd, afa_sd, meta = load_converted(enc.with_suffix(""))
        ecfg, acfg = EncoderConfig.from_dict(meta["encoder"]), AFAConfig.from_dict(meta["afa"])
    else:                                  # the released files: paper configs (SwinV2-B encoder, AFA d=512)
        ecfg, acfg = EncoderConfig.paper(), AFAConfig.paper()
        enc_sd, afa_sd = load_official_goae(enc, afa, ecfg, acfg)
    E, A = Encoder(ecfg), AFA(acfg)
    E.load_state_dict(enc_sd, strict=True)
    A.load_state_dict(afa_sd, strict=True)
    mix = MixConfig(**RELEASE_MIX) if p.eval.official_mix == "release" else whole_section(p, "mix")
    weights["goae_official"] = {k: v for k, v in prov.items()}
    model = GOAE(G, E.eval().requires_grad_(False), A.eval().requires_grad_(False), mix).to(device).eval()
    return GOAEInverter("goae_official", model, f"G={weights['generator']}; official GOAE E={prov['goae_encoder']} "
                                                 f"AFA={prov['goae_afa']}; {mix_label(mix)}")


@dataclass
class Evaluation:
    results: dict            # protocol -> method -> row
    protocol: dict           # sample counts, seeds, conventions
    weights: dict            # provenance of every weight that produced the numbers
    samples: dict            # protocol -> method -> grid rows


def build_methods(p, G, stage1_dir, stage2_dir, nets: MetricNets, device, weights: dict) -> list:
    """eval.methods (+ eval.extra_encoders as w+-only rows), each an Inverter; fills `weights`."""
    from goae.metrics.baselines import OptimConfig, OptimInverter
    from goae.model.goae import GOAE
    from goae.model.io import load_afa, load_encoder
    from goae.params_view import whole_section
    g = weights["generator"]
    mix = whole_section(p, "mix")
    built = {}
    if any(k.startswith("goae") for k in p.eval.methods):
        E = load_encoder(stage1_dir, device)
        weights["encoder"], prov = _ckpt_weights(Path(stage1_dir) / "encoder")
        weights.setdefault("training", {})["stage1"] = prov     # what trained E (Swin init, mask, loss nets)
        A = None
        if {"goae", "goae_nomix"} & set(p.eval.methods):
            A = load_afa(stage2_dir, device)
            weights["afa"], prov = _ckpt_weights(Path(stage2_dir) / "afa")
            weights["training"]["stage2"] = prov
        model = GOAE(G, E, A, mix).to(device).eval()
        ge = f"G={g}; E={weights['encoder']}"
        mixs = mix_label(mix)
        if A is not None:
            built["goae"] = GOAEInverter("goae", model, f"{ge}; AFA={weights['afa']}; {mixs}")
            built["goae_nomix"] = GOAEInverter("goae_nomix", model, f"{ge}; AFA={weights['afa']}; no mix "
                                                                   "(F* tri-plane)", use_mix=False)
        built["goae_wplus"] = GOAEInverter("goae_wplus", model, f"{ge}; w+ only", use_afa=False)
    if "optim" in p.eval.methods:
        cfg = OptimConfig.recipe(p.eval.optim_recipe, p.eval.optim_w_steps, p.eval.optim_g_steps,
                                 p.loss.lambda1, p.loss.lambda2)
        lp = nets.lpips_vgg if cfg.lpips_net == "vgg" else nets.lpips
        if lp is None:
            raise ValueError("eval.optim_recipe: pti needs the LPIPS-VGG net (build_metric_nets builds it)")
        built["optim"] = OptimInverter(G, cfg, lp, weights=f"G={g} (copied, fine-tuned per image); "
                                                           f"{cfg.describe()}; lpips={lp.provenance}")
    methods = [built[k] for k in p.eval.methods]
    official = build_official(p, G, device, weights)
    if official is not None:
        methods.append(official)
    for path in p.eval.extra_encoders:
        E = load_encoder(path, device)
        w, _ = _ckpt_weights(Path(path) / "encoder")
        name = f"wplus_{Path(path).name}"
        weights.setdefault("extra_encoders", {})[name] = w
        methods.append(GOAEInverter(name, GOAE(G, E, None, mix).to(device).eval(), f"G={g}; E={w}; w+ only",
                                    use_afa=False))
    weights["methods"] = {m.name: m.weights for m in methods}
    return methods


def run_evaluation(p, G, gprov, stage1_dir, stage2_dir, celeba_dir, mead_dir, device,
                   log: Callable[[str], None] = print, nets: MetricNets | None = None,
                   **protocol_kw) -> Evaluation:
    """Both protocols for every method of `p.eval` (plus extra encoders). `nets` and `protocol_kw`
    (EvalProtocol fields) override the defaults, for tests."""
    import time
    device = torch.device(device)
    prov: dict = {}
    nets = nets or build_metric_nets(p, device, prov)
    weights = {"generator": generator_weights(gprov), **nets.provenance(), "assets": prov}
    methods = build_methods(p, G, stage1_dir, stage2_dir, nets, device, weights)
    res = G.img_resolution
    protocol_kw.setdefault("metric_size", p.eval.metric_size)
    protos = {k: EvalProtocol(k, seed=p.eval.seed, fid=p.eval.fid, **protocol_kw) for k in ("celeba", "mead")}
    data = {"celeba": load_split(celeba_dir, "celeba", p.eval.n_celeba, res, protos["celeba"].opacity_min),
            "mead": load_split(mead_dir, "mead", p.eval.n_mead_ids, res, protos["mead"].opacity_min)}
    results, samples = {k: {} for k in protos}, {k: {} for k in protos}
    for pname, proto in protos.items():
        for m in methods:
            t0 = time.time()
            samples[pname][m.name] = {}
            results[pname][m.name] = evaluate_method(m, data[pname], proto, nets, device, samples[pname][m.name])
            log(f"{pname}/{m.name}: {time.time() - t0:.1f} s")
    return Evaluation(results, protocol_block(p, protos, data, methods), weights, samples)


def protocol_block(p, protos: dict, data: dict, methods) -> dict:
    from goae.model.mix import MixConfig
    c, md = data["celeba"], data["mead"]
    nm = len(md.identities)
    size = protos["celeba"].metric_size
    msize = (f"{size}x{size} (bilinear, antialiased resize of both images)" if size else
             f"native {c.images.shape[-1]}x{c.images.shape[-1]}")
    return {
        "seed": p.eval.seed,
        "render_seeds": "sha256(eval.seed, protocol, purpose, chunk, view) -> torch.Generator per render; "
                        "identical for every method",
        "celeba": {"folder": c.folder, "n_images": c.images.shape[0], "requested": p.eval.n_celeba,
                   "selection": "first n of dataset.json", "resolution": c.images.shape[-1],
                   "geo_err_available": c.depth is not None, "geo_err": c.depth_note,
                   "depth_resolution": None if c.depth is None else list(c.depth.shape[-2:])},
        "mead": {"folder": md.folder, "n_identities": nm, "requested": p.eval.n_mead_ids,
                 "identities": md.identity_names, "yaws_deg": md.yaws,
                 "groups": {k: list(v) for k, v in protos["mead"].groups.items()},
                 "pairs_per_source": nm * (len(md.yaws) - 1), "geo_err_available": md.depth is not None,
                 "geo_err": md.depth_note,
                 "depth_resolution": None if md.depth is None else list(md.depth.shape[-2:])},
        "methods": [m.name for m in methods],
        "optim": {"recipe": p.eval.optim_recipe, "w_steps": p.eval.optim_w_steps, "g_steps": p.eval.optim_g_steps,
                  "init": "w_avg", "timing": "1 warm-up + 1 timed image"},
        "mix": {"params": mix_label(p.mix), "note": MIX_INTERPRETATION,
                "goae_official": (mix_label(MixConfig(**RELEASE_MIX)) if p.eval.official_mix == "release"
                                  else "mix.* (as the goae row)")},
        "metric_resolution": msize,
        "conventions": {
            "mse": "per-image mean over C,H,W of squared differences of images in [-1,1] (range [0,4]); "
                   f"renders clamped to [-1,1]; at {msize}",
            "lpips": f"lpips v0.1 alex on [-1,1], at {msize}",
            "fid": f"Inception pool3 (goae.metrics.fid), renders vs real; N={c.images.shape[0]} (celeba), "
                   f"{nm * (len(md.yaws) - 1)} per mead source: N << 2048, indicative only",
            "id": "cosine of ArcFace IR-SE50 embeddings (e4e recipe)",
            "geo_err": "goae.metrics.geometry vs depth/<stem>.npy (convention: depth/convention.json); face = "
                       "pixels where the pseudo-GT is defined (and opacity >= "
                       f"{protos['celeba'].opacity_min} where an opacity map exists); null when unavailable, "
                       "see celeba.geo_err / mead.geo_err",
            "time_s": "seconds per image: invert + input-view render of 1 image, device-synchronised median "
                      f"of {protos['celeba'].timing_repeats} after {protos['celeba'].timing_warmup} warm-up",
            "mead": "source view inverted, every other view of the identity rendered at its camera; "
                    "yaw_pm60 = mean of the -60 and +60 sources' metrics",
        },
    }
