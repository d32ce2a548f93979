"""Geometry-aware encoder E (Eq. 1): image -> w+ (14 x 512), a timm SwinV2 trunk plus GOAE's heads.

Head layout and names follow the official `GOAEncoder` (goae/training/goae.py) so `encoder_FFHQ.pt`
loads after the three Swin key rules in `microsoft_swin_to_timm`. Shapes below are for the paper
config (256 px, SwinV2-B); every token/channel size is derived from the trunk, so small configs work.

    taps (B = batch)      x_fine (B,4096,128)  x_mid (B,1024,256)  x_coarse (B,256,512)
                          x_query (B,1024,64) and x_base (B,1024,64), both channels x tokens
    base code             channel_mlp((token_mlp(x_base) + max_tokens(x_base))^T)       (B,1,512)
    queries (3/3/7)       channel_mlp((token_mlp(x_query) + max_tokens(x_query))^T)     (B,k,512)
    kv pyramid            kv_coarse = lrelu(lin(x_coarse))
                          kv_mid  = lrelu(lin(x_mid))  + tok_mlp(kv_coarse^T)^T   (tok_mlp ends in lrelu)
                          kv_fine = mlp(x_fine)        + tok_mlp(kv_mid^T)^T
    deltas                CrossAttention(query, kv) per level
    w+ rows               0 base | 1-3 base+coarse | 4-6 base+mid | 7-13 base+fine (inactive -> base)
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from goae.model.attention import CrossAttention

LEVELS = ("coarse", "mid", "fine")
# Persistent in Microsoft's Swin, recomputed (non-persistent) in timm: never loaded from a checkpoint.
SWIN_COMPUTED_BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask")


@dataclass(frozen=True)
class EncoderConfig:
    timm_model: str = "swinv2_base_window12to16_192to256"
    img_size: int = 256
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 16
    pretrained_window_sizes: tuple[int, ...] = (12, 12, 12, 6)
    drop_path_rate: float = 0.2          # paper / swinv2.yaml (timm's default is 0.1)
    d_model: int = 512                   # cross-attention width; must equal w_dim (deltas add to w)
    heads: int = 4
    ffn: int = 1024
    dropout: float = 0.1
    n_ws: int = 14
    w_dim: int = 512
    query_counts: tuple[int, int, int] = (3, 3, 7)   # coarse, mid, fine w+ rows
    schedule: tuple[int, int, int] = (10000, 20000, 30000)
    sdpa: bool = True

    def __post_init__(self):
        if self.d_model != self.w_dim:
            raise ValueError(f"d_model ({self.d_model}) must equal w_dim ({self.w_dim})")
        if 1 + sum(self.query_counts) != self.n_ws:
            raise ValueError(f"1 + sum(query_counts)={1 + sum(self.query_counts)} != n_ws={self.n_ws}")
        if len(self.depths) != 4 or len(self.num_heads) != 4 or len(self.pretrained_window_sizes) != 4:
            raise ValueError("GOAE taps four Swin stages: depths, num_heads, pretrained_window_sizes need 4")

    @classmethod
    def paper(cls, **overrides) -> "EncoderConfig":
        """SwinV2-B 256/w16 (ImageNet-22k->1k fine-tune geometry), GOAE heads as released."""
        return dataclasses.replace(cls(), **overrides)

    @classmethod
    def tiny(cls, **overrides) -> "EncoderConfig":
        """Test config: 128 px keeps x_query at 4x4 = 16 tokens (>= 7 fine queries) and the fine
        token MLP at 256->512->1024 tokens; w_dim stays 512 to match EG3D (also the tiny one)."""
        base = cls(img_size=128, embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
                   window_size=8, pretrained_window_sizes=(0, 0, 0, 0), drop_path_rate=0.0, ffn=256)
        return dataclasses.replace(base, **overrides)

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderConfig":
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(fields)
        if unknown:
            raise ValueError(f"unknown EncoderConfig fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def stage_for_iteration(it: int, schedule: tuple[int, int, int] = (10000, 20000, 30000)) -> int:
    """Progressive stage 0..3 as the official `set_stage`: 0 below s0, 1 below s1, 2 up to and
    *including* s2 (the official test is `<=` there), 3 only above s2."""
    s0, s1, s2 = schedule
    return 0 if it < s0 else 1 if it < s1 else 2 if it <= s2 else 3


def add_w_avg(w_plus_delta: torch.Tensor, w_avg: torch.Tensor) -> torch.Tensor:
    """w+ = E(I) + w_avg (start_from_latent_avg); w_avg is EG3D's mapping.w_avg, any shape of w_dim."""
    return w_plus_delta + w_avg.reshape(1, 1, -1).to(w_plus_delta)


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    # official get_mlp_layer(in, out, 2): keys .0 and .2
    return nn.Sequential(nn.Linear(i, h), nn.LeakyReLU(), nn.Linear(h, o))


