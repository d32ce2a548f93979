"""Diagnostic (not a metric of the paper): where on MEAD novel views do w+, F* (no mix) and the mix differ?

Claim (b) of the ablation (mix < no-mix on novel-view LPIPS) needs w+ to be no worse than F* on the part
of a novel view the source view did not see, since that is where the mix renders w+ features. This
splits every MEAD novel-view error of the protocol (same inversions, same render draws as
goae.metrics.protocols, so the whole-image LPIPS equals the official numbers) into regions:

  vis   face pixels (GT opacity >= 0.4) whose GT surface point was visible from the source camera: the
        target's exact depth back-projected, projected into the source view, and compared with the
        source's exact depth there (visible when not farther than it + `tol` world units, and the source
        pixel is face too)
  occ   the other face pixels (seen by the target, not by the source)
  occ_sure / amb  occ split into points clearly behind the source's depth (by more than `margin`, or
        outside its face / image) and the ambiguous rest. The embedded world is volumetric: its exact
        depth is the expected depth of a soft density (face depths span the whole box), so depths of two
        views agree only loosely and about half of a 30° novel view lands in occ at tol 0.05
  bg    non-face pixels
  mixF / mixW  face pixels whose surface point the mix renders mostly from F* / from w+ (mean over the
        three planes of the mix's own visibility mask at that point > 0.5 / <= 0.5)

Per region: MSE (pooled over the region's pixels of all targets of a source, images in [-1,1]), its
low-pass part mse_lo (the squared difference of the two images Gaussian-blurred with σ = LOWPASS_SIGMA px
at 128²: identity-level, smooth errors; the teacher's detail has periods of ~10-35 px) and a
region LPIPS = LPIPS(GT with the region pasted from the render, GT), which isolates the region's share
of the LPIPS error. Groups as the protocol: yaw_pm60 = mean of the -60 and +60 sources, yaw_0, and
"mead" = their mean (what the ablation's novel-view check averages).

    python benchmarks/mix_regions.py --stage1 models/stage1 --stage2 models/stage2 --mead data/prepared/mead
    python benchmarks/ablation.py --sweep ... --regions     # the same for every sweep evaluation
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from goae.model.mix import PLANE_AXES  # noqa: E402  (column, row) world axes of planes XY, XZ, ZX

VARIANTS = {"wplus": "planes_wplus", "nomix": "planes_fstar", "mix": "planes_mix"}
REGIONS = ("vis", "occ", "occ_sure", "amb", "bg", "mixF", "mixW")
LOWPASS_SIGMA = 6.0   # px at the 128² output; scaled with the image size


def target_points(G, labels: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """World points [B,M,3] of the depth maps [B,1,r,r] (ray distance) at cameras `labels`."""
    r = depth.shape[-1]
    o, d = G.ray_sampler(labels[:, :16].reshape(-1, 4, 4), labels[:, 16:25].reshape(-1, 3, 3), r)
    return o + depth.flatten(2).transpose(1, 2) * d


def visible_from(points: torch.Tensor, src_labels: torch.Tensor, src_depth: torch.Tensor, src_face: torch.Tensor,
                 tol: float, margin: float | None = None) -> torch.Tensor:
    """[B,M] bool: point seen by the source camera (projects inside its image onto a face pixel whose depth
    is not nearer than the point's distance - tol). With `margin`: instead, point clearly NOT seen (outside
    the image or the source face, or farther than the source depth + margin)."""
    c2w, K = src_labels[:, :16].reshape(-1, 4, 4), src_labels[:, 16:25].reshape(-1, 3, 3)
    R, t = c2w[:, :3, :3], c2w[:, :3, 3]
    pc = torch.einsum("bji,bmj->bmi", R, points - t[:, None])       # R^T (p - t): camera coordinates
    z = pc[..., 2].clamp_min(1e-6)
    u = K[:, None, 0, 0] * pc[..., 0] / z + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * pc[..., 1] / z + K[:, None, 1, 2]
    inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1) & (pc[..., 2] > 0)
    grid = torch.stack([u * 2 - 1, v * 2 - 1], -1)[:, None]          # [B,1,M,2], align_corners=False
    d_src = torch.nan_to_num(src_depth, nan=1e3)
    ds = F.grid_sample(d_src, grid, mode="nearest", align_corners=False)[:, 0, 0]
    fs = F.grid_sample(src_face.float(), grid, mode="nearest", align_corners=False)[:, 0, 0] > 0.5
    dist = (points - t[:, None]).norm(dim=-1)
    if margin is not None:
        return ~(inside & fs) | (dist > ds + margin)
    return inside & fs & (dist <= ds + tol)


def mix_weight(masks: torch.Tensor, points: torch.Tensor, box_warp: float) -> torch.Tensor:
    """[B,M]: mean over the three planes of the mix mask [B,3,1,H,W] at the points (1 = all F*)."""
    g = points * (2.0 / box_warp)
    w = []
    for p, (a_col, a_row) in enumerate(PLANE_AXES):
        grid = torch.stack([g[..., a_col], g[..., a_row]], -1)[:, None]
        w.append(F.grid_sample(masks[:, p].float(), grid.float(), mode="bilinear", padding_mode="border",
                               align_corners=False)[:, 0, 0])
    return torch.stack(w).mean(0)


def lowpass(x: torch.Tensor) -> torch.Tensor:
    from goae.model.mix import gaussian_blur
    sigma = LOWPASS_SIGMA * x.shape[-1] / 128
    k = 2 * int(3 * sigma) + 1
    return gaussian_blur(x, sigma, k)


def _up(m: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(m.float(), size=(size, size), mode="nearest") > 0.5


@torch.no_grad()
def region_errors(q, G, stage1_dir, stage2_dir, mead_dir, device, tol: float = 0.05, margin: float = 0.25,
                  lpips_net=None) -> dict:
    """Per source yaw and group: {variant: {region: {mse, lpips}, all: {...}}}, region pixel fractions."""
    from goae.metrics.image import lpips_distance
    from goae.metrics.protocols import MEAD_GROUPS, EvalProtocol, _gen, _yaw_pos, build_metric_nets, load_split
    from goae.model.goae import GOAE
    from goae.model.io import load_afa, load_encoder
    from goae.params_view import whole_section
    device = torch.device(device)
    proto = EvalProtocol("mead", seed=q.eval.seed, fid=False, metric_size=q.eval.metric_size)
    data = load_split(mead_dir, "mead", q.eval.n_mead_ids, G.img_resolution, proto.opacity_min)
    if data.depth is None:
        raise ValueError(f"{mead_dir}: no exact depth ({data.depth_note})")
    lp = lpips_net or build_metric_nets(q, device, {}).lpips   # the protocol's LPIPS net
    model = GOAE(G, load_encoder(stage1_dir, device), load_afa(stage2_dir, device), whole_section(q, "mix"))
    model = model.to(device).eval()
    box = float(G.rendering_kwargs["box_warp"])
    ids, yaws = data.identities, data.yaws
    per_source = {}
    for y_src in sorted({y for g in proto.groups.values() for y in g}):
        j = _yaw_pos(yaws, y_src)
        if j is None:
            continue
        # per region: squared-error sum, pixels, LPIPS values, low-pass squared-error sum
        acc = {v: {r: [0.0, 0, [], 0.0] for r in (*REGIONS, "all")} for v in VARIANTS}
        for s in range(0, len(ids), proto.batch_size):
            chunk = ids[s:s + proto.batch_size]
            src = [v[j] for v in chunk]
            x, c = data.images[src].to(device), data.labels[src].to(device)
            h = model.invert(x, c, use_afa=True, use_mix=True, generator=_gen(proto, device, "invert", y_src, s))
            for k in range(len(yaws)):
                if k == j:
                    continue
                tgt = [v[k] for v in chunk]
                ct = data.labels[tgt].to(device)
                dt, ft = data.depth[tgt].to(device), data.face[tgt].to(device)
                pts = target_points(G, ct, torch.nan_to_num(dt, nan=0.0))
                vis = visible_from(pts, c, data.depth[src].to(device), data.face[src].to(device), tol)
                hid = visible_from(pts, c, data.depth[src].to(device), data.face[src].to(device), tol, margin)
                wf = mix_weight(h.masks, pts, box)
                r = dt.shape[-1]
                face = ft[:, 0].reshape(-1, r * r)
                reg32 = {"vis": face & vis, "occ": face & ~vis, "occ_sure": face & ~vis & hid,
                         "amb": face & ~vis & ~hid, "bg": ~face,
                         "mixF": face & (wf > 0.5), "mixW": face & (wf <= 0.5)}
                real = data.images[tgt].float()
                size = real.shape[-1]
                regs = {n: _up(m.reshape(-1, 1, r, r).cpu(), size) for n, m in reg32.items()}
                regs["all"] = torch.ones_like(regs["bg"])
                for vname, attr in VARIANTS.items():
                    out = model.render(h, ct, _gen(proto, device, "render", y_src, s, k), planes=getattr(h, attr))
                    fake = out["image"].detach().float().clamp(-1, 1).cpu()
                    err = (fake - real).square().mean(1, keepdim=True)
                    err_lo = (lowpass(fake) - lowpass(real)).square().mean(1, keepdim=True)
                    for rn, m in regs.items():
                        a = acc[vname][rn]
                        a[0] += float((err * m).sum())
                        a[1] += int(m.sum())
                        a[3] += float((err_lo * m).sum())
                        comp = torch.where(m, fake, real)
                        a[2] += lpips_distance(lp, comp, real, device, size=proto.metric_size).tolist()
        res = {v: {rn: {"mse": a[0] / a[1] if a[1] else float("nan"),
                        "mse_lo": a[3] / a[1] if a[1] else float("nan"),
                        "lpips": sum(a[2]) / len(a[2])} for rn, a in acc[v].items()} for v in VARIANTS}
        tot = acc["wplus"]["all"][1]
        res["fraction"] = {rn: acc["wplus"][rn][1] / tot for rn in REGIONS}
        per_source[y_src] = res
    groups = {}
    for gname, ys in MEAD_GROUPS.items():
        present = [per_source[y] for y in ys if y in per_source]
        groups[gname] = _mean(present)
    groups["mead"] = _mean([groups[g] for g in MEAD_GROUPS])
    return {"tol": tol, "margin": margin, "groups": groups, "per_source": {str(k): v for k, v in per_source.items()}}


def _mean(rows: list[dict]) -> dict:
    if isinstance(rows[0], dict):
        return {k: _mean([r[k] for r in rows]) for k in rows[0]}
    return sum(rows) / len(rows)


def describe(reg: dict, group: str = "mead") -> str:
    """Compact table: per region, MSE and region-LPIPS of w+ / no-mix / mix and the mix-nomix, wplus-nomix diffs."""
    g = reg["groups"][group]
    lines = [f"[{group}] region  frac  | MSE w+ / nomix / mix | low-pass MSE w+ / nomix / mix "
             f"| LPIPS w+ / nomix / mix | dLPIPS mix-nomix, w+-nomix"]
    for rn in (*REGIONS, "all"):
        f = g["fraction"].get(rn, 1.0)
        m = [g[v][rn]["mse"] for v in VARIANTS]
        lo = [g[v][rn]["mse_lo"] for v in VARIANTS]
        lpv = [g[v][rn]["lpips"] for v in VARIANTS]
        lines.append(f"  {rn:5s} {f:5.3f} | {m[0]:.4f} {m[1]:.4f} {m[2]:.4f} | {lo[0]:.4f} {lo[1]:.4f} {lo[2]:.4f} "
                     f"| {lpv[0]:.4f} {lpv[1]:.4f} {lpv[2]:.4f} | {lpv[2] - lpv[1]:+.4f} {lpv[0] - lpv[1]:+.4f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--stage1", default="models/stage1")
    ap.add_argument("--stage2", default="models/stage2")
    ap.add_argument("--mead", default="data/prepared/mead")
    ap.add_argument("--generator", default="models/generator")
    ap.add_argument("--tol", type=float, default=0.05, help="visibility depth tolerance (world units)")
    ap.add_argument("--margin", type=float, default=0.25, help="occ_sure: farther than the source depth + this")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    import dataclasses
    from goae.config import load_params
    from goae.runtime import pick_device
    from goae.train import common
    p = load_params(a.params)
    p = dataclasses.replace(p, eval=dataclasses.replace(p.eval, fid=False))   # only the LPIPS net is used
    if a.threads:
        p = dataclasses.replace(p, runtime=dataclasses.replace(p.runtime, threads=a.threads))
    device = pick_device(p.runtime)   # chosen once: cuda when there is one (runtime.device auto)
    G, _ = common.load_generator(Path(a.generator), device=device)
    reg = region_errors(p, G, a.stage1, a.stage2, a.mead, device, a.tol, a.margin)
    for g in ("yaw_pm60", "yaw_0", "mead"):
        print(describe(reg, g))
    if a.out:
        Path(a.out).write_text(json.dumps(reg, indent=1))
    return reg


if __name__ == "__main__":
    main()
