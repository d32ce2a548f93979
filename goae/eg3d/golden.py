"""Golden check of goae.eg3d against the official EG3D fixtures (../shared/fixtures/eg3d{,_8xdc}).

    python -m goae.eg3d.golden FIXTURE_DIR [FIXTURE_DIR ...]

Rebuilds the generator from eg3d_tiny_config.json alone, strict-loads eg3d_tiny_state.safetensors,
replays the fixture's runs with the stored random draws (or regenerates them from `<run>.rng_seed` in the
official order where absent) and compares every io tensor with the README's per-tensor atol. Every run
setting comes from the fixture itself: the runs, their neural rendering resolutions and truncations are
read from the config's `inputs` (the public fixtures: psi1 and psi0p7 at 32², psi1_nrr64 at 64²).
Synthesis is fed the fixture's ws so each stage is checked in isolation (mapping and ws are checked on
their own). When the fixture (or its sibling `eg3d/`) holds eg3d_ffhq512_manifest.json, a freshly built
full FFHQ-512 generator must have exactly its keys/shapes/kinds; a fixture without it reports that row as
skipped. Exit 0 only if no row fails.
"""
from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .generator import TriPlaneGenerator
from .ops import normalize_2nd_moment

# Runs of the public fixtures (README), used only when a config has no `inputs` block.
DEFAULT_RUNS = {"psi1": (1.0, None, None), "psi0p7": (0.7, 14, None), "psi1_nrr64": (1.0, None, 64)}
INPUT_KEYS = ("input.z", "input.c", "probe.points", "probe.directions")
BAND = "rows64_72"  # pixel rows 64..71 of the render (8xdc fixture)

# README "Tolerances to use" (absolute). First match wins.
TOLERANCES = [
    (r"\.rng\.", 0.0),  # inputs: injected or regenerated exactly
    (r"^psi1_nrr64\.out\.image_raw$", 1e-4),  # holds SR block0 output with the 2X SR (README section 8)
    (r"\.planes\.(abs_)?sum_per_channel_f64$", 1e-4),  # per element, after dividing by H*W
    (r"^(ws\.|mapping\.)", 1e-5),
    (r"\.render\.depths_|\.out\.image_depth|\.render\.weights_sum", 1e-5),
    (r"\.out\.image_raw|\.feature_image|\.rays\.", 1e-5),
    (r"\.planes\.|\.backbone\.", 1e-4),
    (r"\.render\.sigma_|\.render\.rgb_coarse|^probe\.", 1e-4),
    (r"\.out\.image|\.sr\.", 1e-4),
]


def ws_key(psi: float, cutoff: int | None) -> str:
    """The fixture's name for the mapped codes of a truncation (ws.psi1, ws.psi0p7_cutoff14)."""
    name = "ws.psi" + f"{psi:g}".replace(".", "p")
    return name if psi == 1 else f"{name}_cutoff{cutoff}"


def fixture_runs(cfg: dict) -> dict[str, tuple[float, int | None, int]]:
    """run -> (truncation psi, cutoff, neural rendering resolution), read from the config's `inputs`:
    `inputs.neural_rendering_resolution` {run: res} and `inputs.truncation` {run: "truncation_psi=0.7,
    truncation_cutoff=14"}; a run missing a resolution uses the generator's own."""
    nrr = int(cfg["neural_rendering_resolution"])
    inputs = cfg.get("inputs") or {}
    res = inputs.get("neural_rendering_resolution")
    if not isinstance(res, dict):
        return {r: (psi, cut, int(n or nrr)) for r, (psi, cut, n) in DEFAULT_RUNS.items()}
    trunc = inputs.get("truncation") or {}
    runs = {}
    for run, r in res.items():
        text = str(trunc.get(run) or trunc.get(run.split("_nrr")[0]) or "truncation_psi=1")
        psi = re.search(r"truncation_psi\s*=\s*([0-9.]+)", text)
        cut = re.search(r"truncation_cutoff\s*=\s*([0-9]+)", text)
        runs[run] = (float(psi.group(1)) if psi else 1.0, int(cut.group(1)) if cut else None, int(r))
    return runs