def _token_mlp(i: int, o: int) -> nn.Sequential:
    # token-axis upsampler; the trailing LeakyReLU is weightless but essential (fixture note 1)
    return nn.Sequential(nn.Linear(i, 2 * i), nn.LeakyReLU(), nn.Linear(2 * i, o), nn.LeakyReLU())


def build_swin(cfg: EncoderConfig) -> nn.Module:
    import timm  # heavy import, only when a trunk is built

    return timm.create_model(
        cfg.timm_model, pretrained=False, num_classes=0, img_size=cfg.img_size,
        embed_dim=cfg.embed_dim, depths=tuple(cfg.depths), num_heads=tuple(cfg.num_heads),
        window_size=cfg.window_size, pretrained_window_sizes=tuple(cfg.pretrained_window_sizes),
        drop_path_rate=cfg.drop_path_rate)


class Encoder(nn.Module):
    """GOAE encoder. forward(x in [-1,1], (B,3,S,S), stage) -> (w+ - w_avg, base code x n_ws)."""

    def __init__(self, cfg: EncoderConfig = EncoderConfig()):
        super().__init__()
        self.cfg = cfg
        self.swin_model = build_swin(cfg)
        layers = self.swin_model.layers
        tok = [r[0] * r[1] for r in (st.output_resolution for st in layers)]   # fine, mid, coarse, query
        ch = [st.blocks[0].dim for st in layers]
        n_q, c_q, d = tok[3], ch[3], cfg.d_model
        self.mapper_base_spatial = _mlp(n_q, n_q, 1)
        self.mapper_base_channel = _mlp(c_q, c_q, cfg.w_dim)
        for name, k in zip(LEVELS, cfg.query_counts):
            setattr(self, f"mapper_query_spatial_{name}", _mlp(n_q, n_q, k))
            setattr(self, f"mapper_query_channel_{name}", _mlp(c_q, c_q, d))
        self.mapper_coarse_channel = nn.Sequential(nn.Linear(ch[2], d), nn.LeakyReLU())
        self.mapper_mid_channel = nn.Sequential(nn.Linear(ch[1], d), nn.LeakyReLU())
        self.mapper_fine_channel = nn.Sequential(nn.Linear(ch[0], d // 2), nn.LeakyReLU(),
                                                 nn.Linear(d // 2, d), nn.LeakyReLU())
        self.mapper_coarse_to_mid_spatial = _token_mlp(tok[2], tok[1])
        self.mapper_mid_to_fine_spatial = _token_mlp(tok[1], tok[0])
        for name in LEVELS:
            setattr(self, f"cross_att_{name}",
                    CrossAttention(d, cfg.heads, cfg.ffn, cfg.dropout, sdpa=cfg.sdpa))

    def stage_for_iteration(self, it: int, schedule: tuple[int, int, int] | None = None) -> int:
        return stage_for_iteration(it, self.cfg.schedule if schedule is None else schedule)

    def trunk(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Swin taps. GOAE taps each stage's *input*, i.e. the post-PatchMerging tensor; timm merges
        at the start of stage i+1, so a manual loop taps right after each `downsample`."""
        sw = self.swin_model
        h = sw.patch_embed(x)                       # NHWC; layers[0].downsample is Identity
        taps = []
        for stage in sw.layers:
            h = stage.downsample(h)
            taps.append(h.reshape(h.shape[0], -1, h.shape[-1]))
            for blk in stage.blocks:
                h = blk(h)
        h = sw.norm(h)
        x_base = h.reshape(h.shape[0], -1, h.shape[-1]).transpose(1, 2)
        return dict(x_fine=taps[0], x_mid=taps[1], x_coarse=taps[2],
                    x_query=taps[3].transpose(1, 2), x_base=x_base)

    @staticmethod
    def _pool_code(x: torch.Tensor, spatial: nn.Module, channel: nn.Module) -> torch.Tensor:
        # x: (B, C, tokens) -> (B, k, out): token MLP plus the token max-pool of the same x (note 2)
        return channel((spatial(x) + x.max(dim=2, keepdim=True).values).transpose(1, 2))

    def heads(self, t: dict[str, torch.Tensor], stage: int = 3, extras: bool = False):
        """w+ from taps. Only the levels active at `stage` are computed (inactive rows = base)."""
        if not 0 <= stage <= 3:
            raise ValueError(f"stage must be 0..3, got {stage}")
        base = self._pool_code(t["x_base"], self.mapper_base_spatial, self.mapper_base_channel)
        ex: dict[str, torch.Tensor] = dict(t, base_vec=base)
        deltas = []
        if stage >= 1:
            kv = self.mapper_coarse_channel(t["x_coarse"])
            ex["kv_coarse"] = kv
            if stage >= 2:
                kv = self.mapper_mid_channel(t["x_mid"]) + \
                    self.mapper_coarse_to_mid_spatial(kv.transpose(1, 2)).transpose(1, 2)
                ex["kv_mid"] = kv
            if stage >= 3:
                kv = self.mapper_fine_channel(t["x_fine"]) + \
                    self.mapper_mid_to_fine_spatial(kv.transpose(1, 2)).transpose(1, 2)
                ex["kv_fine"] = kv
            for name in LEVELS[:stage]:
                q = self._pool_code(t["x_query"], getattr(self, f"mapper_query_spatial_{name}"),
                                    getattr(self, f"mapper_query_channel_{name}"))
                ex[f"query_{name}"] = q
                deltas.append(getattr(self, f"cross_att_{name}")(q, ex[f"kv_{name}"]))
                ex[f"delta_{name}"] = deltas[-1]
        w = assemble_w_plus(base, deltas, self.cfg.query_counts)
        w_base = base.repeat(1, self.cfg.n_ws, 1)
        return (w, w_base, ex) if extras else (w, w_base)

    def forward(self, x: torch.Tensor, stage: int = 3):
        """Eq. 1 without w_avg: returns (w+ delta (B,n_ws,w_dim), base code repeated (B,n_ws,w_dim)).
        The caller adds w_avg (`add_w_avg`)."""
        return self.heads(self.trunk(x), stage)          # Eq. 1: w+ = E(I)


def assemble_w_plus(base: torch.Tensor, deltas: list[torch.Tensor], counts: tuple[int, ...]):
    """Row 0 = base; level l rows = base + delta_l if that level is active (given) else base."""
    rows = [base]
    for i, k in enumerate(counts):
        rows.append(base + deltas[i] if i < len(deltas) else base.expand(-1, k, -1))
    return torch.cat(rows, dim=1)


# ---- Swin checkpoints: Microsoft layout (GOAE, original ImageNet files) -> timm ---------------------

def microsoft_swin_to_timm(sd: dict[str, torch.Tensor], shift_downsample: bool = True) -> dict:
    """Microsoft SwinV2 keys (no prefix) -> timm keys. Rules: drop the computed buffers (timm
    recomputes them); move `layers.i.downsample` to `layers.{i+1}.downsample` (Microsoft merges at
    the end of a stage, timm at the start of the next). Everything else is named identically."""
    out = {}
    for k, v in sd.items():
        if k.rsplit(".", 1)[-1] in SWIN_COMPUTED_BUFFERS:
            continue
        if shift_downsample:
            k = re.sub(r"^layers\.(\d+)\.downsample\.",
                       lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", k)
        out[k] = v
    return out


def timm_swin_to_microsoft(sd: dict[str, torch.Tensor]) -> dict:
    """Inverse key move (buffers are added separately, see official.official_computed_buffers)."""
    return {re.sub(r"^layers\.(\d+)\.downsample\.",
                   lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", k): v for k, v in sd.items()}


def check_state_dict(module: nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """Raise one readable KeyError listing every missing, unexpected and shape-mismatched key."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(sd) if tuple(sd[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        raise KeyError(f"{what}: {len(missing)} missing, {len(unexpected)} unexpected, "
                       f"{len(shapes)} shape-mismatched keys\n  missing: {missing}\n"
                       f"  unexpected: {unexpected}\n  shape: {shapes}")


def strict_load(module: nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    check_state_dict(module, sd, what)
    module.load_state_dict(sd, strict=True)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    return sd


def load_swin_imagenet(encoder: Encoder, path: str | Path) -> None:
    """Initialise the trunk from ImageNet SwinV2 weights (Microsoft's
    swinv2_base_patch4_window12to16_192to256_22kto1k_ft.pth, or timm's model.safetensors for
    swinv2_base_window12to16_192to256.ms_in22k_ft_in1k). The classifier head is dropped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"SwinV2 ImageNet weights not found at {path}. Expected Microsoft's "
            "swinv2_base_patch4_window12to16_192to256_22kto1k_ft.pth or timm's "
            "swinv2_base_window12to16_192to256.ms_in22k_ft_in1k model.safetensors")
    sd = {k: v for k, v in _read_state_dict(path).items() if not k.startswith("head")}
    # timm's layout never has a stage-0 merge; Microsoft's always does
    sd = microsoft_swin_to_timm(sd, shift_downsample="layers.0.downsample.reduction.weight" in sd)
    strict_load(encoder.swin_model, sd, f"SwinV2 ImageNet weights {path.name}")
