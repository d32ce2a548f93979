"""Smoke pipeline: the committed pipeline in a temporary clone, end to end, with checks.

1. `git clone` this repository (committed state) into a temp folder;
2. `dvc repro` with the committed params.yaml (the embedded tiny world), MLflow in a throwaway sqlite DB;
3. check: metrics/eval.json + table1.md exist with every method × protocol, `dvc status` is clean,
   one FINISHED pipeline run in MLflow, and every stage read exactly the params keys dvc.yaml lists for it
   (GOAE_PARAMS_AUDIT);
4. graph precision, by `dvc status` on the finished clone: `loss.lambda7` changed marks train_stage2 only
   (so train_stage2 → evaluate re-run), `loss.lambda5` marks train_stage1 and train_stage2 (L_BG trains
   both, §4.2; stage 1 onward re-runs), and a
   whitespace edit of goae/eg3d/renderer.py marks exactly the stages whose scripts import it;
5. `dvc exp run -S loss.lambda5=3`: only train_stage1 onward re-runs; MLflow then holds two pipeline runs
   with loss.lambda5 5.0 and 3.0 and different evaluation metrics; `dvc exp show --md` lists both.

`python tools/smoke_pipeline.py [--keep DIR] [--quick]` prints a JSON summary; exit 0 only if all checks pass.
`--quick` shrinks budgets further via `-S` overrides (the committed params stay the default).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "prepare", "davg", "train_stage1", "train_stage2", "evaluate")
sys.path.insert(0, str(ROOT / "tools"))
import dvc_graph  # noqa: E402
# CI-time budgets. FID is off here: its Inception path is tested on its own (tests/test_metrics.py) and
# costs a third of each evaluation; the checks below are about the graph, tracking and artifacts.
QUICK = ["stage1.iters=8", "stage2.iters=4", "davg.n_samples=32", "data.n_train=16", "eval.n_celeba=3",
         "eval.n_mead_ids=2", "data.n_mead_ids=2", "data.n_celeba=3", "eval.optim_w_steps=2",
         "eval.optim_g_steps=1", "eval.fid=false", "encoder.schedule=[2,4,6]"]


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    t0 = time.time()
    print(f"$ {' '.join(cmd)}", flush=True)
    p = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True)
    print(f"  ({time.time() - t0:.1f} s, rc={p.returncode})", flush=True)
    if check and p.returncode != 0:
        print(p.stdout[-4000:], p.stderr[-6000:], sep="\n", file=sys.stderr)
        raise RuntimeError(f"command failed: {' '.join(cmd)}")
    return p


def pipeline_runs(db: Path, experiment: str) -> list:
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`dvc.role` = 'pipeline'")


def downstream(spec: dict, changed: set[str]) -> set[str]:
    """`changed` plus every stage that depends (through outs → deps) on one of them: what `dvc repro`
    re-runs when the changed stages produce new outs."""
    def under(dep: str, out: str) -> bool:
        return dep == out or dep.startswith(out.rstrip("/") + "/")
    outs = {n: [next(iter(o)) if isinstance(o, dict) else o for k in ("outs", "metrics", "plots")
                for o in st.get(k) or []] for n, st in spec["stages"].items()}
    run, grew = set(changed), True
    while grew:
        grew = False
        for n, st in spec["stages"].items():
            if n not in run and any(under(d, o) for m in run for o in outs[m] for d in st.get("deps") or []):
                run.add(n)
                grew = True
    return run


def marked(clone: Path, env: dict) -> set[str]:
    """Stages `dvc status` reports as changed (their own deps or params)."""
    out = run(["dvc", "status", "--json"], clone, env).stdout
    return set(json.loads(out or "{}"))


def graph_checks(clone: Path, env: dict) -> tuple[dict, dict]:
    """Which stages one param or one code edit marks, on a finished, clean clone (then restored)."""
    import yaml
    spec = yaml.safe_load((clone / "dvc.yaml").read_text())
    params_file, renderer = clone / "params.yaml", clone / "goae" / "eg3d" / "renderer.py"
    seen, checks = {}, {}
    for key, value, expect in (("lambda7", 0.001, {"train_stage2"}), ("lambda5", 3.0, {"train_stage1", "train_stage2"})):
        text = params_file.read_text()
        params = yaml.safe_load(text)
        params["loss"][key] = value
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        got = marked(clone, env)
        params_file.write_text(text)
        seen[f"loss.{key}"] = {"marked": sorted(got), "re-run": sorted(downstream(spec, got))}
        checks[f"loss.{key} marks {sorted(expect)} only (re-runs {sorted(downstream(spec, expect))})"] = got == expect
    importers = {n for n in STAGES if "goae/eg3d/renderer.py" in dvc_graph.closure(
        dvc_graph.stage_script(spec["stages"][n]["cmd"]), clone)}
    text = renderer.read_text()
    renderer.write_text(text + "\n")
    got = marked(clone, env)
    renderer.write_text(text)
    seen["renderer.py whitespace"] = {"marked": sorted(got), "importers": sorted(importers)}
    checks["a whitespace edit of goae/eg3d/renderer.py marks every stage importing it"] = \
        got == importers and "train_stage1" in importers
    checks["restored: dvc status clean"] = marked(clone, env) == set()
    return seen, checks


def smoke(work: Path, quick: bool = False, exp_check: bool = True) -> dict:
    env = dict(os.environ)
    venv_bin = Path(sys.executable).parent
    db = work / "mlflow.db"
    env.update(PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}", MLFLOW_TRACKING_URI=f"sqlite:///{db}",
               MLFLOW_EXPERIMENT_NAME="ci-smoke", DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true",
               HF_HUB_OFFLINE="1", GIT_AUTHOR_NAME="goae-smoke", GIT_AUTHOR_EMAIL="smoke@localhost",
               GIT_COMMITTER_NAME="goae-smoke", GIT_COMMITTER_EMAIL="smoke@localhost",
               GOAE_PARAMS_AUDIT=str(work / "params-audit"))
    clone = work / "clone"
    run(["git", "clone", "--quiet", str(ROOT), str(clone)], work, env)
    env["PYTHONPATH"] = str(clone)  # the clone's own goae, not the editable install's
    summary: dict = {"clone": str(clone)}
    t0 = time.time()
    if quick:
        run(["dvc", "exp", "run", "-n", "base", *sum((["-S", s] for s in QUICK), [])], clone, env)
    else:
        run(["dvc", "repro"], clone, env)
    summary["repro_s"] = round(time.time() - t0, 1)
    ev = json.loads((clone / "metrics" / "eval.json").read_text())
    table = (clone / "metrics" / "table1.md").read_text()
    status = run(["dvc", "status"], clone, env).stdout
    summary["dvc_status_clean"] = "up to date" in status or status.strip() == ""
    runs = pipeline_runs(db, "ci-smoke")
    summary["pipeline_runs"] = [(r.data.params.get("loss.lambda5"), r.info.status) for r in runs]
    checks = {
        "eval.json has celeba+mead": {"celeba", "mead"} <= set(ev),
        "table1.md written": "MSE" in table,
        "dvc status clean": summary["dvc_status_clean"],
        "one FINISHED pipeline run": len(runs) == 1 and runs[0].info.status == "FINISHED",
    }
    import yaml
    problems = dvc_graph.params_problems(yaml.safe_load((clone / "dvc.yaml").read_text()), work / "params-audit")
    summary["params_problems"] = problems
    checks["every stage reads exactly the params keys dvc.yaml lists"] = problems == {}
    summary["graph"], graph = graph_checks(clone, env)
    checks.update(graph)
    # Versioned artifacts: commit the lock, push outs to a local remote, restore them in a fresh clone.
    run(["git", "add", "-A"], clone, env)
    run(["git", "commit", "-qm", "smoke: pipeline results"], clone, env)
    store = work / "dvc-store"
    run(["dvc", "remote", "add", "--local", "-d", "store", str(store)], clone, env)
    run(["dvc", "push"], clone, env)
    clone2 = work / "clone2"
    run(["git", "clone", "--quiet", str(clone), str(clone2)], work, env)
    run(["dvc", "remote", "add", "--local", "-d", "store", str(store)], clone2, env)
    run(["dvc", "pull"], clone2, env)
    status2 = run(["dvc", "status"], clone2, env).stdout
    checks["dvc pull in a fresh clone restores everything (status clean)"] = "up to date" in status2
    shutil.rmtree(clone2, ignore_errors=True)
    # Offline plots and metrics commands.
    run(["dvc", "plots", "show", "-o", str(work / "plots")], clone, env)
    html = (work / "plots" / "index.html").read_text()
    checks["dvc plots show renders offline (no CDN)"] = "cdn.jsdelivr" not in html and "vega" in html
    checks["dvc metrics diff works"] = run(["dvc", "metrics", "diff", "HEAD~1"], clone, env, check=False).returncode == 0
    if exp_check:
        t1 = time.time()
        args = ["dvc", "exp", "run", "-n", "lam3", "-S", "loss.lambda5=3.0"]
        if quick:
            args += sum((["-S", s] for s in QUICK), [])
        p = run(args, clone, env)
        summary["exp_run_s"] = round(time.time() - t1, 1)
        out = p.stdout + p.stderr
        ran = [s for s in STAGES if f"Running stage '{s}'" in out]
        summary["exp_stages_run"] = ran
        runs = pipeline_runs(db, "ci-smoke")
        lam = sorted(float(r.data.params.get("loss.lambda5", "nan")) for r in runs)
        metr = [r.data.metrics.get("celeba/goae/mse") for r in runs]
        show = run(["dvc", "exp", "show", "--md", "--no-pager"], clone, env, check=False).stdout
        summary.update(lambda5=lam, celeba_goae_mse=metr)
        checks.update({
            "exp run re-ran only train_stage1 onward": ran == ["train_stage1", "train_stage2", "evaluate"],
            "two pipeline runs with lambda5 5.0 and 3.0": lam == [3.0, 5.0],
            "their evaluation metrics differ": len(set(metr)) == 2 and None not in metr,
            "dvc exp show --md lists the experiment": "lam3" in show,
        })
    summary["checks"] = checks
    summary["ok"] = all(checks.values())
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", default=None, help="work folder to keep (default: a temp folder, removed)")
    ap.add_argument("--quick", action="store_true", help="smaller budgets via -S overrides")
    ap.add_argument("--no-exp", action="store_true", help="skip the `dvc exp run -S loss.lambda5=3` check")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="goae-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        s = smoke(work, args.quick, not args.no_exp)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(s, indent=1))
    return 0 if s["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
