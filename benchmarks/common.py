"""Shared by the speed benchmarks: environment record, timing, the paper's figures and our targets, JSON + MLflow.

Every result file (benchmarks/results/<name>.json) carries the device, the torch build, the thread count
and the machine load next to the numbers, because on a shared 2-core CPU box wall times swing by up to 5x
(../shared/fixtures/eg3d/README.md "Timings"); process CPU time is recorded too, the steadier figure there.
MLflow: with `--mlflow` or MLFLOW_TRACKING_URI set, the figures go to a run `bench/<name>` of experiment
`goae-benchmarks` (or MLFLOW_EXPERIMENT_NAME) through goae.tracking, with the JSON as an artifact.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

# Paper Table 1 "Time (s)" per image (GPU unnamed in the paper).
PAPER_FIGURES = {"goae_full_s_per_image": 0.2262, "goae_wplus_only_s_per_image": 0.0963, "pti_s_per_image": 115.2,
                 "source": "GOAE (ICCV 2023) Table 1, Time (s); the paper does not name its GPU"}
# What this implementation aims for on one H100 (paper FFHQ-512 configuration, bf16/TF32 fast paths on).
TARGETS = {"device": "1x NVIDIA H100", "inversion_full_b1_s": 0.010, "inversion_batched_img_per_s": 300.0,
           "davg_100k_s": 300.0, "stage1_img_per_s_at_batch4": 25.0}


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 = the stable figure on a shared box; 0 = torch default)")
    ap.add_argument("--configs", default="tiny,paper", help="comma list of: tiny, paper")
    ap.add_argument("--mlflow", action="store_true", help="log to MLflow even without MLFLOW_TRACKING_URI")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/<name>.json)")
    return ap


def device_from(args) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def environment(device: torch.device) -> dict:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"device": gpu or f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
            "device_type": device.type, "gpu": gpu,
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> dict:
    """Wall and process-CPU seconds of `repeats` calls after `warmup` calls (device-synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"wall_s": [round(t, 5) for t in wall], "cpu_s": [round(t, 5) for t in cpu], "warmup": warmup,
            "median_wall_s": round(statistics.median(wall), 5), "median_cpu_s": round(statistics.median(cpu), 5),
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def per_image(m: dict, batch: int) -> dict:
    """Seconds per image and images per second from a `measure` result (wall clock)."""
    s = m["median_wall_s"] / batch
    return {"s_per_image": round(s, 5), "img_per_s": round(1.0 / s, 4), "cpu_s_per_image": round(m["median_cpu_s"] / batch, 5)}


def load_config(kind: str, device: torch.device, **sections):
    """Params of the 'tiny' embedded default (params.yaml) or the 'paper' FFHQ-512 configuration
    (configs/paper-ffhq512.yaml) with every asset replaced by its offline fallback (random weights)."""
    import yaml
    from goae.config import params_from_dict
    raw = yaml.safe_load((ROOT / ("params.yaml" if kind == "tiny" else "configs/paper-ffhq512.yaml")).read_text())
    raw["assets"] = {"allow_fallbacks": ["embedded", "packaged", "random"]}
    raw["data"] = {"source": "embedded"}
    raw["runtime"] = {**raw.get("runtime", {}), "device": device.type}
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v}
    return params_from_dict(raw)


def generator_config(kind: str):
    """The embedded tiny EG3D, or the full FFHQ-512 EG3D (ffhqrebalanced512-128 geometry: render 128^2,
    48+48 samples, 8XDC SR, 30.7M parameters) with random weights."""
    from goae.config import GeneratorConfig
    if kind == "tiny":
        return load_config("tiny", torch.device("cpu")).generator
    return GeneratorConfig(img_resolution=512, channel_base=32768, channel_max=512, neural_rendering_resolution=128,
                           depth_resolution=48, depth_resolution_importance=48)


def generator_record(kind: str) -> dict:
    """What the JSON records about the benchmark generator (build_generator, not the embedded world)."""
    return vars(generator_config(kind)) | {"w_avg_samples": 64, "weights": "official random init (seed 0)"}


def build_generator(kind: str, device: torch.device):
    """Official random init (no embedded-world calibration renders: speed does not depend on the weights)
    and w_avg from 64 mapped samples. Returns (G on device, its checkpoint config)."""
    from goae.data.world import embedded_generator_config, estimate_w_avg
    from goae.eg3d.generator import TriPlaneGenerator
    cfg = embedded_generator_config(generator_config(kind))
    torch.manual_seed(0)  # the OSG decoder's init draws from the global RNG (init_seed does not cover it)
    G = TriPlaneGenerator.from_config(cfg, init_seed=0).eval().requires_grad_(False)
    G.backbone.mapping.w_avg.copy_(estimate_w_avg(G, 64, torch.Generator().manual_seed(1), "cpu"))
    cfg["provenance"] = {"kind": "random", "benchmark": kind}
    return G.to(device), cfg


def numeric_leaves(d: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(numeric_leaves(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def finish(name: str, args, device: torch.device, config: dict, figures: dict, raw: dict,
           extra_note: str = "") -> Path:
    """Write benchmarks/results/<name>.json; log to MLflow when asked (--mlflow or MLFLOW_TRACKING_URI)."""
    from goae.data.dataset import write_json_atomic
    env = environment(device)
    note = "no GPU in this run: CPU figures only; the targets are for one H100 and are not assessed here" \
        if device.type != "cuda" else f"measured on {env['gpu']}"
    result = {"benchmark": name, "device": env["device"], "torch": env["torch"], "threads": env["threads"],
              "environment": env, "config": config, "figures": figures, "paper_figures": PAPER_FIGURES,
              "targets": TARGETS, "note": note + (f"; {extra_note}" if extra_note else ""), "raw": raw,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = Path(args.out) if args.out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result)
    path.chmod(0o644)  # mkstemp made it private; results are for everyone
    print(f"[{name}] wrote {path}")
    if args.mlflow or os.environ.get("MLFLOW_TRACKING_URI"):
        log_mlflow(name, result, path)
    return path


def log_mlflow(name: str, result: dict, path: Path) -> None:
    from goae import tracking
    tracking.check_tracking_available()
    import mlflow
    uri = tracking.tracking_uri()
    mlflow.set_tracking_uri(uri)
    exp = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "goae-benchmarks"
    if mlflow.get_experiment_by_name(exp) is None and not uri.startswith(("http:", "https:")):
        # as goae.tracking: local stores keep artifacts under the repo root, not a cwd-relative ./mlruns
        mlflow.create_experiment(exp, artifact_location=(ROOT / "mlartifacts").as_uri())
    mlflow.set_experiment(exp)
    with mlflow.start_run(run_name=f"bench/{name}") as run:
        tracking.set_tags({"benchmark": name, "device": result["device"], "torch": result["torch"],
                           "threads": result["threads"], "note": result["note"][:5000]})
        tracking.set_tags({f"config.{k}": v for k, v in tracking.flatten(result["config"]).items()})
        tracking.log_metrics(numeric_leaves(result["figures"]))
        tracking.log_artifact(path)
        print(f"[{name}] logged to MLflow run {run.info.run_id} ({tracking.tracking_uri()})")
