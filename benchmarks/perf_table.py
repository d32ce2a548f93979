"""README GPU performance rows from benchmarks/results/gpu.json (written by benchmarks/gpu_suite.py).

    python benchmarks/perf_table.py            # rewrite the block between the markers in README.md
    python benchmarks/perf_table.py --check    # exit 1 if README.md is not what the JSON gives

Without gpu.json (no GPU run yet) every row says "not measured"; a dry-run JSON is never rendered
as a measurement. tests/test_gpu_suite.py checks that the README is current.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- gpu-table:begin (benchmarks/perf_table.py) -->", "<!-- gpu-table:end -->"
ROWS = [  # (what, target, section, getter on the sections dict)
    ("Inversion, full GOAE, batch 1 (exact fp32 / fast paths)", "≤ 10 ms (paper 226 ms)",
     "inversion", lambda s: f"{s['inversion']['summary']['full_b1_exact_ms']} ms / {s['inversion']['summary']['full_b1_fast_ms']} ms"),
    ("Inversion, w+ only, batch 1 (fast paths)", "paper 96 ms",
     "inversion", lambda s: f"{s['inversion']['summary']['wplus_b1_fast_ms']} ms"),
    ("Inversion throughput, best of batch 8/16/32 (fast paths)", "≥ 300 img/s",
     "inversion", lambda s: f"{s['inversion']['summary']['best_img_per_s']} img/s"),
    ("Inversion + torch.compile, batch 1 (compile time)", "",
     "compile", lambda s: f"{s['compile']['latency_b1']['ms']} ms ({s['compile']['compile_s']} s)"),
    ("Parity: device vs CPU fp32 / bf16, fp16 vs stated tolerances", "all ok",
     "parity", lambda s: f"{'ok' if s['parity']['fp32_ok'] else 'FAIL'} / {'ok' if s['parity']['lowp_ok'] else 'FAIL'}"),
    ("D_avg", "100k samples ≤ 5 min", "davg", lambda s: f"{s['davg']['samples_per_s']} samples/s"),
    ("Stage-1 / stage-2 training, batch 4", "stage 1 ≥ 25 img/s",
     "training", lambda s: f"{s['training']['stage1']['img_per_s']} / {s['training']['stage2']['img_per_s']} img/s"),
]


def render(result: dict | None) -> str:
    lines = ["| what (FFHQ-512 config, random weights) | measured | target | peak GPU memory |", "|---|---|---|---|"]
    measured = result is not None and not result.get("dry_run")
    head = (f"Measured by `benchmarks/gpu_suite.py` on {result['device']} (torch {result['torch']}, CUDA "
            f"{result['torch_cuda']}), {result['time']}." if measured else
            "GPU figures: **not measured** (no GPU run yet; `python benchmarks/gpu_suite.py` writes "
            "benchmarks/results/gpu.json, then `python benchmarks/perf_table.py` fills this table).")
    for what, target, name, get in ROWS:
        value, mem = "not measured", ""
        if measured:
            sec = result["sections"]
            try:
                value = get(sec)
            except (KeyError, TypeError):
                value = "error (see gpu.json)" if sec.get(name, {}).get("error") else "not measured"
            peak = sec.get(name, {}).get("peak_gpu_mem_gib")
            mem = f"{peak} GiB" if peak is not None else ""
        lines.append(f"| {what} | {value} | {target} | {mem} |")
    return "\n".join([BEGIN, head, "", *lines, END])


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def update(readme: Path, table: str) -> str:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: markers {BEGIN!r} / {END!r} not found")
    a, rest = text.split(BEGIN, 1)
    _, b = rest.split(END, 1)
    return a + table + b


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.json")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args(argv)
    new = update(a.readme, render(load(a.json)))
    if a.check:
        if new != a.readme.read_text():
            print(f"{a.readme} is not current with {a.json}: run python benchmarks/perf_table.py", file=sys.stderr)
            return 1
        return 0
    a.readme.write_text(new)
    print(f"updated {a.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
