"""Ablation on the embedded world: does full GOAE beat Ours-w+ (input-view MSE, LPIPS), and does the
occlusion-aware mix beat no mix on novel views (MEAD LPIPS, mean of the yaw_pm60 and yaw_0 groups)?

    python benchmarks/ablation.py                      # read metrics/eval.json (from `dvc repro`)
    python benchmarks/ablation.py --train 1,4,16       # train stage 1+2 at 1x/4x/16x the params' iterations
                                                       # in a temp dir, evaluate each, stop where all hold
    python benchmarks/ablation.py --sweep --stage1 1,4 --seeds 0,1,2 --stage2-steps 30,120,480 \
        --out a.json                                   # per (stage-1 multiplier, training seed): one stage-2
                                                       # run, evaluated at each listed step count
    python benchmarks/ablation.py --sweep --gaps 0,0.5,1 --seeds 0,1 --stage2-steps 30,60 --out g.json
                                                       # the same per data.gap: each gap renders its own
                                                       # embedded world (goae.data.teacher) in a temp dir
    python benchmarks/ablation.py --merge a.json b.json     # -> benchmarks/results/ablation.json + the
                                                       # gap plot benchmarks/results/ablation_gap.png
                                                       # (an earlier ablation.json merges like a sweep file)

Sweep: one training seed per run (stage1.seed = stage2.seed = seed; eval.seed and the protocol stay
fixed). A stage-2 snapshot after n steps IS the AFA of an n-step run (constant learning rate, every step
reseeds its batch, dropout and renderer draws), so one long stage-2 run gives every stage-2 budget.
Stage-1 budgets are separate runs: the progressive schedule scales with the multiplier.

Writes benchmarks/results/ablation.json: the checks, the training budget behind them, the metrics, and
(when it evaluates itself) the mean visible-set mask of the mix. The metric and protocol are never tuned:
only the training budget changes. Run from the repository root.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
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
GENERATOR, DAVG = Path("models/generator"), Path("models/davg")  # the pipeline's outs (run from the repo root)
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
    from goae.train.stages import load_afa, load_encoder
    model = GOAE(G, load_encoder(stage1_dir, device), load_afa(stage2_dir, device), p.mix).to(device).eval()
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


def seeded_params(p, k: int, seed: int, stage2_iters: int):
    q = scaled_params(p, k)
    return dataclasses.replace(q, stage1=dataclasses.replace(q.stage1, seed=seed),
                               stage2=dataclasses.replace(q.stage2, seed=seed, iters=stage2_iters))


def sweep_run(p, k: int, seed: int, stage2_steps: list[int], data: Path, device, log, on_result,
              regions: bool = False, keep: Path | None = None) -> dict:
    """Stage 1 at k x the params' budget with `seed`, then one stage-2 run evaluated at each of
    `stage2_steps`. `on_result(run)` gets the run after every evaluation (partial results survive).
    `regions`: also record benchmarks/mix_regions.py's per-region novel-view errors (a diagnostic).
    `keep`: copy the encoder and every evaluated AFA snapshot there (s1/, s2_<n>/) for later diagnostics."""
    from goae.metrics.protocols import run_evaluation
    from goae.train import common
    from goae.train.stages import train_stage1, train_stage2
    q = seeded_params(p, k, seed, max(stage2_steps))
    run = {"stage1_multiplier": k, "seed": seed, "stage2_bg": bool(q.loss.stage2_bg and q.loss.lambda5 > 0),
           "stage1_iters": q.stage1.iters, "stage1_batch": q.stage1.batch_size,
           "stage2_batch": q.stage2.batch_size, "encoder_schedule": list(q.encoder.schedule), "stage2": []}
    quiet = lambda *a, **kw: None  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="goae-sweep-") as tmp:
        tmp = Path(tmp)
        G, gcfg = common.load_generator(GENERATOR, device=device)
        t0 = time.time()
        davg = davg_dir(q, G, tmp, device)
        train_stage1(q, data / "train", davg, tmp / "s1", tmp / "st1", tmp / "c1.csv",
                     device, generator=GENERATOR, log=quiet)
        run["stage1_s"] = round(time.time() - t0, 1)
        if keep is not None:
            shutil.copytree(tmp / "s1", Path(keep) / "s1", dirs_exist_ok=True)
        t_train = [time.time()]

        def evaluate(n: int, afa) -> None:
            if n not in stage2_steps:
                return
            train_s = time.time() - t_train[0]
            t1 = time.time()
            snap = tmp / f"s2_{n}"
            common.save_module(snap / "afa", afa, {"afa": common.config_dict(afa.cfg), "steps": n,
                                                   "provenance": {"generator": gcfg.get("provenance")}})
            ev = run_evaluation(q, G, gcfg.get("provenance"), tmp / "s1", snap, data / "celeba", data / "mead",
                                device, log=quiet)
            run["stage2"].append({"stage2_iters": n, "stage2_train_s": round(train_s, 1),
                                  "mix_mask_mean": mix_mask_mean(q, G, tmp / "s1", snap, data / "celeba", device),
                                  "checks": checks(ev.results), "metrics": subset(ev.results)})
            if keep is not None:
                shutil.copytree(snap, Path(keep) / f"s2_{n}", dirs_exist_ok=True)
            if regions:
                from mix_regions import describe, region_errors
                run["stage2"][-1]["regions"] = region_errors(q, G, tmp / "s1", snap, data / "mead", device)
                log(f"stage1 {k}x seed {seed} stage2 {n} it regions:\n" + describe(run["stage2"][-1]["regions"]))
            log(f"stage1 {k}x seed {seed} stage2 {n} it: {json.dumps(run['stage2'][-1]['checks'])}")
            on_result(run)
            t_train[0] += time.time() - t1   # training time excludes evaluations

        train_stage2(q, data / "train", tmp / "s1", tmp / "s2", tmp / "st2", tmp / "c2.csv", device,
                     generator=GENERATOR, davg_dir=davg, log=quiet, on_step=evaluate)
    return run


def davg_dir(q, G, tmp: Path, device) -> Path:
    """The pipeline's D_avg folder when it exists, else one computed into `tmp`."""
    from goae.train.davg import DAVG_FILE, compute_davg, save_davg
    if (DAVG / DAVG_FILE).is_file():
        return DAVG
    from goae.train import common
    r = compute_davg(G, common.build_mask(q, {}, device), q.davg.n_samples, q.davg.batch_size, q.davg.seed, device)
    save_davg(tmp, {**r, "d_avg_map": r["d_avg_map"].cpu()})
    return tmp