def required_keys(runs: dict) -> list[str]:
    """The final outputs of every run and the ws they use must be present and checked."""
    ws = sorted({ws_key(psi, cut) for psi, cut, _ in runs.values()})
    return ws + [f"{r}.out.{k}" for r in runs for k in ("image_raw", "image_depth", "image")]


@dataclass
class Row:
    name: str
    shape: tuple
    err: float
    tol: float
    status: str  # ok | FAIL | skipped

    def __str__(self) -> str:
        err = "-" if math.isnan(self.err) else f"{self.err:.3e}"
        return f"{self.name:<48} {str(list(self.shape)):<20} {err:>10} {self.tol:>8.0e}  {self.status}"


def tolerance(name: str) -> float:
    for pat, tol in TOLERANCES:
        if re.search(pat, name):
            return tol
    raise KeyError(f"no tolerance rule for {name}")


def _cmp(rows: list, name: str, ours: torch.Tensor, ref: torch.Tensor, scale: float = 1.0) -> None:
    tol = tolerance(name)
    if tuple(ours.shape) != tuple(ref.shape):
        rows.append(Row(name, tuple(ref.shape), math.inf, tol, f"FAIL (shape {list(ours.shape)})"))
        return
    err = ((ours.detach().cpu().double() - ref.cpu().double()) / scale).abs().max().item() if ref.numel() else 0.0
    rows.append(Row(name, tuple(ref.shape), err, tol, "ok" if err <= tol else "FAIL"))


def _draws(io: dict, run: str, B: int, M: int, D: int, Ni: int):
    """Stored u if present, else torch.manual_seed(seed); rand(B,M,D,1); rand(B*M,Ni) (official order)."""
    s, i = io.get(f"{run}.rng.stratified_u"), io.get(f"{run}.rng.importance_u")
    if s is not None and i is not None:
        return s, i
    g = torch.Generator().manual_seed(int(io[f"{run}.rng_seed"].item()))
    dev = io["input.z"].device  # drawn on the CPU (the official order), then moved
    return torch.rand(B, M, D, 1, generator=g).to(dev), torch.rand(B * M, Ni, generator=g).to(dev)


def _views(io: dict, run: str, out: dict, rec: dict, u: tuple, res: int) -> dict:
    """Our tensor for every key the fixtures may hold for this run (absent keys are reported skipped)."""
    planes, D = out["planes"], rec["depths_coarse"].shape[2]
    v = {
        f"{run}.planes.stride4": planes[..., ::4, ::4],
        f"{run}.planes.stride8": planes[..., ::8, ::8],
        f"{run}.planes.crop_rows112_144_cols112_144": planes[..., 112:144, 112:144],
        f"{run}.planes.batch0_plane0_ch0_full": planes[0, 0, 0],
        f"{run}.rays.origins": out["ray_origins"], f"{run}.rays.directions": out["ray_directions"],
        f"{run}.rng.stratified_u": u[0], f"{run}.rng.importance_u": u[1],
        f"{run}.render.depths_coarse": rec["depths_coarse"], f"{run}.render.depths_fine": rec["depths_fine"],
        f"{run}.render.sigma_coarse": rec["sigma_coarse"], f"{run}.render.sigma_fine": rec["sigma_fine"],
        f"{run}.render.rgb_coarse_ch0to3": rec["rgb_coarse"][..., :4],
        f"{run}.render.weights_sum": out["weights_sum"],
        f"{run}.feature_image": out["feature_image"],
        f"{run}.feature_image_rgb_before_sr": out["feature_image"][:, :3],
        f"{run}.sr.block0_img": rec["sr.block0_img"],
        f"{run}.sr.block0_x.stride16": rec["sr.block0_x"][..., ::16, ::16],
        f"{run}.out.image_raw": out["image_raw"], f"{run}.out.image_depth": out["image_depth"],
        f"{run}.out.image": out["image"], f"{run}.out.image.stride2": out["image"][..., ::2, ::2],
    }
    for k in list(v):  # the ray band: rays m in [64*res, 72*res), samples m*D+d, importance rows b*M+m
        base = k.split(".", 1)[1]
        if base.startswith(("rays.", "rng.", "render.depths", "render.sigma", "render.rgb")):
            t, lo, hi = v[k], 64 * res, 72 * res
            if base.startswith(("render.sigma", "render.rgb")):
                lo, hi = lo * D, hi * D
            if base == "rng.importance_u":
                t = t.reshape(-1, res * res, t.shape[-1])[:, lo:hi].flatten(0, 1)
            else:
                t = t[:, lo:hi]
            v[f"{k}.{BAND}"] = t
    for r in (4, 8, 16, 32, 64, 128, 256):
        for part in ("x", "img"):
            t = rec.get(f"backbone.b{r}.{part}")
            if t is not None:
                v[f"{run}.backbone.b{r}.{part}"], v[f"{run}.backbone.b{r}.{part}.stride4"] = t, t[..., ::4, ::4]
    return v


