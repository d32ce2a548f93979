"""The embedded tiny world: a small EG3D that renders its own datasets, with exact cameras and depths.

Without weights or internet, the pipeline still needs faces to invert. The world is a tiny randomly
initialised EG3D (fixed seed; `w_avg` estimated from its mapping network) that renders
- `train`:  identities at random yaw/pitch (the FFHQ stand-in),
- `celeba`: near-frontal identities (the CelebA-HQ test stand-in),
- `mead`:   identities × yaw {0, ±30°, ±60°} (the MEAD stand-in), one w per identity,
with ground-truth w, exact ray-distance depth maps and opacity, plus the real photos installed packages
ship (`wild`). `data.gap` > 0 renders them with the teacher (goae.data.teacher): the same generator plus
a per-identity 3D detail field no w+ expresses, the embedded stand-in for real photos' domain gap. Identities are mapped with the canonical camera (as EG3D's gen_samples.py does), so the
world lives in the canonical latent space W_c the paper inverts into.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from goae.data.dataset import save_png, write_dataset_json, write_json_atomic
from goae.data.teacher import add_detail
from goae.eg3d import camera as cam
from goae.eg3d.generator import TriPlaneGenerator

SR_BY_RESOLUTION = {128: "SuperresolutionHybrid2X", 256: "SuperresolutionHybrid4X", 512: "SuperresolutionHybrid8XDC"}


def ffhq_rendering_kwargs(depth_resolution: int = 48, depth_resolution_importance: int = 48,
                          img_resolution: int = 512) -> dict:
    """EG3D `--cfg=ffhq` rendering kwargs (facts §2.3), sample counts and SR class by argument."""
    return dict(
        image_resolution=img_resolution, disparity_space_sampling=False, clamp_mode="softplus",
        superresolution_module=f"training.superresolution.{SR_BY_RESOLUTION[img_resolution]}",
        c_gen_conditioning_zero=False, gpc_reg_prob=0.5, c_scale=1.0, superresolution_noise_mode="none",
        density_reg=0.25, density_reg_p_dist=0.004, reg_type="l1", decoder_lr_mul=1.0, sr_antialias=True,
        depth_resolution=depth_resolution, depth_resolution_importance=depth_resolution_importance,
        ray_start=2.25, ray_end=3.3, box_warp=1, avg_camera_radius=2.7, avg_camera_pivot=[0, 0, 0.2])


def embedded_generator_config(gcfg) -> dict:
    """{init_kwargs, rendering_kwargs, neural_rendering_resolution} of the embedded generator."""
    init_kwargs = dict(
        z_dim=512, c_dim=25, w_dim=512, img_resolution=gcfg.img_resolution, img_channels=3,
        sr_num_fp16_res=4, mapping_kwargs={"num_layers": 2}, channel_base=gcfg.channel_base,
        channel_max=gcfg.channel_max, fused_modconv_default="inference_only", num_fp16_res=0,
        conv_clamp=None, sr_kwargs={"channel_base": 32768, "channel_max": 512,
                                    "fused_modconv_default": "inference_only",
                                    "channel_divisor": gcfg.sr_channel_divisor})
    rk = ffhq_rendering_kwargs(gcfg.depth_resolution, gcfg.depth_resolution_importance, gcfg.img_resolution)
    return {"init_kwargs": init_kwargs, "rendering_kwargs": rk,
            "neural_rendering_resolution": gcfg.neural_rendering_resolution}


@torch.no_grad()
def estimate_w_avg(G: TriPlaneGenerator, n: int, generator: torch.Generator, device, batch: int = 500) -> torch.Tensor:
    """Mean mapping output under the canonical camera (EG3D tracks it as an EMA while training)."""
    total = torch.zeros(G.w_dim if hasattr(G, "w_dim") else 512, dtype=torch.float64)
    done = 0
    while done < n:
        b = min(batch, n - done)
        z = torch.randn(b, G.z_dim, generator=generator).to(device)
        c = cam.canonical_camera(b, device=device)
        w = G.mapping(z, c, truncation_psi=1.0)[:, 0]
        total += w.double().sum(0).cpu()
        done += b
    return (total / n).float()


def build_embedded_generator(gcfg, device="cpu") -> tuple[TriPlaneGenerator, dict]:
    """Deterministic tiny EG3D from `generator.seed` (official init + the fixtures' bias perturbation)."""
    cfg = embedded_generator_config(gcfg)
    G = TriPlaneGenerator(**cfg["init_kwargs"], rendering_kwargs=cfg["rendering_kwargs"], init_seed=gcfg.seed)
    G.neural_rendering_resolution = cfg["neural_rendering_resolution"]
    g = torch.Generator().manual_seed(gcfg.seed + 1)
    with torch.no_grad():
        # The OSG decoder draws its official init from the global RNG; redraw it from `g` so the world
        # depends on generator.seed alone (weights stored divided by lr_mul, biases 0, as official).
        lr_mul = float(cfg["rendering_kwargs"].get("decoder_lr_mul", 1.0))
        for fc in (G.decoder.net[0], G.decoder.net[2]):
            fc.weight.copy_(torch.randn(fc.weight.shape, generator=g) / lr_mul)
            fc.bias.zero_()
        # Like the EG3D fixtures: official init leaves biases/noise at 0, which would make every identity
        # share the same bias path; a small perturbation gives the world varied, non-degenerate scenes.
        for name, p in list(G.named_parameters()):
            if name.endswith("bias") or name.endswith("noise_strength"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        # A random OSG decoder renders a thin, uniform fog: near-constant colour and opacity ≈ 0.2. Scaling
        # its weights (×2 input layer; ×4 colour rows, ×2 density row) and centring the colour biases makes
        # the colour and density follow the tri-plane features, so scenes have visible structure, depth
        # relief; `calibrate_density` then sets the density bias for a foreground/background split.
        net = G.decoder.net
        net[0].weight.mul_(2.0)
        net[2].weight[1:].mul_(4.0)
        net[2].weight[0].mul_(2.0)
        net[2].bias[1:].zero_()
    G = G.to(device).eval().requires_grad_(False)
    G.backbone.mapping.w_avg.copy_(estimate_w_avg(G, gcfg.w_avg_samples, g, device).to(device))
    calibrate_density(G, device)
    cfg["provenance"] = {"kind": "embedded", "seed": gcfg.seed, "w_avg_samples": gcfg.w_avg_samples}
    return G, cfg


@torch.no_grad()
def calibrate_density(G, device, target: float = 0.45, n: int = 8, iters: int = 10) -> float:
    """Bisect the raw-density bias so the median rendered opacity of canonical samples is `target`.
    Gives the world a foreground/background split (used by the opacity mask, davg.opacity_min)
    independent of the exact random init."""
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(12345)).to(device)
    c = cam.canonical_camera(n, device=device)
    ws = G.mapping(z, c)
    bias = G.decoder.net[2].bias
    lo, hi = float(bias[0]) - 8.0, float(bias[0]) + 8.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        bias[0] = mid
        gen = torch.Generator(device=device).manual_seed(0)
        op = G.synthesis(ws, c, generator=gen, superresolution=False)["weights_sum"].median()
        lo, hi = (mid, hi) if op < target else (lo, mid)
    bias[0] = 0.5 * (lo + hi)
    return float(bias[0])


@torch.no_grad()
def render_views(G, ws: torch.Tensor, labels: torch.Tensor, seed: int, gap: float = 0.0,
                 detail_seeds: list[int] | None = None) -> dict:
    """Render one batch; the renderer's two random draws come from an explicit generator. gap > 0: the
    teacher (goae.data.teacher) renders, with one detail field per identity (`detail_seeds`)."""
    gen = torch.Generator(device=ws.device).manual_seed(seed)
    if gap == 0:
        out = G.synthesis(ws, labels, noise_mode="const", generator=gen)
    else:
        _, planes = G._run_backbone(ws, noise_mode="const", generator=gen)
        out = G.render_planes(add_detail(planes, detail_seeds, gap), labels, ws, noise_mode="const", generator=gen)
    res = out["image_depth"].shape[-1]
    ws_sum = out["weights_sum"].reshape(ws.shape[0], 1, res, res)
    return {"image": out["image"].clamp(-1, 1), "depth": out["image_depth"], "opacity": ws_sum}


def _write_split(folder: Path, names, images, depths, opacity, labels, ws, meta) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "depth").mkdir(exist_ok=True)
    for i, name in enumerate(names):
        save_png(folder / name, images[i])
        np.save(folder / "depth" / (Path(name).stem + ".npy"), depths[i, 0].cpu().numpy().astype(np.float32))
        np.save(folder / "depth" / (Path(name).stem + ".opacity.npy"), opacity[i, 0].cpu().numpy().astype(np.float32))
    write_dataset_json(folder, [(n, labels[i].tolist()) for i, n in enumerate(names)])
    save_file({"ws": ws.contiguous().cpu(), "labels": labels.contiguous().cpu()}, str(folder / "latents.safetensors"))
    write_json_atomic(folder / "meta.json", meta)


