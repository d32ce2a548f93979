"""Evaluation outputs: metrics/eval.json (machine-readable), metrics/table1.md (Table 1 layout, ours beside
the paper's), image grids under reports/grids/ (also logged to MLflow).

eval.json: {"celeba": {method: {mse, lpips, fid, id, geo_err, time_s}},
            "mead": {method: {yaw_pm60: {lpips, fid, id, geo_err}, yaw_0: {...}, src_m60: {...}, ...}},
            "protocol": {...}, "weights": {...}, "real_weights": bool}
NaN (a metric that cannot be computed, e.g. no depth maps) is written as null.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from goae.data.dataset import write_json_atomic

# Paper Table 1 (paper-goae.txt), transcribed verbatim: input view MSE, LPIPS, FID, ID, Geo. Err., Time (s);
# yaw=±60°: LPIPS, FID, ID, Geo. Err.; yaw=0°: LPIPS, FID, ID, Geo. Err.
PAPER_ROWS = {
    "PTI [36]": ["0.0163", "0.0918", "18.0", "0.8417", "0.0850", "115.2",
                 "0.2926", "69.8", "0.621", "0.1481", "0.1925", "53.5", "0.718", "0.1006"],
    "Ours-w+": ["0.0697", "0.1981", "30.9", "0.7873", "0.1100", "0.0963",
                "0.2303", "52.2", "0.655", "0.0943", "0.2372", "54.1", "0.685", "0.0955"],
    "Ours": ["0.0301", "0.1257", "20.5", "0.8752", "0.0987", "0.2262",
             "0.2192", "50.9", "0.700", "0.0950", "0.2204", "51.7", "0.743", "0.0944"],
}
LABELS = {"goae": "Ours", "goae_wplus": "Ours-w+", "goae_nomix": "Ours (no mix)",
          "goae_official": "GOAE official weights", "pti": "PTI (w, LPIPS-VGG)",
          "pti_like": "PTI-like optim. (w+, LPIPS-alex)", "optim": "PTI-style optim."}
INPUT_COLS = [("mse", 4), ("lpips", 4), ("fid", 1), ("id", 4), ("geo_err", 4), ("time_s", 4)]
NOVEL_COLS = [("lpips", 4), ("fid", 1), ("id", 3), ("geo_err", 4)]
# what must be in the provenance of every run: a missing one is a stand-in (unknown is not real)
REQUIRED_COMPONENTS = ("generator", "encoder", "arcface", "lpips", "inception")


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and not ("kind" in v and k.rsplit(".", 1)[-1] == "generator"):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def component_stand_in(key: str, value) -> str | None:
    """Why the recorded provenance `value` of component `key` is a stand-in for what the paper used, or
    None. Decided from the provenance alone: the asset registry's kind (file / embedded / packaged /
    random, and whether a packaged file is a substitute), the LPIPS trunk, the mask provider, the
    generator kind a checkpoint was trained with."""
    from goae.assets import ASSETS
    name = key.rsplit(".", 1)[-1]
    if isinstance(value, str) and value.startswith("{"):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if isinstance(value, dict):               # generator provenance {"kind": ...}
        kind = value.get("kind")
        return None if kind in (None, "file") else f"{kind} generator"
    v = str(value)
    if name == "mask":                          # "<provider>:<weights>" (goae.train.common.build_mask)
        provider = v.split(":", 1)[0]
        if provider != "bisenet":
            return f"{provider} mask instead of BiSeNet face parsing [52]"
        return "random BiSeNet" if v.split(":", 1)[-1].startswith("random") else None
    if v in ("random", "embedded"):
        return f"{v} fallback"
    if v.startswith("packaged:") and name in ASSETS:
        a = ASSETS[name]
        return (f"packaged substitute {a.substitute} for {a.filename}"
                if a.substitute and not a.substitute_equivalent else None)
    if "trunk=random" in v:
        return "random LPIPS trunk"
    if v.startswith(("random", "untrained")):
        return "random weights"
    m = re.search(r"trained_with_generator=(\S+)", v)
    if m and m.group(1) != "file":
        return f"trained with the {m.group(1)} generator"
    return None


def components(weights: dict) -> list[tuple[str, str, str | None]]:
    """(path, provenance as text, stand-in reason or None) of every component in the provenance `weights`
    (the rows' strings under 'methods' aside)."""
    out = []
    for key, v in _leaves({k: v for k, v in weights.items() if k != "methods"}):
        out.append((key, json.dumps(v, sort_keys=True) if isinstance(v, dict) else str(v), component_stand_in(key, v)))
    return out


def stand_in_reasons(weights: dict, comps: list | None = None) -> list[str]:
    """Every component that is a stand-in, as 'path: reason (provenance)'; required components missing from
    the provenance count as stand-ins too. `comps`: `components(weights)` when already computed."""
    out = [f"{k}: missing" for k in REQUIRED_COMPONENTS if k not in weights]
    return out + [f"{key}: {why} ({v})" for key, v, why in (components(weights) if comps is None else comps) if why]


def json_safe(x):
    """NaN/inf -> None, recursively (strict JSON)."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def eval_json(results: dict, protocol: dict, weights: dict) -> dict:
    return json_safe({**results, "protocol": protocol, "weights": weights,
                   "real_weights": not stand_in_reasons(weights)})


def write_eval_json(path, results: dict, protocol: dict, weights: dict) -> dict:
    obj = eval_json(results, protocol, weights)
    write_json_atomic(path, obj)
    return obj


def flat_metrics(results: dict) -> dict[str, float]:
    """{'celeba/goae/mse': v, 'mead/goae/yaw_0/lpips': v, ...}: finite numbers only (MLflow-safe names)."""
    out = {}

    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}/")
            elif isinstance(v, (int, float)) and v is not None and math.isfinite(float(v)):
                out[f"{prefix}{k}"] = float(v)
    walk({k: results[k] for k in ("celeba", "mead") if k in results}, "")
    return out


def _fmt(v, nd: int) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{nd}f}"


def table1_markdown(results: dict, protocol: dict, weights: dict) -> str:
    comps = components(weights)
    reasons = stand_in_reasons(weights, comps)
    head = ("| Method | MSE ↓ | LPIPS ↓ | FID ↓ | ID ↑ | Geo. Err. ↓ | Time (s) ↓ "
            "| LPIPS ↓ | FID ↓ | ID ↑ | Geo. Err. ↓ | LPIPS ↓ | FID ↓ | ID ↑ | Geo. Err. ↓ |")
    lines = ["# Table 1: inversion quality (ours beside the paper's)", "",
             (f"**Weights: REAL** — the provenance of all {len(comps)} components (listed below) names real "
              "weights." if not reasons else
              "**Weights: STAND-IN** — these numbers come from stand-in weights and are NOT comparable to the "
              "paper's: " + "; ".join(reasons) + "."), "",
             "Columns: Reconstruction quality, input view (MSE … Time) | Novel view quality, source yaw = ±60° "
             "(LPIPS … Geo. Err.) | source yaw = 0°.", "",
             head, "|" + "---|" * 15]
    celeba, mead = results.get("celeba", {}), results.get("mead", {})
    for name in dict.fromkeys([*celeba, *mead]):
        c, m = celeba.get(name, {}), mead.get(name, {})
        cells = [_fmt(c.get(k), nd) for k, nd in INPUT_COLS]
        for g in ("yaw_pm60", "yaw_0"):
            cells += [_fmt(m.get(g, {}).get(k), nd) for k, nd in NOVEL_COLS]
        lines.append(f"| {LABELS.get(name, name)} (this run) | " + " | ".join(cells) + " |")
    for name, vals in PAPER_ROWS.items():
        lines.append(f"| {name} (paper) | " + " | ".join(vals) + " |")
    c, md = protocol.get("celeba", {}), protocol.get("mead", {})
    lines += ["", f"Samples: CelebA stand-in {c.get('n_images')} images; MEAD stand-in {md.get('n_identities')} "
                  f"identities × yaws {md.get('yaws_deg')} ({md.get('pairs_per_source')} pairs per source yaw); "
                  f"seed {protocol.get('seed')}.",
              "Paper: CelebA-HQ test (N unknown) and MEAD (43 identities × 5 views). FID with N ≪ 2048 is "
              "indicative only. MSE on the [-1,1] scale. Time: seconds per image on this run's device.",
              "", "Weights per row:", ""]
    for k, v in weights.get("methods", {}).items():
        lines.append(f"- `{k}`: {v}")
    lines += ["", "Provenance of every component (stand-ins marked):", ""]
    for key, v, why in comps:
        lines.append(f"- `{key}`: {v}" + (f" — **stand-in: {why}**" if why else ""))
    mix = protocol.get("mix", {})
    notes = []
    if mix:
        notes.append(f"Mix: {mix.get('params')}. {mix.get('note')}. goae_official: {mix.get('goae_official')}.")
    if protocol.get("metric_resolution"):
        notes.append(f"MSE/LPIPS computed at {protocol['metric_resolution']}.")
    for split in ("celeba", "mead"):
        g = protocol.get(split, {})
        if "geo_err" in g:
            notes.append(f"Geo. Err. ({split}): " + (g["geo_err"] if g.get("geo_err_available") else
                                                      f"not available ({g['geo_err']}): shown as –, never estimated."))
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def label_grid(grid, tile_h: int, tile_w: int, columns: list[str] | None, rows: list[str] | None):
    """Draw column labels in a strip above a tiled HWC uint8 grid and row labels in a strip left of it, so
    the PNG reads without index.json. Text is PIL's built-in bitmap font (no font file needed)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont
    font = ImageFont.load_default()
    measure = lambda t: ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), t, font=font)  # noqa: E731
    top = (max(measure(t)[3] for t in columns) + 6) if columns else 0
    left = (max(measure(t)[2] for t in rows) + 8) if rows else 0
    h, w = grid.shape[:2]
    canvas = Image.new("RGB", (left + w, top + h), (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (left, top))
    draw = ImageDraw.Draw(canvas)
    for i, t in enumerate(columns or []):
        x0, _, x1, _ = measure(t)
        draw.text((left + i * tile_w + (tile_w - (x1 - x0)) // 2, 3), t, fill=(0, 0, 0), font=font)
    for i, t in enumerate(rows or []):
        _, y0, _, y1 = measure(t)
        draw.text((4, top + i * tile_h + (tile_h - (y1 - y0)) // 2), t, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def save_grids(samples: dict, out_dir, log: bool = True) -> list[Path]:
    """One PNG per (protocol, method): rows as stored by evaluate_method, their labels drawn left and the
    column labels (`columns`) on top; also logged to MLflow (unlabelled tiles)."""
    import torch
    from PIL import Image

    from goae import tracking
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, index = [], {}
    for proto, per_method in samples.items():
        for method, s in per_method.items():
            if not s.get("rows"):
                continue
            nrow = s["nrow"]
            rows = [r[:nrow] for r in s["rows"]]
            imgs = torch.cat([torch.cat([r, r.new_full((nrow - r.shape[0], *r.shape[1:]), -1.0)])
                              for r in rows])     # pad short rows with black
            name = f"{proto}_{method}"
            path = out_dir / f"{name}.png"
            grid = label_grid(tracking.image_grid(imgs, nrow=nrow), imgs.shape[-2], imgs.shape[-1],
                              s.get("columns"), s["labels"])
            Image.fromarray(grid).save(path)
            if log:
                tracking.log_image_grid(name, imgs, nrow=nrow)
            index[path.name] = {"columns": s.get("columns"), "rows": s["labels"]}
            written.append(path)
    (out_dir / "index.json").write_text(json.dumps(index, indent=1))
    return written
