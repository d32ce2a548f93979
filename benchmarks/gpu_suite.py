"""GPU suite in one call: parity, inversion latency/throughput (exact vs fast paths), compile, D_avg,
training -> benchmarks/results/gpu.json.

    python benchmarks/gpu_suite.py [--sections parity,inversion,compile,davg,training] [--out PATH]
                                   [--budget-s 450] [--dry-run]

CUDA is required (exits 2 with a message otherwise) except with --dry-run, which runs every section on
the CPU with the embedded tiny config (bf16 autocast and channels_last run on CPU too; CUDA graphs and
synchronised timing are CUDA-only; compile uses dynamo's 'eager' backend) and writes the same schema to
a temporary path unless --out is given. Full runs use the FFHQ-512 config with random weights
(benchmarks/common.py: SwinV2-B encoder, full AFA, render 128^2 with 48+48 samples, 8XDC SR).

Safety within an 8-minute device budget: each section runs in its own subprocess with its own time cap
(SECTION_CAP_S, cut to what is left of --budget-s); a failure or timeout is recorded in the JSON under
that section's "error" and the suite moves on; the JSON is rewritten after every section. Peak memory
is per section (fresh process; torch.cuda.max_memory_allocated). The README performance table is
rendered from the JSON by benchmarks/perf_table.py.

Sections
  parity     exact inversion on the device vs the same inversion on the CPU (same weights, same renderer
             draws): max abs error per output against the golden-fixture tolerances (fp32, TF32 off); the
             official EG3D golden fixtures replayed on the device (goae.eg3d.golden, when found);
             then each autocast dtype (bf16, fp16) vs the exact device path against STATED_LOWP_TOL.
  inversion  GOAE.invert latency at batch 1 (full GOAE and w+ only; median of 50 after warm-up,
             synchronised) exact and fast (autocast + channels_last + batched modconv + CUDA graphs),
             and fast throughput at batch 8/16/32.
  compile    the fast path plus torch.compile at batch 1 (compile time reported apart, eager fallback
             with its reason recorded).
  davg       D_avg canonical samples/s (compute_davg, the config's BiSeNet mask, random weights).
  training   stage-1 and stage-2 img/s at batch 4 (benchmarks/training.py's workspace and loop).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # benchmarks/common.py (also puts the repo root on sys.path)
import torch

SECTIONS = ("parity", "inversion", "compile", "davg", "training")
SECTION_CAP_S = {"parity": 90, "inversion": 150, "compile": 150, "davg": 60, "training": 120}
# fixture tolerances (../shared/fixtures/eg3d/README.md, goae/README.md) for the fp32 device-vs-CPU check
FP32_TOL = {"w_plus": 1e-4, "feat_F": 1e-4, "planes_wplus": 1e-4, "image_wplus": 1e-4, "feat_star": 5e-4,
            "planes_fstar": 1e-4, "image": 1e-4, "depth": 1e-5}
# stated tolerances of the low-precision paths: relative L2 error vs the exact fp32 path, and the fraction
# of visibility-mask cells that flip (measured on CPU, tiny config: bf16 about half of each bound)
STATED_LOWP_TOL = {
    "bf16": {"w_plus": 0.02, "planes_wplus": 0.08, "planes_fstar": 0.08, "image": 0.15, "depth": 0.03,
             "mask_cells_flipped": 0.03},
    "fp16": {"w_plus": 0.005, "planes_wplus": 0.02, "planes_fstar": 0.02, "image": 0.05, "depth": 0.01,
             "mask_cells_flipped": 0.03},
}
SCHEMA = 1


# ------------------------------------------------------------------------------------------ helpers

def _model(kind: str, device: torch.device):
    from goae.model.afa import AFA
    from goae.model.encoder import Encoder
    from goae.model.goae import GOAE
    from goae.train import common as tc
    p = common.load_config(kind, device)
    G, _ = common.build_generator(kind, device)
    torch.manual_seed(0)
    return GOAE(G, Encoder(tc.encoder_config(p)), AFA(tc.afa_config(p, G))).to(device).eval(), p


def _inputs(model, batch: int, device: torch.device):
    from goae.eg3d import camera as cam
    res = model.G.img_resolution
    img = (torch.rand(batch, 3, res, res, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    return img, cam.canonical_camera(batch, device=device)


def _rng(device: torch.device, seed: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _peak(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3) if device.type == "cuda" else None


def _timed(fn, device: torch.device, repeats: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    common.sync(device)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        common.sync(device)
        ts.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(ts), 6), "min_s": round(min(ts), 6), "repeats": repeats,
            "warmup": warmup}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _fast(model, p, device, dry: bool, **over):
    from goae.model.fast import FastPaths
    fp = FastPaths.from_runtime(p.runtime, device, on_cpu=dry, compile_backend="eager" if dry else "inductor")
    import dataclasses
    return dataclasses.replace(fp, **over)


# ------------------------------------------------------------------------------------------ sections

def section_parity(kind: str, device: torch.device, dry: bool) -> dict:
    from goae.model.fast import FastInverter, draw_shapes
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, p = _model(kind, device)
    img, c = _inputs(model, 1, device)
    # the same renderer draws for both runs, made on the CPU (GOAE.invert's order) and copied
    sh = draw_shapes(model, 1)
    g = torch.Generator().manual_seed(0)
    u = [torch.rand(s, generator=g) for s in (*sh, *sh)]
    draws = lambda dev: ({"stratified_u": u[0].to(dev), "importance_u": u[1].to(dev)},  # noqa: E731
                         {"stratified_u": u[2].to(dev), "importance_u": u[3].to(dev)})
    dev_exact = model.invert(img, c, draws=draws(device))
    out: dict = {"fp32_device_vs_cpu": {}, "lowp_vs_exact": {}}
    cpu_res = model.to("cpu").invert(img.cpu(), c.cpu(), draws=draws("cpu"))  # dry run: CPU vs CPU
    model.to(device)
    rows = {}
    for k, tol in FP32_TOL.items():
        err = float((getattr(dev_exact, k).cpu() - getattr(cpu_res, k).cpu()).abs().max())
        rows[k] = {"max_abs_err": err, "tol": tol, "ok": err <= tol}
    out["fp32_device_vs_cpu"] = rows
    out["fp32_ok"] = all(r["ok"] for r in rows.values())
    for dt, tols in STATED_LOWP_TOL.items():
        fp = _fast(model, p, device, dry, autocast=dt, compile=False, cuda_graphs=False)
        r = FastInverter(model, fp)(img, c, _rng(device))
        errs = {k: _rel(getattr(r, k), getattr(dev_exact, k)) for k in tols if k != "mask_cells_flipped"}
        errs["mask_cells_flipped"] = float((r.masks - dev_exact.masks).abs().gt(0.5).float().mean())
        out["lowp_vs_exact"][dt] = {k: {"err": round(v, 6), "tol": tols[k], "ok": v <= tols[k]} for k, v in errs.items()}
    out["lowp_ok"] = all(v["ok"] for d in out["lowp_vs_exact"].values() for v in d.values())
    out["eg3d_golden"] = golden_on_device(device)
    out["ok"] = out["fp32_ok"] and out["lowp_ok"] and out["eg3d_golden"].get("ok", True)
    return out


def fixtures_dir() -> Path | None:
    """The golden fixtures: $GOAE_FIXTURES, ./shared/fixtures (what the device tool carries) or ../shared/fixtures."""
    for d in (os.environ.get("GOAE_FIXTURES"), common.ROOT / "shared" / "fixtures", common.ROOT.parent / "shared" / "fixtures"):
        if d and Path(d).is_dir():
            return Path(d)
    return None


def golden_on_device(device: torch.device) -> dict:
    """The official EG3D golden fixtures replayed on `device` (fp32) against their tolerances."""
    from goae.eg3d.golden import run_golden
    root = fixtures_dir()
    if root is None:
        return {"skipped": "golden fixtures not found (set GOAE_FIXTURES or copy ../shared/fixtures to ./shared/fixtures)"}
    res = {}
    for name in ("eg3d", "eg3d_8xdc"):
        if (root / name).is_dir():
            rows = run_golden(root / name, device=device)
            bad = [r.name for r in rows if r.status.startswith("FAIL")]
            res[name] = {"rows": len(rows), "ok_rows": sum(r.status == "ok" for r in rows), "fail": bad[:20],
                         "worst_ratio": max((r.err / r.tol for r in rows if r.status == "ok" and r.tol > 0), default=0.0)}
    res["ok"] = all(not v["fail"] for v in res.values() if isinstance(v, dict))
    return res


def section_inversion(kind: str, device: torch.device, dry: bool) -> dict:
    from goae.model.fast import FastInverter, FastPaths
    model, p = _model(kind, device)
    reps, warm = (2, 1) if dry else (50, 5)
    batches = (2,) if dry else (8, 16, 32)
    out: dict = {"latency_b1": {}, "throughput": {}}
    for mode, afa in (("full", True), ("wplus", False)):
        img, c = _inputs(model, 1, device)
        for path in ("exact", "fast"):
            fp = FastPaths() if path == "exact" else _fast(model, p, device, dry, compile=False)
            inv = FastInverter(model, fp, use_afa=afa, use_mix=afa)
            g = _rng(device)
            m = _timed(lambda: inv(img, c, g), device, reps, warm)
            out["latency_b1"][f"{mode}_{path}"] = m | {"ms": round(m["median_s"] * 1e3, 3), "stats": inv.stats}
    for b in batches:
        img, c = _inputs(model, b, device)
        inv = FastInverter(model, _fast(model, p, device, dry, compile=False))
        g = _rng(device)
        m = _timed(lambda: inv(img, c, g), device, max(2, reps // 5), warm)
        out["throughput"][f"b{b}"] = m | {"img_per_s": round(b / m["median_s"], 3), "stats": inv.stats}
    best = max(out["throughput"].values(), key=lambda r: r["img_per_s"])
    out["summary"] = {"full_b1_exact_ms": out["latency_b1"]["full_exact"]["ms"],
                      "full_b1_fast_ms": out["latency_b1"]["full_fast"]["ms"],
                      "wplus_b1_fast_ms": out["latency_b1"]["wplus_fast"]["ms"],
                      "best_img_per_s": best["img_per_s"]}
    return out


def section_compile(kind: str, device: torch.device, dry: bool) -> dict:
    from goae.model.fast import FastInverter
    model, p = _model(kind, device)
    if dry:
        model.G.set_cpu_winograd(False)  # NNPACK's op has no fake-tensor kernel: keep dynamo off it
    img, c = _inputs(model, 1, device)
    inv = FastInverter(model, _fast(model, p, device, dry, compile=True))
    g = _rng(device)
    t0 = time.perf_counter()
    inv(img, c, g)
    common.sync(device)
    first = time.perf_counter() - t0
    m = _timed(lambda: inv(img, c, g), device, 2 if dry else 50, 1 if dry else 5)
    return {"first_call_s": round(first, 3), "compile_s": inv.stats["compile_s"],
            "compile_fallback": inv.stats["compile_fallback"], "latency_b1": m | {"ms": round(m["median_s"] * 1e3, 3)},
            "stats": inv.stats}


def section_davg(kind: str, device: torch.device, dry: bool) -> dict:
    from goae.train import common as tc
    from goae.train.davg import compute_davg
    p = common.load_config(kind, device)
    G, _ = common.build_generator(kind, device)
    prov: dict = {}
    mask = tc.build_mask(p, prov, device)
    n, bs = (4, 2) if dry else (1024, p.davg.batch_size)
    m = _timed(lambda: compute_davg(G, mask, n, bs, 0, device, progress=False), device, 1 if dry else 3, 1)
    sps = n / m["median_s"]
    return {"samples_per_s": round(sps, 3), "projected_100k_s": round(1e5 / sps, 1), "n_samples": n,
            "batch_size": bs, "mask": prov["mask"], **m}


def section_training(kind: str, device: torch.device, dry: bool) -> dict:
    import training  # benchmarks/training.py
    training.PLAN[(kind, device.type)] = (2, 2) if dry else (4, 12)
    figures, raw, config = training.bench(kind, device, paper_steps=2)
    return {"stage1": figures["stage1"], "stage2": figures["stage2"], "config": config}


RUNNERS = {"parity": section_parity, "inversion": section_inversion, "compile": section_compile,
           "davg": section_davg, "training": section_training}


def run_section(name: str, dry: bool, out: Path) -> None:
    """Child process: one section -> JSON at `out`."""
    device = torch.device("cpu" if dry else "cuda")
    kind = "tiny" if dry else "paper"
    if dry:
        torch.set_num_threads(1)
    elif name != "parity":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    res = RUNNERS[name](kind, device, dry)
    res["wall_s"] = round(time.perf_counter() - t0, 2)
    res["peak_gpu_mem_gib"] = _peak(device)
    res["tf32"] = device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32  # "exact" = fp32 with TF32 here
    out.write_text(json.dumps(res, indent=1, default=str))


# ------------------------------------------------------------------------------------------ driver

def _write(path: Path, result: dict) -> None:
    from goae.data.dataset import write_json_atomic
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result)
    path.chmod(0o644)


def summary_lines(result: dict) -> list[str]:
    s = result["sections"]
    lines = [f"gpu suite on {result['device']} (torch {result['torch']}, CUDA {result['torch_cuda']}), "
             f"dry_run={result['dry_run']}"]
    for name in result["requested"]:
        r = s.get(name, {})
        if "error" in r:
            lines.append(f"  {name:9s} ERROR {r['error'][:160]}")
        elif name == "parity":
            lines.append(f"  parity    fp32 ok={r.get('fp32_ok')}  low precision ok={r.get('lowp_ok')}  "
                         f"eg3d golden on device ok={r.get('eg3d_golden', {}).get('ok')}")
        elif name == "inversion":
            lines.append(f"  inversion {r['summary']}  peak {r.get('peak_gpu_mem_gib')} GiB")
        elif name == "compile":
            lines.append(f"  compile   compile {r.get('compile_s')} s, b1 {r['latency_b1']['ms']} ms, "
                         f"fallback {r.get('compile_fallback')}")
        elif name == "davg":
            lines.append(f"  davg      {r.get('samples_per_s')} samples/s")
        elif name == "training":
            lines.append(f"  training  stage1 {r['stage1']['img_per_s']} img/s, stage2 {r['stage2']['img_per_s']} img/s")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/gpu.json; dry run: a temp file)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="wall budget for all sections together")
    ap.add_argument("--dry-run", action="store_true", help="tiny config on CPU, every non-CUDA code path")
    ap.add_argument("--_section", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_result", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._section:
        run_section(a._section, a.dry_run, Path(a._result))
        return 0
    if not a.dry_run and not torch.cuda.is_available():
        print("gpu_suite: CUDA is not available. Run it on a machine with a GPU, or use --dry-run for the "
              "CPU exercise of every non-CUDA code path.", file=sys.stderr)
        return 2
    requested = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = [s for s in requested if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; known: {list(SECTIONS)}")
    out = Path(a.out) if a.out else (Path(tempfile.mkdtemp(prefix="goae-gpu-dry-")) / "gpu.json" if a.dry_run
                                     else common.RESULTS / "gpu.json")
    device = torch.device("cpu" if a.dry_run else "cuda")
    env = common.environment(device)
    result = {"schema": SCHEMA, "suite": "benchmarks/gpu_suite.py", "dry_run": a.dry_run,
              "device": env["device"], "torch": env["torch"], "torch_cuda": env["torch_cuda"],
              "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
              "environment": env, "config": "tiny (params.yaml)" if a.dry_run else "paper FFHQ-512, random weights",
              "requested": requested, "sections": {}, "paper_figures": common.PAPER_FIGURES,
              "targets": {"inversion_full_b1_ms": 10.0, "inversion_batched_img_per_s": 300.0,
                          "device": "1x NVIDIA H100"},
              "stated_lowp_tol": STATED_LOWP_TOL, "fp32_tol": FP32_TOL,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _write(out, result)
    start = time.perf_counter()
    for name in requested:
        left = a.budget_s - (time.perf_counter() - start)
        cap = min(SECTION_CAP_S[name] * (3 if a.dry_run else 1), left)
        if cap < 10:
            result["sections"][name] = {"error": f"skipped: {left:.0f} s of the budget left"}
            _write(out, result)
            continue
        with tempfile.TemporaryDirectory(prefix=f"goae-gpu-{name}-") as tmp:
            res_path = Path(tmp) / "section.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--_section", name, "--_result", str(res_path)]
            cmd += ["--dry-run"] if a.dry_run else []
            t0 = time.perf_counter()
            print(f"[gpu_suite] {name}: cap {cap:.0f} s", flush=True)
            try:
                cp = subprocess.run(cmd, capture_output=True, text=True, timeout=cap, env=os.environ.copy())
                if cp.returncode == 0 and res_path.exists():
                    result["sections"][name] = json.loads(res_path.read_text())
                else:
                    result["sections"][name] = {"error": f"exit {cp.returncode}: {cp.stderr.strip()[-1500:]}"}
            except subprocess.TimeoutExpired:
                result["sections"][name] = {"error": f"timeout after {cap:.0f} s (section cap)"}
            result["sections"][name]["section_wall_s"] = round(time.perf_counter() - t0, 2)
        _write(out, result)
    print("\n".join(summary_lines(result)))
    print(f"[gpu_suite] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