def _render_split(G, folder, names, ws, labels, seed, batch, desc, meta, gap=0.0, detail_seeds=None):
    imgs, deps, ops = [], [], []
    for s in tqdm(range(0, len(names), batch), desc=desc, leave=False):
        r = render_views(G, ws[s:s + batch], labels[s:s + batch], seed + s, gap,
                         None if detail_seeds is None else detail_seeds[s:s + batch])
        imgs.append(r["image"].cpu()); deps.append(r["depth"].cpu()); ops.append(r["opacity"].cpu())
    _write_split(folder, names, torch.cat(imgs), torch.cat(deps), torch.cat(ops), labels.cpu(), ws.cpu(), meta)


DETAIL_SPLIT = {"train": 1, "celeba": 2, "mead": 3}


def detail_seeds(data_seed: int, split: str, ids) -> list[int]:
    """Seeds of the teacher's per-identity detail: distinct per data seed, split and identity."""
    return [(data_seed * 4 + DETAIL_SPLIT[split]) * 1_000_003 + i for i in ids]


def _codes(G, n, g, device):
    z = torch.randn(n, G.z_dim, generator=g).to(device)
    return G.mapping(z, cam.canonical_camera(n, device=device), truncation_psi=1.0)


@torch.no_grad()
def render_world(G, dcfg, out_dir: str | Path, device="cpu", batch: int = 8) -> dict:
    """Render train / celeba / mead (+ wild photos) under `out_dir`; returns a summary."""
    out_dir = Path(out_dir)
    g = torch.Generator().manual_seed(dcfg.seed)
    gap = float(dcfg.gap)
    summary = {"gap": gap}

    # train: random poses (uniform yaw/pitch within the configured range around frontal)
    n = dcfg.n_train
    ws = _codes(G, n, g, device)
    yaw = (torch.rand(n, generator=g) * 2 - 1) * math.radians(dcfg.train_yaw_deg)
    pitch = (torch.rand(n, generator=g) * 2 - 1) * math.radians(dcfg.train_pitch_deg)
    labels = cam.yaw_pitch_camera(yaw, pitch, device=device)
    names = [f"img{i:05d}.png" for i in range(n)]
    _render_split(G, out_dir / "train", names, ws, labels, 10_000, batch, "world/train",
                  {"split": "train", "yaw_deg": yaw.rad2deg().tolist(), "pitch_deg": pitch.rad2deg().tolist(),
                   "gap": gap}, gap, detail_seeds(dcfg.seed, "train", range(n)))
    summary["train"] = n

    # celeba: near-frontal input views (small pose jitter)
    n = dcfg.n_celeba
    ws = _codes(G, n, g, device)
    yaw = torch.randn(n, generator=g) * math.radians(8.0)
    pitch = torch.randn(n, generator=g) * math.radians(4.0)
    labels = cam.yaw_pitch_camera(yaw, pitch, device=device)
    names = [f"img{i:05d}.png" for i in range(n)]
    _render_split(G, out_dir / "celeba", names, ws, labels, 20_000, batch, "world/celeba",
                  {"split": "celeba", "yaw_deg": yaw.rad2deg().tolist(), "pitch_deg": pitch.rad2deg().tolist(),
                   "gap": gap}, gap, detail_seeds(dcfg.seed, "celeba", range(n)))
    summary["celeba"] = n

    # mead: one code per identity, rendered at every yaw (pitch 0)
    ids, yaws = dcfg.n_mead_ids, [float(y) for y in dcfg.mead_yaws_deg]
    w_id = _codes(G, ids, g, device)
    ws = w_id.repeat_interleave(len(yaws), 0)
    yaw = torch.tensor(yaws).repeat(ids)
    labels = cam.yaw_pitch_camera(yaw.deg2rad(), torch.zeros_like(yaw), device=device)
    names = [f"id{i:03d}_yaw{int(round(y)):+03d}.png" for i in range(ids) for y in yaws]
    groups = {f"id{i:03d}": names[i * len(yaws):(i + 1) * len(yaws)] for i in range(ids)}
    # one detail field per identity, the same at every yaw: novel views see the same 3D detail
    id_seeds = detail_seeds(dcfg.seed, "mead", range(ids))
    _render_split(G, out_dir / "mead", names, ws, labels, 30_000, batch, "world/mead",
                  {"split": "mead", "yaws_deg": yaws, "identities": groups, "gap": gap}, gap,
                  [s for s in id_seeds for _ in yaws])
    summary["mead"] = len(names)

    if dcfg.photos:
        summary["wild"] = copy_packaged_photos(out_dir / "wild")
    return summary


def copy_packaged_photos(folder: str | Path) -> list[str]:
    """The public-domain portraits that scikit-image and matplotlib ship (offline-assets.md §10)."""
    from PIL import Image
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        import skimage.data
        Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
        written.append("astronaut.png")
    except Exception as e:  # pragma: no cover - depends on the installed packages
        print(f"world: skimage astronaut unavailable ({e})")
    try:
        import matplotlib.cbook
        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            (folder / "grace_hopper.jpg").write_bytes(f.read())
        written.append("grace_hopper.jpg")
    except Exception as e:  # pragma: no cover
        print(f"world: matplotlib grace_hopper unavailable ({e})")
    return written


def clear(folder: str | Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
