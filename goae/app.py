"""What the `goae` command does: load the pipeline's models (or stand-ins), invert photos, render views,
videos and meshes, edit, convert checkpoints. goae.cli only parses arguments and calls these."""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


# ---------------------------------------------------------------------------------------- models

@dataclass
class Loaded:
    model: object
    provenance: dict
    stand_in: bool


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_models(models: Path, device, goae_prefix: str | None = None, params_path: str = "params.yaml") -> Loaded:
    from goae.config import Params, load_params
    from goae.model.goae import GOAE
    from goae.train import common
    prov, stand_in = {}, False
    p = load_params(params_path) if Path(params_path).is_file() else Params()
    if (models / "generator" / "source.json").is_file():
        G, gcfg = common.load_generator(models / "generator", device)
        prov["generator"] = gcfg.get("provenance")
        stand_in |= (gcfg.get("provenance") or {}).get("kind") == "embedded"
    else:
        from goae.data.world import build_embedded_generator
        G, gcfg = build_embedded_generator(p.generator, device)  # the same tiny EG3D the pipeline builds
        prov["generator"] = "embedded tiny EG3D (random; not a face model)"
        stand_in = True
    if goae_prefix:
        from goae.model.afa import AFA, AFAConfig
        from goae.model.encoder import Encoder, EncoderConfig
        from goae.model.official import load_converted
        enc_sd, afa_sd, cfg = load_converted(goae_prefix)
        E = Encoder(EncoderConfig.from_dict(cfg["encoder"]))
        E.load_state_dict(enc_sd, strict=True)
        A = AFA(AFAConfig.from_dict(cfg["afa"]))
        A.load_state_dict(afa_sd, strict=True)
        prov["encoder"] = prov["afa"] = f"official GOAE ({goae_prefix})"
    else:
        from goae.train.stages import load_afa, load_encoder
        if (models / "stage1" / "encoder.safetensors").is_file():
            E = load_encoder(models / "stage1", device)
            prov["encoder"] = str(models / "stage1")
        else:
            E = common.build_encoder(p, {}) if p.encoder.size == "tiny" else common.Encoder(common.EncoderConfig.tiny())
            prov["encoder"] = "untrained (random init)"
            stand_in = True
        if (models / "stage2" / "afa.safetensors").is_file():
            A = load_afa(models / "stage2", device)
            prov["afa"] = str(models / "stage2")
        else:
            A = common.build_afa(p, G)
            prov["afa"] = "untrained (random init)"
            stand_in = True
    model = GOAE(G, E.eval(), A.eval(), p.mix).to(device).eval()
    return Loaded(model, prov, stand_in)


# -------------------------------------------------------------------------------------- outputs

