"""Agreement of our camera estimates with official EG3D labels on a labelled folder of crops.

`python -m goae.data.pose_bench FOLDER [--detector auto] [--out DIR]` runs the real `goae pose` path
(detector → EG3D crop → 68-point fit) on the images listed in FOLDER/dataset.json and prints the
per-image table (rotation error, pitch and yaw difference) plus the three summary figures of the
pose-agreement check: median and worst rotation error, mean pitch difference.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from goae.data.dataset import read_dataset_json
from goae.data.photos import pose_photos
from goae.data.pose import compare_labels


def benchmark(folder: str | Path, out: str | Path, detector: str = "auto", device="cpu",
              fan_weights: str | None = None, pose_depth: str = "facemesh") -> dict:
    folder, out = Path(folder), Path(out)
    official = dict(read_dataset_json(folder))
    res = pose_photos([folder / n for n in official], out / "dataset.json", detector=detector, device=device,
                      fan_weights=fan_weights, progress=False, pose_depth=pose_depth)
    ours, models = {}, {}
    for key, r in res["files"].items():
        if r["status"] == "ok":
            ours[key] = dict(read_dataset_json(out))[r["output"]]
            models[key] = r["pose"]["landmark_model"]
    cmp = compare_labels(official, ours)
    cmp["landmark_models"] = sorted(set(models.values()))
    cmp["fits"] = sorted({r["pose"]["fit"] for r in res["files"].values() if r["status"] == "ok"})
    cmp["failed"] = [k for k, r in res["files"].items() if r["status"] != "ok"]
    cmp["images_per_s"] = res["summary"]["images_per_s"]
    return cmp


def table(cmp: dict) -> str:
    lines = ["| image | rotation error (°) | pitch diff (°) | yaw diff (°) |", "|---|---|---|---|"]
    for name, r in cmp["images"].items():
        lines.append(f"| {name} | {r['rotation_error_deg']:.2f} | {r['pitch_diff_deg']:+.2f} | {r['yaw_diff_deg']:+.2f} |")
    lines.append(f"| **median / worst / mean pitch** | {cmp['median_rotation_error_deg']:.2f} / "
                 f"{cmp['max_rotation_error_deg']:.2f} | {cmp['mean_pitch_diff_deg']:+.2f} (sd {cmp['sd_pitch_diff_deg']:.2f}) | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--detector", default="auto")
    ap.add_argument("--fan-weights", default=None)
    ap.add_argument("--pose-depth", default="facemesh", choices=["facemesh", "none"])
    ap.add_argument("--out", default=None, help="where the crops go (default: a temporary folder)")
    ap.add_argument("--json", action="store_true", help="print the full comparison as JSON")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cmp = benchmark(a.folder, a.out or tmp, a.detector, fan_weights=a.fan_weights, pose_depth=a.pose_depth)
    print(json.dumps(cmp, indent=1) if a.json else table(cmp) + f"\n\nlandmarks: {cmp['landmark_models']}, "
          f"fit: {cmp['fits']}, {cmp['images_per_s']} images/s, failed: {cmp['failed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
