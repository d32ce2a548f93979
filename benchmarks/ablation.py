"""Ablation on the embedded world: does full GOAE beat Ours-w+ (input-view MSE, LPIPS), and does the
occlusion-aware mix beat no mix on novel views (MEAD LPIPS, mean of the yaw_pm60 and yaw_0 groups)?

    python benchmarks/ablation.py                      # read metrics/eval.json (from `dvc repro`)
    python benchmarks/ablation.py --train 1,4,16       # train stage 1+2 at 1x/4x/16x the params' iterations
                                                       # in a temp dir, evaluate each, stop where all hold

Writes benchmarks/results/ablation.json: the checks, the training budget behind them, the metrics, and
(when it evaluates itself) the mean visible-set mask of the mix. The metric and protocol are never tuned:
only the training budget changes. Run from the repository root.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from goae.config import load_params  # noqa: E402
from goae.data.dataset import write_json_atomic  # noqa: E402
from goae.metrics.report import json_safe  # noqa: E402

OUT = Path("benchmarks/results/ablation.json")
METHODS = ["goae", "goae_wplus", "goae_nomix"]


def checks(results: dict) -> dict:
    c, m = results["celeba"], results["mead"]
    novel = {k: sum(m[k][g]["lpips"] for g in ("yaw_pm60", "yaw_0")) / 2 for k in ("goae", "goae_nomix")}
    out = {"full_beats_wplus_mse": c["goae"]["mse"] < c["goae_wplus"]["mse"],
           "full_beats_wplus_lpips": c["goae"]["lpips"] < c["goae_wplus"]["lpips"],
           "mix_beats_nomix_novel_lpips": novel["goae"] < novel["goae_nomix"],
           "mix_vs_nomix_per_group": {g: {k: m[k][g]["lpips"] for k in ("goae", "goae_nomix")}
                                      for g in ("yaw_pm60", "yaw_0")}}
    out["all_hold"] = all(out[k] for k in ("full_beats_wplus_mse", "full_beats_wplus_lpips",
                                            "mix_beats_nomix_novel_lpips"))
    return out


def subset(results: dict) -> dict:
    keep = ("mse", "lpips", "id", "geo_err")
    return {"celeba": {k: {x: results["celeba"][k][x] for x in keep} for k in METHODS},
            "mead": {k: {g: {x: results["mead"][k][g][x] for x in ("lpips", "id", "geo_err")}
                         for g in ("yaw_pm60", "yaw_0")} for k in METHODS}}


def budget_of(p, stage1_dir="models/stage1", stage2_dir="models/stage2") -> dict:
    def steps(f):
        f = Path(f)
        return json.loads(f.read_text()).get("steps") if f.is_file() else None
    s1, s2 = steps(Path(stage1_dir) / "encoder.json"), steps(Path(stage2_dir) / "afa.json")
    return {"stage1_iters": p.stage1.iters if s1 is None else s1,
            "stage2_iters": p.stage2.iters if s2 is None else s2,
            "stage1_batch": p.stage1.batch_size, "stage2_batch": p.stage2.batch_size}


@torch.no_grad()
def mix_mask_mean(p, G, stage1_dir, stage2_dir, celeba_dir, device) -> float:
    """Mean visibility mask of the mix on the first celeba images: 0 means the mix renders the w+ tri-plane."""
    from goae.metrics.protocols import load_split
    from goae.model.goae import GOAE
    from goae.model.mix import MixConfig
    from goae.train.stages import load_afa, load_encoder
    mix = MixConfig(planes=p.mix.planes, blur=p.mix.blur, sigma=p.mix.sigma, threshold=p.mix.threshold,
                    kernel=p.mix.kernel)
    model = GOAE(G, load_encoder(stage1_dir, device), load_afa(stage2_dir, device), mix).to(device).eval()
    d = load_split(celeba_dir, "celeba", min(4, p.eval.n_celeba), G.img_resolution)
    r = model.invert(d.images.to(device), d.labels.to(device), generator=torch.Generator(device=device).manual_seed(0))
    return float(r.masks.mean())


def scaled_params(p, k: int):
    s1 = dataclasses.replace(p.stage1, iters=p.stage1.iters * k)
    s2 = dataclasses.replace(p.stage2, iters=p.stage2.iters * k)
    enc = dataclasses.replace(p.encoder, schedule=[x * k for x in p.encoder.schedule])
    ev = dataclasses.replace(p.eval, methods=list(METHODS), fid=False, extra_encoders=[])
    tr = dataclasses.replace(p.train, resume=False, checkpoint_every=10 ** 9)
    return dataclasses.replace(p, stage1=s1, stage2=s2, encoder=enc, eval=ev, train=tr)


def train_and_evaluate(p, k: int, data: Path, device, log) -> dict:
    from goae.metrics.protocols import run_evaluation
    from goae.train import common
    from goae.train.davg import compute_davg
    from goae.train.stages import train_stage1, train_stage2
    q = scaled_params(p, k)
    with tempfile.TemporaryDirectory(prefix="goae-ablation-") as tmp:
        tmp = Path(tmp)
        G, gcfg = common.load_generator(device=device)
        davg = Path("models/davg/davg.safetensors")
        if not davg.is_file():
            from safetensors.torch import save_file
            r = compute_davg(G, common.build_mask(q, {}, device), q.davg.n_samples, q.davg.batch_size, q.davg.seed,
                             device)
            davg = tmp / "davg.safetensors"
            save_file({"d_avg": torch.tensor(r["d_avg"]), "d_avg_map": r["d_avg_map"].contiguous().cpu()}, str(davg))
        t0 = time.time()
        quiet = lambda *a, **kw: None  # noqa: E731
        train_stage1(q, data / "train", davg, tmp / "s1", tmp / "st1", tmp / "c1.csv", device, log=quiet)
        train_stage2(q, data / "train", tmp / "s1", tmp / "s2", tmp / "st2", tmp / "c2.csv", device, log=quiet)
        t_train = time.time() - t0
        ev = run_evaluation(q, G, gcfg.get("provenance"), tmp / "s1", tmp / "s2", data / "celeba", data / "mead",
                            device, log=log)
        mask = mix_mask_mean(q, G, tmp / "s1", tmp / "s2", data / "celeba", device)
    return {"multiplier": k, "budget": {"stage1_iters": q.stage1.iters, "stage2_iters": q.stage2.iters,
                                        "stage1_batch": q.stage1.batch_size, "stage2_batch": q.stage2.batch_size},
            "train_s": round(t_train, 1), "eval_s": round(time.time() - t0 - t_train, 1),
            "mix_mask_mean": mask, "checks": checks(ev.results), "metrics": subset(ev.results),
            "protocol": {"n_celeba": ev.protocol["celeba"]["n_images"],
                         "n_mead_ids": ev.protocol["mead"]["n_identities"], "seed": q.eval.seed, "fid": False}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval", default="metrics/eval.json", help="eval.json to read (default mode)")
    ap.add_argument("--train", default="", help="comma-separated budget multipliers: train+evaluate each")
    ap.add_argument("--data", default="data/prepared", help="folder with train/celeba/mead splits")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    p = load_params(a.params)
    device = torch.device("cuda" if torch.cuda.is_available() and p.runtime.device != "cpu" else "cpu")
    result = {"world": "embedded" if p.data.source == "embedded" else p.data.source,
              "questions": {"full_beats_wplus": "celeba: goae < goae_wplus on MSE and LPIPS",
                            "mix_beats_nomix": "mead: goae < goae_nomix on LPIPS (mean of yaw_pm60, yaw_0)"},
              "device": str(device)}
    if not a.train:
        ev = json.loads(Path(a.eval).read_text())
        result.update(source=a.eval, budget=budget_of(p), checks=checks(ev), metrics=subset(ev),
                      protocol={k: ev["protocol"][k] for k in ("seed",)} | {
                          "n_celeba": ev["protocol"]["celeba"]["n_images"],
                          "n_mead_ids": ev["protocol"]["mead"]["n_identities"]},
                      real_weights=ev.get("real_weights"))
    else:
        runs = []
        for k in [int(x) for x in a.train.split(",") if x.strip()]:
            print(f"[ablation] training at {k}x the params' budget", flush=True)
            r = train_and_evaluate(p, k, Path(a.data), device, log=lambda s: print(f"[ablation] {s}", flush=True))
            runs.append(r)
            print(f"[ablation] {k}x: {json.dumps(r['checks'])}", flush=True)
            write_json_atomic(a.out, json_safe({**result, "runs": runs, "holds_at": None}))   # partial results survive
            if r["checks"]["all_hold"]:
                break
        result.update(source="trained here", runs=runs,
                      holds_at=next((r["budget"] for r in runs if r["checks"]["all_hold"]), None))
    write_json_atomic(a.out, json_safe(result))
    print(json.dumps(result.get("checks") or [r["checks"] for r in result["runs"]], indent=1))
    return result


if __name__ == "__main__":
    main()