def depth_png(depth: torch.Tensor) -> np.ndarray:
    """Min-max normalised depth (near = bright), as GOAE's maintainers suggest for saving depth."""
    d = depth[0].float().cpu()
    d = (d.max() - d) / (d.max() - d.min()).clamp_min(1e-8)
    return (d * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def orbit_cameras(n: int, device, yaw_range: float = 0.35, pitch_amp: float = 0.25) -> torch.Tensor:
    """GOAE's video path: yaw = 0.35·sin, pitch = −0.05 + 0.25·cos over one turn (facts §3.7)."""
    from goae.eg3d import camera as cam
    t = torch.linspace(0, 2 * math.pi, n + 1)[:-1]
    return cam.yaw_pitch_camera(yaw_range * torch.sin(t), -0.05 + pitch_amp * torch.cos(t), device=device)


def view_cameras(n: int, device, max_yaw_deg: float = 30.0) -> torch.Tensor:
    from goae.eg3d import camera as cam
    yaw = torch.linspace(-max_yaw_deg, max_yaw_deg, n).deg2rad() if n > 1 else torch.zeros(1)
    return cam.yaw_pitch_camera(yaw, torch.zeros_like(yaw), device=device)


@torch.no_grad()
def density_grid(G, planes: torch.Tensor, res: int = 96, chunk: int = 1 << 16) -> np.ndarray:
    """σ-density (softplus(σ−1), as the marcher) on a res³ grid over EG3D's box."""
    from goae.eg3d.renderer import generate_planes, sample_from_planes
    box = float(G.rendering_kwargs["box_warp"])
    lin = torch.linspace(-box / 2, box / 2, res, device=planes.device)
    pts = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(1, -1, 3)
    axes = generate_planes().to(planes.device)
    out = []
    for s in range(0, pts.shape[1], chunk):
        feats = sample_from_planes(axes, planes[:1], pts[:, s:s + chunk], box_warp=box)
        out.append(G.decoder(feats, None)["sigma"][0, :, 0])
    sigma = torch.cat(out).reshape(res, res, res)
    return torch.nn.functional.softplus(sigma - 1).cpu().numpy()


def write_ply(path: Path, verts: np.ndarray, faces: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write((f"ply\nformat binary_little_endian 1.0\nelement vertex {len(verts)}\n"
                 "property float x\nproperty float y\nproperty float z\n"
                 f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n").encode())
        f.write(verts.astype("<f4").tobytes())
        tri = np.empty(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
        tri["n"], tri["i"] = 3, faces
        f.write(tri.tobytes())


def extract_mesh(G, planes, path: Path, res: int = 96, level: float | None = None) -> dict:
    from skimage import measure
    dens = density_grid(G, planes, res)
    if level is None:  # EG3D's shapes use σ-level 10 for real models; fall back inside the data range
        level = 10.0 if dens.min() < 10.0 < dens.max() else float(np.percentile(dens, 75))
    verts, faces, _, _ = measure.marching_cubes(dens, level=level)
    box = float(G.rendering_kwargs["box_warp"])
    verts = verts / (res - 1) * box - box / 2
    write_ply(path, verts, faces)
    return {"vertices": int(len(verts)), "faces": int(len(faces)), "level": float(level)}


# ------------------------------------------------------------------------------------- commands

def _progress(items, desc):
    from tqdm import tqdm
    return tqdm(items, desc=desc, unit="img")


def cmd_invert(args) -> int:
    from safetensors.torch import save_file
    from goae.data.dataset import image_to_tensor, save_png, write_json_atomic
    from goae.data.io import write_png_atomic
    from goae.data.photos import prepare_photos
    device = _device(args.device)
    L = load_models(Path(args.models), device, args.goae, args.params)
    G = L.model.G
    out = Path(args.out)
    crops = out / "_crops"
    from goae.data.photos import collect_files
    files = collect_files(args.inputs, exclude=out)  # folders: every file (non-images get a reason)
    if not files:
        print("goae invert: no input files", file=sys.stderr)
        return 2
    report = prepare_photos(files, crops, detector=args.detector, output_size=G.img_resolution,
                            min_face_px=args.min_face, device=device, fan_weights=args.fan_weights)
    from goae.data.dataset import read_dataset_json
    labels = dict(read_dataset_json(crops)) if (crops / "dataset.json").is_file() else {}
    gen = torch.Generator(device=device).manual_seed(args.seed)
    for key, r in _progress(list(report.items()), "invert"):
        if r["status"] != "ok":
            continue
        try:
            from PIL import Image
            name = r["output"]
            img = image_to_tensor(np.asarray(Image.open(crops / name).convert("RGB")))[None].to(device)
            c = torch.tensor(labels[name], dtype=torch.float32, device=device)[None]
            res = L.model.invert(img, c, use_mix=not args.no_mix, generator=gen)
            d = out / Path(name).stem
            d.mkdir(parents=True, exist_ok=True)
            write_png_atomic(d / "crop.png", np.asarray(Image.open(crops / name).convert("RGB")))
            (d / "camera.json").write_text(json.dumps({"label": labels[name], "convention": "EG3D 25-value",
                                                         "pose": r.get("pose")}))
            tensors = {"w_plus": res.w_plus[0].cpu().contiguous()}
            if res.feat_star is not None:
                tensors["feat_star"] = res.feat_star[0].cpu().contiguous()
            save_file(tensors, str(d / "latents.safetensors"))
            save_png(d / "reconstruction.png", res.image[0].clamp(-1, 1))
            write_png_atomic(d / "depth.png", np.repeat(depth_png(res.depth[0])[..., None], 3, -1))
            outputs = ["crop.png", "camera.json", "latents.safetensors", "reconstruction.png", "depth.png"]
            if args.views:
                cams = view_cameras(args.views, device)
                for i in range(args.views):
                    v = L.model.render(res, cams[i:i + 1], gen)
                    save_png(d / f"view_{i:02d}.png", v["image"][0].clamp(-1, 1))
                    outputs.append(f"view_{i:02d}.png")
            if args.video:
                import imageio.v2 as imageio
                from goae.data.dataset import tensor_to_image
                cams = orbit_cameras(args.video_frames, device)
                frames = [tensor_to_image(L.model.render(res, cams[i:i + 1], gen)["image"][0].clamp(-1, 1))
                          for i in range(len(cams))]
                try:
                    imageio.mimsave(d / "orbit.mp4", frames, fps=24, macro_block_size=1)
                    outputs.append("orbit.mp4")
                except Exception:  # no ffmpeg backend: a GIF always works
                    imageio.mimsave(d / "orbit.gif", frames, duration=1 / 24)
                    outputs.append("orbit.gif")
            if args.mesh:
                r["mesh"] = extract_mesh(G, res.planes, d / "mesh.ply", args.mesh_res)
                outputs.append("mesh.ply")
            r["outputs"] = outputs
        except Exception as e:
            r.update(status="failed", reason="inversion_error", detail=f"{type(e).__name__}: {e}")
    ok = sum(r["status"] == "ok" for r in report.values())
    summary = {"ok": ok, "failed": len(report) - ok, "weights": L.provenance, "stand_in_weights": L.stand_in,
               "note": ("stand-in weights: the embedded tiny generator and/or an untrained encoder — outputs "
                        "show the machinery, not a face model") if L.stand_in else "trained weights"}
    write_json_atomic(out / "report.json", {"summary": summary, "files": report})
    print(json.dumps(summary, indent=1))
    for k, r in report.items():
        if r["status"] != "ok":
            print(f"  {k}: {r['reason']} — {r.get('detail', '')}")
    return 0 if ok == len(report) else (1 if ok else 2)


def cmd_pose(args) -> int:
    from goae.data.photos import pose_photos
    res = pose_photos(args.inputs, args.out, detector=args.detector, output_size=args.size, device=args.device,
                      fan_weights=args.fan_weights, pose_depth=args.pose_depth)
    print(json.dumps(res["summary"], indent=1))
    bad = {k: r for k, r in res["files"].items() if r["status"] != "ok"}
    for k, r in bad.items():
        print(f"  {k}: {r['reason']} — {r.get('detail', '')}")
    return 1 if bad else 0


def cmd_edit(args) -> int:
    from goae.data.dataset import image_to_tensor, read_dataset_json, save_png, write_json_atomic
    from goae.data.photos import prepare_photos
    from goae.model.edit import edit_features, edit_w_plus, load_direction
    from PIL import Image
    device = _device(args.device)
    L = load_models(Path(args.models), device, args.goae, args.params)
    G, out = L.model.G, Path(args.out)
    report = prepare_photos([Path(args.photo)], out / "_crops", detector=args.detector,
                            output_size=G.img_resolution, device=device, fan_weights=args.fan_weights)
    r = next(iter(report.values()))
    if r["status"] != "ok":
        print(f"goae edit: {args.photo}: {r['reason']} — {r.get('detail', '')}", file=sys.stderr)
        return 2
    name = r["output"]
    img = image_to_tensor(np.asarray(Image.open(out / "_crops" / name).convert("RGB")))[None].to(device)
    c = torch.tensor(dict(read_dataset_json(out / "_crops"))[name], device=device)[None]
    gen = torch.Generator(device=device).manual_seed(args.seed)
    res = L.model.invert(img, c, generator=gen)
    d = load_direction(args.direction).to(device)
    cams = view_cameras(args.views, device)
    feat_fn = lambda w: G.synthesis_to_F(w)[1]  # noqa: E731  F(·): the 32² generator feature (Eq. 9)
    for a in args.alpha:
        w_hat = edit_w_plus(res.w_plus, d, a)
        f_hat = edit_features(res.feat_star, feat_fn, res.w_plus, w_hat)   # Eq. 9
        skip, _ = G.synthesis_to_F(w_hat)
        # release Net.edit: edited F̂* and skip image, the reconstruction's w+ for b64+; the SR gets ŵ+
        out_f = G.synthesis_from_F(f_hat, skip, res.w_plus, c, generator=gen)
        planes, _ = L.model.mix(out_f, G.synthesis(w_hat, c, generator=gen)["planes"], gen)
        for i in range(len(cams)):
            v = G.render_planes(planes, cams[i:i + 1], w_hat, generator=gen)
            save_png(out / f"alpha{a:+.2f}_view{i:02d}.png", v["image"][0].clamp(-1, 1))
    write_json_atomic(out / "report.json", {"weights": L.provenance, "stand_in_weights": L.stand_in,
                                            "alphas": args.alpha, "direction": str(args.direction)})
    print(f"wrote {len(args.alpha) * len(cams)} edited views to {out} (weights: {L.provenance})")
    return 0


def cmd_convert_eg3d(args) -> int:
    from goae.eg3d.checkpoint import convert_eg3d_pickle
    meta = convert_eg3d_pickle(args.pkl, args.out)
    print(json.dumps({k: meta[k] for k in meta if k != "state_dict"}, indent=1, default=str)[:4000])
    return 0


def cmd_convert_goae(args) -> int:
    from goae.model.official import convert_goae
    convert_goae(args.encoder, args.afa, args.out)
    print(f"wrote {args.out}.safetensors + {args.out}.json")
    return 0


def cmd_sample(args) -> int:
    from goae.data.dataset import save_png
    device = _device(args.device)
    L = load_models(Path(args.models), device, None, args.params)
    G = L.model.G
    g = torch.Generator().manual_seed(args.seed)
    from goae.eg3d import camera as cam
    z = torch.randn(args.n, G.z_dim, generator=g).to(device)
    ws = G.mapping(z, cam.canonical_camera(args.n, device=device), truncation_psi=args.psi)
    cams = view_cameras(3, device)
    out = Path(args.out)
    for i in range(args.n):
        for j in range(3):
            o = G.synthesis(ws[i:i + 1], cams[j:j + 1], generator=torch.Generator(device=device).manual_seed(i))
            save_png(out / f"sample{i:02d}_view{j}.png", o["image"][0].clamp(-1, 1))
    print(f"wrote {3 * args.n} images to {out} (generator: {L.provenance['generator']})")
    return 0


def cmd_sync(args) -> int:
    from goae import tracking
    print(f"tagged {tracking.sync_exp_refs(args.root)} run(s)")
    return 0