DIFFS = {"celeba_mse_goae_minus_wplus": lambda m: m["celeba"]["goae"]["mse"] - m["celeba"]["goae_wplus"]["mse"],
         "celeba_lpips_goae_minus_wplus": lambda m: m["celeba"]["goae"]["lpips"] - m["celeba"]["goae_wplus"]["lpips"],
         "mead_lpips_mix_minus_nomix": lambda m: sum(m["mead"]["goae"][g]["lpips"] - m["mead"]["goae_nomix"][g]["lpips"]
                                                     for g in ("yaw_pm60", "yaw_0")) / 2}
# Not an ordering of the paper: how much the AFA's F* (no mix) improves novel views over w+ alone. The mix
# renders w+ features on the occluded set, so it can only win there when w+ is no worse than F* there.
CONTEXT = {"mead_lpips_wplus_minus_nomix": lambda m: sum(m["mead"]["goae_wplus"][g]["lpips"]
                                                         - m["mead"]["goae_nomix"][g]["lpips"]
                                                         for g in ("yaw_pm60", "yaw_0")) / 2}
CHECK_KEYS = ("full_beats_wplus_mse", "full_beats_wplus_lpips", "mix_beats_nomix_novel_lpips", "all_hold")


def cpu_name() -> str:
    """The CPU model: training trajectories (and so every ordering) differ between CPU models, since
    float sums round differently (D_avg alone moves by 2e-6), so sweeps from different CPUs form
    separate cells."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown"


UNRECORDED_CPU = "unrecorded (earlier development machine)"


def cell_key(r: dict, e: dict) -> tuple:
    """(stage-2 L_BG, gap, CPU, train images, stage-1 iters, stage-2 iters) of one evaluation; runs
    from before a field was recorded get the value those sweeps had."""
    return (bool(r.get("stage2_bg", False)), float(r.get("gap", 0.0)), r.get("cpu", UNRECORDED_CPU),
            int(r.get("n_train", 24)), r["stage1_iters"], e["stage2_iters"])


def summarize_sweep(runs: list[dict]) -> dict:
    """Per stage-2 objective, world gap and budget (stage-1 multiplier, stage-2 iterations), over training
    seeds: how often each check holds and the mean/min/max of the differences behind it (negative = the
    paper's ordering). Runs without a `gap` (sweeps before data.gap existed) are the gap-0 world; runs
    without `stage2_bg` predate λ5·L_BG in stage 2 (False). Cells with the paper's objective come first."""
    cells: dict[tuple, list[dict]] = {}
    for r in runs:
        for e in r["stage2"]:
            es = cells.setdefault(cell_key(r, e), [])
            if all(x["seed"] != r["seed"] for x in es):   # the same run merged twice counts once
                es.append(e | {"seed": r["seed"]})
    table = []
    for (bg, gap, cpu, n_train, s1, s2), es in sorted(cells.items(), key=lambda kv: (not kv[0][0], *kv[0][1:])):
        row = {"stage2_bg": bg, "gap": gap, "cpu": cpu, "n_train": n_train, "stage1_iters": s1, "stage2_iters": s2,
               "seeds": [e["seed"] for e in es]}
        row["holds_fraction"] = {k: sum(bool(e["checks"][k]) for e in es) / len(es) for k in CHECK_KEYS}
        for name, fn in {**DIFFS, **CONTEXT}.items():
            v = [fn(e["metrics"]) for e in es]
            row[name] = {"mean": sum(v) / len(v), "min": min(v), "max": max(v)}
        row["mean_order_holds"] = all(row[n]["mean"] < 0 for n in DIFFS)
        table.append(row)
    pick = lambda r: None if r is None else {k: r[k] for k in ("stage2_bg", "gap", "cpu", "n_train",  # noqa: E731
                                                                "stage1_iters", "stage2_iters", "seeds")}
    multi = [r for r in table if len(r["seeds"]) > 1]
    first = lambda ok: pick(next((r for r in multi if ok(r)), None))  # noqa: E731
    entries = [e for es in cells.values() for e in es]
    mix_d, ctx_d = DIFFS["mead_lpips_mix_minus_nomix"], CONTEXT["mead_lpips_wplus_minus_nomix"]
    agree = sum((mix_d(e["metrics"]) < 0) == (ctx_d(e["metrics"]) < 0) for e in entries)
    return {"definition": "a cell (stage-2 L_BG, gap, CPU, train images, stage-1 iters, stage-2 iters) 'holds' a check when it holds "
                          "for every training seed run there, 'holds_in_mean' when each difference averaged over "
                          "the seeds is negative; both need at least 2 seeds; the first such cell (L_BG on first, "
                          "then gap, stage-1, stage-2 order) is reported, per check and for all of them",
            "holds_at": first(lambda r: r["holds_fraction"]["all_hold"] == 1.0),
            "holds_in_mean_at": first(lambda r: r["mean_order_holds"]),
            "each_holds_at": {k: first(lambda r, k=k: r["holds_fraction"][k] == 1.0) for k in CHECK_KEYS[:3]},
            "mix_wins_when_wplus_beats_nomix": {
                "what": "evaluations in which (mix beats no-mix on novel LPIPS) == (w+ alone beats no-mix there)",
                "agree": agree, "of": len(entries)},
            "table": table}


def plot_gap(summary: dict, out: str | Path) -> Path | None:
    """PNG: each difference behind the two orderings against the world's gap, one line per budget and
    stage-2 objective (solid: with λ5·L_BG; mean over seeds, bars = min..max) for those measured at two
    gaps or more. Below 0 = the paper's
    ordering. None when the sweep has one gap only."""
    table = summary["table"]
    gaps = sorted({r["gap"] for r in table})
    if len(gaps) < 2:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    titles = {"celeba_mse_goae_minus_wplus": "input view MSE: full - w+",
              "celeba_lpips_goae_minus_wplus": "input view LPIPS: full - w+",
              "mead_lpips_mix_minus_nomix": "novel views LPIPS: mix - no mix"}
    budget = lambda r: (r["stage2_bg"], r["stage1_iters"], r["stage2_iters"], r["cpu"], r["n_train"])  # noqa: E731
    at = lambda b: {r["gap"] for r in table if budget(r) == b}  # noqa: E731
    budgets = sorted(b for b in {budget(r) for r in table} if len(at(b)) > 1)
    fig, axes = plt.subplots(1, len(titles), figsize=(5 * len(titles), 4))
    for ax, (key, title) in zip(axes, titles.items()):
        for i, b in enumerate(budgets):
            rows = sorted((r for r in table if budget(r) == b), key=lambda r: r["gap"])
            x = [r["gap"] + 0.01 * (i - len(budgets) / 2) for r in rows]  # small offset: bars stay apart
            mean = [r[key]["mean"] for r in rows]
            err = [[m - r[key]["min"] for m, r in zip(mean, rows)], [r[key]["max"] - m for m, r in zip(mean, rows)]]
            n = max(len(r["seeds"]) for r in rows)
            ax.errorbar(x, mean, yerr=err, marker="o", capsize=3, ls="-" if b[0] else "--",
                        label=f"stage 1 {b[1]} it, stage 2 {b[2]} it{' + L_BG' if b[0] else ''} ({n} seeds, "
                              f"{'earlier CPU' if b[3] == UNRECORDED_CPU else b[3][:12]})")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("data.gap (teacher detail / plane feature spread)")
        ax.set_title(title + "  (< 0: paper's order)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def world_at_gap(p, gap: float, folder: Path, device) -> Path:
    """Render the embedded world of `p` with data.gap = `gap` (no photos) and prepare it -> prepared dir."""
    from goae.data.prepare import prepare_all
    from goae.data.world import render_world
    from goae.train import common
    q = dataclasses.replace(p, data=dataclasses.replace(p.data, gap=float(gap), photos=False))
    G, _ = common.load_generator(GENERATOR, device=device)
    render_world(G, q.data, folder / "raw", device)
    prepare_all(q, folder / "raw", folder / "prepared", device, log=lambda *a, **kw: None)
    return folder / "prepared"


def train_and_evaluate(p, k: int, data: Path, device, log) -> dict:
    from goae.metrics.protocols import run_evaluation
    from goae.train import common
    from goae.train.stages import train_stage1, train_stage2
    q = scaled_params(p, k)
    with tempfile.TemporaryDirectory(prefix="goae-ablation-") as tmp:
        tmp = Path(tmp)
        G, gcfg = common.load_generator(GENERATOR, device=device)
        davg = davg_dir(q, G, tmp, device)
        t0 = time.time()
        quiet = lambda *a, **kw: None  # noqa: E731
        train_stage1(q, data / "train", davg, tmp / "s1", tmp / "st1", tmp / "c1.csv", device, generator=GENERATOR,
                     log=quiet)
        train_stage2(q, data / "train", tmp / "s1", tmp / "s2", tmp / "st2", tmp / "c2.csv", device,
                     generator=GENERATOR, davg_dir=davg, log=quiet)
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
    ap.add_argument("--sweep", action="store_true", help="seeds x stage-1 multipliers x stage-2 snapshots")
    ap.add_argument("--stage1", default="1", help="sweep: comma-separated stage-1 budget multipliers")
    ap.add_argument("--seeds", default="0", help="sweep: comma-separated training seeds")
    ap.add_argument("--stage2-steps", default="30,60,120,240,480", help="sweep: stage-2 step counts to evaluate")
    ap.add_argument("--gaps", default="", help="sweep: comma-separated data.gap values; each renders its own "
                                                "world in a temp dir (default: the world in --data)")
    ap.add_argument("--regions", action="store_true", help="sweep: also record the per-region novel-view errors "
                                                               "of benchmarks/mix_regions.py (a diagnostic)")
    ap.add_argument("--keep", default="", help="sweep: keep the trained models under DIR/gap<g>_s1x<k>_seed<s>/")
    ap.add_argument("--plot", default="benchmarks/results/ablation_gap.png", help="merge: gap plot PNG")
    ap.add_argument("--merge", nargs="+", default=None, help="sweep result files to merge into --out")
    a = ap.parse_args(argv)
    if a.merge:
        return merge(a.merge, a.out, a.params, a.eval, a.plot)
    if a.threads:
        torch.set_num_threads(a.threads)
    p = load_params(a.params)
    device = torch.device("cuda" if torch.cuda.is_available() and p.runtime.device != "cpu" else "cpu")
    result = {"world": "embedded" if p.data.source == "embedded" else p.data.source,
              "questions": {"full_beats_wplus": "celeba: goae < goae_wplus on MSE and LPIPS",
                            "mix_beats_nomix": "mead: goae < goae_nomix on LPIPS (mean of yaw_pm60, yaw_0)"},
              "device": str(device)}
    if a.sweep:
        done: list[dict] = []
        save = lambda runs: write_json_atomic(a.out, json_safe({  # noqa: E731
            **result, "source": "trained here (sweep)", "runs": runs, "summary": summarize_sweep(runs)}))
        ints = lambda x: [int(v) for v in x.split(",") if v.strip()]  # noqa: E731
        gaps = [float(v) for v in a.gaps.split(",") if v.strip()] or [None]
        for gap in gaps:
            with tempfile.TemporaryDirectory(prefix="goae-world-") as world:
                data = Path(a.data) if gap is None else world_at_gap(p, gap, Path(world), device)
                if a.keep:
                    shutil.copytree(data / "mead", Path(a.keep) / f"world_gap{gap if gap is not None else p.data.gap:g}"
                                    / "mead", dirs_exist_ok=True)
                for k in ints(a.stage1):
                    for seed in ints(a.seeds):
                        print(f"[ablation] sweep: gap {gap}, stage 1 at {k}x, seed {seed}", flush=True)
                        tag = {"gap": p.data.gap if gap is None else gap, "n_train": p.data.n_train,
                               "cpu": cpu_name(), "threads": torch.get_num_threads()}
                        done.append(sweep_run(p, k, seed, ints(a.stage2_steps), data, device,
                                              lambda s: print(f"[ablation] {s}", flush=True),
                                              lambda r: save(done + [tag | r]), a.regions,
                                              Path(a.keep) / f"gap{tag['gap']:g}_s1x{k}_seed{seed}" if a.keep
                                              else None) | tag)
        return json.loads(Path(a.out).read_text())
    if not a.train:
        result.update(from_eval_json(p, a.eval))
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


def from_eval_json(p, path: str) -> dict:
    """The checks on a pipeline evaluation (`dvc repro` writes metrics/eval.json)."""
    ev = json.loads(Path(path).read_text())
    return {"source": path, "budget": budget_of(p), "checks": checks(ev), "metrics": subset(ev),
            "protocol": {"seed": ev["protocol"]["seed"], "n_celeba": ev["protocol"]["celeba"]["n_images"],
                         "n_mead_ids": ev["protocol"]["mead"]["n_identities"]},
            "real_weights": ev.get("real_weights")}


def merge(files: list[str], out: str, params: str, eval_json: str | None = None, plot: str | None = None) -> dict:
    """Sweep files -> one result: every run, the per-budget summary over seeds, and the default-budget
    pipeline figures (metrics/eval.json) when present."""
    parts = [json.loads(Path(f).read_text()) for f in files]
    p = load_params(params)
    runs = [r for part in parts for r in part["runs"]]
    result = {k: parts[0][k] for k in ("world", "questions", "device")}
    result.update(source="trained here (sweep): " + ", ".join(sorted(Path(f).name for f in files)),
                  protocol={"eval_seed": p.eval.seed, "fid": False, "n_celeba": p.eval.n_celeba,
                            "n_mead_ids": p.eval.n_mead_ids},
                  summary=summarize_sweep(runs), runs=runs)
    if eval_json and Path(eval_json).is_file():   # the pipeline's own run at the params' budget
        result["pipeline_run"] = from_eval_json(p, eval_json) | {"threads": "runtime.threads (torch default)"}
    if plot and plot_gap(result["summary"], plot):
        result["plot"] = str(plot)
    write_json_atomic(out, json_safe(result))
    print(json.dumps(result["summary"]["holds_at"]), json.dumps(result["summary"]["each_holds_at"]))
    return result


if __name__ == "__main__":
    main()
