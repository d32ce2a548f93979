"""Wall time and peak memory of the embedded `dvc repro` in a fresh clone → benchmarks/results/pipeline.json.

Peak memory is the largest resident set of any process the pipeline ran (getrusage of children), i.e.
the heaviest stage. Per-stage wall times are parsed from the stages' own "done in" lines.
"""
from __future__ import annotations

import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    if "--in-place" in sys.argv:  # `dvc repro --force` in this checkout (keeps the outputs and metrics)
        return run_in_place()
    work = Path(tempfile.mkdtemp(prefix="goae-bench-pipeline-"))
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work}/mlflow.db", DVC_NO_ANALYTICS="1",
               MLFLOW_DISABLE_TELEMETRY="true", HF_HUB_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    try:
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(work / "clone")], check=True)
        env["PYTHONPATH"] = str(work / "clone")
        t0 = time.time()
        p = subprocess.run(["dvc", "repro"], cwd=work / "clone", env=env, text=True, capture_output=True)
        wall = time.time() - t0
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if p.returncode:
            print(p.stdout[-3000:], p.stderr[-3000:], file=sys.stderr)
            return 1
        stages = {m.group(1): float(m.group(2)) for m in re.finditer(r"\[(\w+)\] done in ([\d.]+) s", p.stdout + p.stderr)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = {"what": "dvc repro of the committed params.yaml (embedded tiny world), fresh clone, no DVC cache",
           "wall_s": round(wall, 1), "peak_rss_mb": round(peak_kb / 1024, 1), "stage_wall_s": stages,
           "cpu_count": os.cpu_count(), "torch": torch.__version__, "machine": platform.machine(),
           "cuda": torch.cuda.is_available(), "target": "<= 300 s on 2 CPU cores",
           "load_average_at_end": os.getloadavg()}
    dst = ROOT / "benchmarks" / "results" / "pipeline.json"
    dst.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


def run_in_place() -> int:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", HF_HUB_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    t0 = time.time()
    p = subprocess.run(["dvc", "repro", "--force"], cwd=ROOT, env=env, text=True, capture_output=True)
    wall = time.time() - t0
    if p.returncode:
        print(p.stdout[-3000:], p.stderr[-3000:], file=sys.stderr)
        return 1
    stages = {m.group(1): float(m.group(2)) for m in re.finditer(r"\[(\w+)\] done in ([\d.]+) s", p.stdout + p.stderr)}
    out = {"what": "dvc repro --force of the committed params.yaml (embedded tiny world) in the checkout",
           "wall_s": round(wall, 1), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
           "stage_wall_s": stages, "cpu_count": os.cpu_count(), "torch": torch.__version__,
           "machine": platform.machine(), "cuda": torch.cuda.is_available(), "target": "<= 300 s on 2 CPU cores",
           "load_average_at_end": os.getloadavg()}
    (ROOT / "benchmarks" / "results" / "pipeline.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