def _check_run(G, io: dict, run: str, ws: torch.Tensor, c: torch.Tensor, res: int, rows: list) -> dict:
    rk = G.rendering_kwargs
    B, M = ws.shape[0], res * res
    u = _draws(io, run, B, M, rk["depth_resolution"], rk["depth_resolution_importance"])
    rec: dict = {}
    with torch.no_grad():
        out = G.synthesis(ws, c, neural_rendering_resolution=res, noise_mode="const",
                          stratified_u=u[0], importance_u=u[1], record=rec)
    views = _views(io, run, out, rec, u, res)
    for k, t in views.items():
        if k in io:
            _cmp(rows, k, t, io[k])
    hw = out["planes"].shape[-1] * out["planes"].shape[-2]
    for kind, f in (("sum", lambda p: p), ("abs_sum", torch.abs)):
        k = f"{run}.planes.{kind}_per_channel_f64"
        if k in io:
            _cmp(rows, k, f(out["planes"].double()).sum((-2, -1)), io[k], scale=hw)
    return out


def _check_probes(G, io: dict, planes: torch.Tensor, rows: list) -> None:
    from . import renderer as R  # A2's module: sampling helpers and plane axes

    if "probe.points" not in io:
        return
    pts, dirs, bw = io["probe.points"], io["probe.directions"], G.rendering_kwargs["box_warp"]
    axes = R.generate_planes().to(pts.device)
    B, N = pts.shape[:2]
    with torch.no_grad():
        proj = R.project_onto_planes(axes, pts * (2 / bw)).reshape(B, 3, N, 2)
        feats = R.sample_from_planes(axes, planes, pts, box_warp=bw)
        dec = G.decoder(feats, dirs)
    for k, t in (("probe.projected_coords", proj), ("probe.plane_features", feats),
                 ("probe.decoder_rgb", dec["rgb"]), ("probe.decoder_sigma", dec["sigma"])):
        if k in io:
            _cmp(rows, k, t, io[k])


def check_manifest(manifest_path: Path) -> Row:
    """A full FFHQ-512 generator built on `meta` must have exactly the manifest's keys, shapes and kinds."""
    m = json.loads(Path(manifest_path).read_text())
    with torch.device("meta"):
        G = TriPlaneGenerator(**m["init_kwargs"])
    params = dict(G.named_parameters())
    ours = {k: (tuple(t.shape), "parameter" if k in params else "buffer") for k, t in G.state_dict().items()}
    ref = {e["name"]: (tuple(e["shape"]), e["kind"]) for e in m["state_dict"]}
    bad = sorted(set(ours) ^ set(ref)) + sorted(k for k in set(ours) & set(ref) if ours[k] != ref[k])
    n_par = sum(t.numel() for t in params.values())
    same_order = list(ours) == list(ref)  # registration order too, so the two state_dicts zip 1:1
    status = "ok" if not bad and same_order and n_par == m["total_parameters"] and G.backbone.num_ws == m["num_ws"] \
        else f"FAIL ({len(bad)} key mismatches e.g. {bad[:3]}, same order {same_order}, params {n_par})"
    return Row("manifest.ffhq512.state_dict", (len(ref),), float(len(bad)), 0.0, status)


