"""Loading and saving what the pipeline produced: params-resolved assets, the generator, encoder and AFA.

Shared by training, evaluation and the CLI (so `metrics` never imports `train`). Our checkpoints are
safetensors + JSON, never pickles.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from goae.assets import ResolvedAsset, resolve_asset
from goae.config import Params
from goae.eg3d.checkpoint import load_checkpoint, save_checkpoint
from goae.eg3d.generator import TriPlaneGenerator
from goae.model.afa import AFA, AFAConfig
from goae.model.encoder import Encoder, EncoderConfig

def resolve(p: Params, name: str, provenance: dict) -> ResolvedAsset:
    """Asset `name`: the configured path (sha256 checked), else the first fallback the asset offers
    that `assets.allow_fallbacks` permits (goae.assets). Records what was used in `provenance[name]`."""
    r = resolve_asset(name, getattr(p.assets, name), p.assets.allow_fallbacks)
    provenance[name] = r.provenance_str
    return r


def asset(p: Params, name: str, provenance: dict) -> str | None:
    """Path of a file asset, or None when a non-file fallback (embedded/random) applies."""
    r = resolve(p, name, provenance)
    return str(r.path) if r.kind == "file" else None


def save_module(prefix: str | Path, module: torch.nn.Module, config: dict) -> None:
    """Our own checkpoints: `<prefix>.safetensors` + `<prefix>.json` (atomic), never pickles."""
    sd = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_checkpoint(prefix, sd, json.loads(json.dumps(config, default=str)))


def load_tensors(prefix: str | Path) -> tuple[dict, dict]:
    return load_checkpoint(prefix)


def load_generator(folder: str | Path, device="cpu") -> tuple[TriPlaneGenerator, dict]:
    """The pipeline's generator: `<folder>/generator.{safetensors,json}` (+ `source.json`) written by `ingest`
    (the embedded tiny EG3D, or a pointer to a converted official checkpoint)."""
    folder = Path(folder)
    meta = json.loads((folder / "source.json").read_text())
    prefix = Path(meta["pointer"]) if "pointer" in meta else folder / "generator"
    sd, cfg = load_tensors(prefix)
    G = TriPlaneGenerator.from_config(cfg, init_seed=None)
    G.load_state_dict(sd, strict=True)
    G = G.to(device).eval().requires_grad_(False)
    return G, {**cfg, "provenance": meta.get("provenance", cfg.get("provenance"))}


def load_encoder(folder: str | Path, device) -> Encoder:
    sd, cfg = load_tensors(Path(folder) / "encoder")
    E = Encoder(EncoderConfig.from_dict(cfg["encoder"]))
    E.load_state_dict(sd, strict=True)
    return E.to(device).eval().requires_grad_(False)


def load_afa(folder: str | Path, device) -> AFA:
    sd, cfg = load_tensors(Path(folder) / "afa")
    A = AFA(AFAConfig.from_dict(cfg["afa"]))
    A.load_state_dict(sd, strict=True)
    return A.to(device).eval().requires_grad_(False)
