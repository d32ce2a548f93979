"""Official GOAE checkpoints (encoder_FFHQ.pt, afa_FFHQ.pt) <-> our modules, and the converted format.

encoder_FFHQ.pt: flat GOAEncoder state_dict, 545 keys (473 under `swin_model.`, Microsoft SwinV2
names, incl. 50 computed buffers). Our Encoder keeps every official head name and the `swin_model.`
prefix, so the only rules are the Swin ones (`microsoft_swin_to_timm`): drop the 50 buffers and move
`layers.i.downsample` -> `layers.{i+1}.downsample` (9 keys) -> 495 keys.
afa_FFHQ.pt: flat AFA state_dict, 174 keys, names identical to ours.
Converted format: OUT.safetensors (`encoder.*`, `afa.*`) + OUT.json (configs, provenance).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from goae.assets import sha256_file
from goae.model.afa import AFA, AFAConfig
from goae.model.encoder import (Encoder, EncoderConfig, check_state_dict, microsoft_swin_to_timm,
                                timm_swin_to_microsoft)

SWIN_PREFIX = "swin_model."
FORMAT = "goae-converted-v1"


def _split_swin(sd: dict) -> tuple[dict, dict]:
    swin = {k[len(SWIN_PREFIX):]: v for k, v in sd.items() if k.startswith(SWIN_PREFIX)}
    rest = {k: v for k, v in sd.items() if not k.startswith(SWIN_PREFIX)}
    return swin, rest


def _check_flat(sd, what: str) -> None:
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise TypeError(f"{what}: expected a flat state_dict of tensors (as the official torch.save)")
    wrapped = [k for k in sd if k.startswith("module.")]
    if wrapped:
        raise KeyError(f"{what}: keys carry a DataParallel 'module.' prefix, e.g. {wrapped[0]}")


def convert_official_encoder(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official GOAEncoder state_dict -> our Encoder state_dict (the three Swin rules)."""
    _check_flat(sd, "encoder checkpoint")
    swin, rest = _split_swin(sd)
    if not swin:
        raise KeyError("encoder checkpoint has no 'swin_model.' keys: not a GOAEncoder state_dict")
    out = {SWIN_PREFIX + k: v for k, v in microsoft_swin_to_timm(swin, shift_downsample=True).items()}
    out.update(rest)
    return out


def convert_official_afa(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official AFA state_dict -> ours: identical names (validated by the strict load)."""
    _check_flat(sd, "AFA checkpoint")
    return dict(sd)


def official_computed_buffers(encoder: Encoder) -> dict[str, torch.Tensor]:
    """The 50 Swin buffers the official file stores, taken from timm's recomputed ones. Block
    buffers never move between layouts, so names only gain the prefix."""
    names = ("relative_coords_table", "relative_position_index", "attn_mask")
    return {SWIN_PREFIX + k: b for k, b in encoder.swin_model.named_buffers()
            if k.rsplit(".", 1)[-1] in names}


def export_official_encoder(encoder: Encoder) -> dict[str, torch.Tensor]:
    """Our Encoder -> an official-layout state_dict (inverse of convert_official_encoder)."""
    swin, rest = _split_swin(encoder.state_dict())
    out = {SWIN_PREFIX + k: v for k, v in timm_swin_to_microsoft(swin).items()}
    out.update(official_computed_buffers(encoder))
    out.update(rest)
    return out


def load_official_goae(encoder_path, afa_path, enc_cfg: EncoderConfig | None = None,
                       afa_cfg: AFAConfig | None = None) -> tuple[dict, dict]:
    """Read the released files, convert, and validate them strictly against (meta-built) modules of
    the given configs (paper by default). Returns (encoder_sd, afa_sd) in our layout, on CPU."""
    enc_cfg, afa_cfg = enc_cfg or EncoderConfig.paper(), afa_cfg or AFAConfig.paper()
    for p in (encoder_path, afa_path):
        if not Path(p).is_file():
            raise FileNotFoundError(f"official GOAE checkpoint not found: {p}")
    enc_sd = convert_official_encoder(torch.load(encoder_path, map_location="cpu", weights_only=True))
    afa_sd = convert_official_afa(torch.load(afa_path, map_location="cpu", weights_only=True))
    with torch.device("meta"):
        enc, afa = Encoder(enc_cfg), AFA(afa_cfg)
    check_state_dict(enc, enc_sd, f"encoder {encoder_path}")
    check_state_dict(afa, afa_sd, f"AFA {afa_path}")
    return enc_sd, afa_sd



def save_converted(out_prefix, enc_sd: dict, afa_sd: dict, configs: dict,
                   provenance: dict | None = None) -> tuple[Path, Path]:
    """Write OUT.safetensors (keys `encoder.*`, `afa.*`) and OUT.json. `configs` maps 'encoder'/'afa'
    to EncoderConfig/AFAConfig (or their dicts); the JSON holds them as meta['encoder'], meta['afa']."""
    from safetensors.torch import save_file

    out = Path(out_prefix)
    st, js = out.with_name(out.name + ".safetensors"), out.with_name(out.name + ".json")
    st.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in enc_sd.items()}
    tensors.update({f"afa.{k}": v.detach().cpu().contiguous() for k, v in afa_sd.items()})
    save_file(tensors, str(st))
    meta = dict(format=FORMAT,
                **{k: (asdict(v) if hasattr(v, "__dataclass_fields__") else dict(v))
                   for k, v in configs.items()},       # "encoder" / "afa" configs at top level
                num_keys=dict(encoder=len(enc_sd), afa=len(afa_sd)),
                provenance=provenance or {})
    js.write_text(json.dumps(meta, indent=1))
    return st, js


def load_converted(out_prefix) -> tuple[dict, dict, dict]:
    """Read what save_converted wrote: (encoder_sd, afa_sd, meta json)."""
    from safetensors.torch import load_file

    out = Path(out_prefix)
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{out}.json: format {meta.get('format')!r}, expected {FORMAT!r}")
    t = load_file(str(out.with_name(out.name + ".safetensors")))
    enc = {k[8:]: v for k, v in t.items() if k.startswith("encoder.")}
    afa = {k[4:]: v for k, v in t.items() if k.startswith("afa.")}
    return enc, afa, meta


def convert_goae(encoder, afa, out, enc_cfg: EncoderConfig | None = None,
                 afa_cfg: AFAConfig | None = None) -> tuple[Path, Path]:
    """`goae convert-goae --encoder encoder_FFHQ.pt --afa afa_FFHQ.pt OUT` -> OUT.{safetensors,json}."""
    enc_cfg, afa_cfg = enc_cfg or EncoderConfig.paper(), afa_cfg or AFAConfig.paper()
    enc_sd, afa_sd = load_official_goae(encoder, afa, enc_cfg, afa_cfg)
    prov = {name: dict(file=Path(p).name, sha256=sha256_file(p))
            for name, p in (("encoder", encoder), ("afa", afa))}
    prov["converter"] = "goae.model.official.convert_goae"
    return save_converted(out, enc_sd, afa_sd, dict(encoder=enc_cfg, afa=afa_cfg), prov)