def run_golden(fixture_dir, device="cpu") -> list[Row]:
    """`device`: where the generator runs (the GPU suite's parity check); comparisons are made on the CPU."""
    d = Path(fixture_dir)
    cfg = json.loads((d / "eg3d_tiny_config.json").read_text())
    G = TriPlaneGenerator.from_config(cfg, init_seed=None)
    G.load_state_dict(load_file(str(d / "eg3d_tiny_state.safetensors")), strict=True)
    G.eval().requires_grad_(False).to(device)
    io = {k: v.to(device) for k, v in load_file(str(d / "eg3d_tiny_io.safetensors")).items()}
    rows: list[Row] = []
    z, c = io["input.z"], io["input.c"]
    mp, rk = G.backbone.mapping, G.rendering_kwargs
    runs = fixture_runs(cfg)
    with torch.no_grad():
        e = mp.embed(c * rk["c_scale"])
        zn, en = normalize_2nd_moment(z), normalize_2nd_moment(e)
        mine = {"mapping.embed_out": e, "mapping.embed_normalized": en, "mapping.z_normalized": zn,
                "mapping.fc0_out": mp.fc0(torch.cat([zn, en], 1))}
        mine.update({ws_key(psi, cut): G.mapping(z, c, psi, cut) if psi != 1 else G.mapping(z, c)
                     for psi, cut, _ in runs.values()})
    for k, t in mine.items():
        if k in io:
            _cmp(rows, k, t, io[k])
    outs = {}
    for run, (psi, cut, res) in runs.items():
        if ws_key(psi, cut) not in io:
            continue  # reported as a required key below
        outs[run] = _check_run(G, io, run, io[ws_key(psi, cut)], c, res, rows)
    probe_run = next((r for r, (psi, _, res) in runs.items() if r in outs and psi == 1
                      and res == int(cfg["neural_rendering_resolution"])), None)
    if probe_run is not None:
        _check_probes(G, io, outs[probe_run]["planes"], rows)

    seen = {r.name for r in rows}
    for k in required_keys(runs):  # the final outputs (full or .stride2) and ws must be present and checked
        if k not in seen and f"{k}.stride2" not in seen:
            rows.append(Row(k, (), math.nan, tolerance(k), "FAIL (required, not in fixture)"))
    for k in sorted(io):  # every io tensor must be checked or be an input
        if k not in seen and k not in INPUT_KEYS and not k.endswith(".rng_seed"):
            rows.append(Row(k, tuple(io[k].shape), math.nan, 0.0, "FAIL (unchecked key)"))
    for k in _expected_keys(runs):  # the public key scheme: report what this fixture does not hold
        if k not in io and k not in seen:
            rows.append(Row(k, (), math.nan, tolerance(k), "skipped"))
    manifest = d / "eg3d_ffhq512_manifest.json"
    if not manifest.exists():
        manifest = d.parent / "eg3d" / "eg3d_ffhq512_manifest.json"
    rows.append(check_manifest(manifest) if manifest.exists() else  # optional: not every fixture ships it
                Row("manifest.ffhq512.state_dict", (), math.nan, 0.0, "skipped (no eg3d_ffhq512_manifest.json)"))
    return rows


def _expected_keys(runs) -> list[str]:
    keys = []
    for run in runs:
        keys += [f"{run}.{k}" for k in ("rays.origins", "rays.directions", "rng.stratified_u", "rng.importance_u",
                                        "render.depths_coarse", "render.depths_fine", "render.sigma_coarse",
                                        "render.sigma_fine", "render.weights_sum", "feature_image", "out.image")]
    return keys + ["psi1.render.rgb_coarse_ch0to3", "psi1.sr.block0_img", "psi1.sr.block0_x.stride16"]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    ok = True
    for d in argv:
        rows = run_golden(d)
        print(f"== {d}")
        print(f"{'tensor':<48} {'shape':<20} {'max|err|':>10} {'atol':>8}  status")
        for r in rows:
            print(r)
        bad = [r for r in rows if r.status.startswith("FAIL")]
        print(f"-- {len(rows)} rows: {sum(r.status == 'ok' for r in rows)} ok, {len(bad)} FAIL, "
              f"{sum(r.status.startswith('skipped') for r in rows)} skipped")
        ok &= not bad
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
