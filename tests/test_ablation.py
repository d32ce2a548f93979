"""benchmarks/ablation.py's sweep summary: which budget it reports as the one where the orderings hold."""
from __future__ import annotations

import importlib.util

from _tiny import ROOT

spec = importlib.util.spec_from_file_location("ablation_bench", ROOT / "benchmarks" / "ablation.py")
ablation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablation)


def _metrics(goae_mse, wplus_mse, goae_lp, wplus_lp, mix60, nomix60, mix0, nomix0) -> dict:
    row = lambda mse, lp: {"mse": mse, "lpips": lp, "id": 0.9, "geo_err": 1.0}  # noqa: E731
    novel = lambda a, b: {"yaw_pm60": {"lpips": a, "id": 0.9, "geo_err": 1.0},  # noqa: E731
                          "yaw_0": {"lpips": b, "id": 0.9, "geo_err": 1.0}}
    return {"celeba": {"goae": row(goae_mse, goae_lp), "goae_wplus": row(wplus_mse, wplus_lp),
                       "goae_nomix": row(goae_mse, goae_lp)},
            "mead": {"goae": novel(mix60, mix0), "goae_wplus": novel(mix60, mix0), "goae_nomix": novel(nomix60, nomix0)}}


def _entry(n: int, m: dict) -> dict:
    full = {"celeba": {k: m["celeba"][k] | {"fid": 0, "time_s": 0} for k in m["celeba"]},
            "mead": {k: {g: v | {"fid": 0} for g, v in m["mead"][k].items()} for k in m["mead"]}}
    return {"stage2_iters": n, "checks": ablation.checks(full), "metrics": ablation.subset(full)}


GOOD = _metrics(0.1, 0.2, 0.04, 0.05, 0.05, 0.07, 0.07, 0.08)      # every ordering of the paper
BAD_MIX = _metrics(0.1, 0.2, 0.04, 0.05, 0.09, 0.07, 0.07, 0.08)   # mix loses on yaw ±60 (mean +0.005)


def test_checks_read_the_paper_orderings():
    assert _entry(1, GOOD)["checks"]["all_hold"]
    c = _entry(1, BAD_MIX)["checks"]
    assert c["full_beats_wplus_mse"] and c["full_beats_wplus_lpips"] and not c["mix_beats_nomix_novel_lpips"]


def test_summary_needs_every_seed_and_reports_the_first_budget():
    runs = [{"seed": 0, "stage1_iters": 40, "stage2": [_entry(30, BAD_MIX), _entry(60, GOOD), _entry(120, GOOD)]},
            {"seed": 1, "stage1_iters": 40, "stage2": [_entry(30, GOOD), _entry(60, BAD_MIX), _entry(120, GOOD)]},
            {"seed": 0, "stage1_iters": 10, "stage2": [_entry(30, GOOD)]}]    # one seed only: never reported
    s = ablation.summarize_sweep(runs)
    cells = {(r["stage1_iters"], r["stage2_iters"]): r for r in s["table"]}
    assert cells[(40, 30)]["holds_fraction"]["all_hold"] == 0.5
    assert cells[(40, 60)]["seeds"] == [0, 1]
    assert abs(cells[(40, 30)]["mead_lpips_mix_minus_nomix"]["max"] - 0.005) < 1e-12
    old = {"cpu": ablation.UNRECORDED_CPU, "n_train": 24}   # runs from before those fields were recorded
    assert s["holds_at"] == {"stage2_bg": False, "gap": 0.0, "stage1_iters": 40, "stage2_iters": 120,
                             "seeds": [0, 1]} | old
    # mean of (+0.005, -0.015) over the two seeds is negative at 30 already
    assert s["holds_in_mean_at"] == {"stage2_bg": False, "gap": 0.0, "stage1_iters": 40, "stage2_iters": 30,
                                     "seeds": [0, 1]} | old


def test_cpus_and_worlds_form_their_own_cells_and_a_run_merged_twice_counts_once():
    """Float rounding differs between CPU models and changes the training trajectory, so seeds run on
    another CPU (or another train-set size) are other samples, never pooled; a duplicate is dropped."""
    runs = [{"seed": s, "stage1_iters": 40, "stage2": [_entry(30, GOOD)]} for s in (0, 1)]
    epyc = [dict(r, cpu="AMD EPYC", stage2=[_entry(30, BAD_MIX)]) for r in runs]
    big = [dict(r, cpu="AMD EPYC", n_train=96) for r in runs]
    s = ablation.summarize_sweep(runs + epyc + epyc[:1] + big)
    assert [(r["cpu"], r["n_train"], r["seeds"]) for r in s["table"]] == [
        ("AMD EPYC", 24, [0, 1]), ("AMD EPYC", 96, [0, 1]), (ablation.UNRECORDED_CPU, 24, [0, 1])]
    assert s["table"][0]["holds_fraction"]["all_hold"] == 0.0 and s["table"][2]["holds_fraction"]["all_hold"] == 1.0
    assert isinstance(ablation.cpu_name(), str) and ablation.cpu_name()


def test_summary_per_gap_and_gap_plot(tmp_path):
    runs = [{"gap": g, "seed": s, "stage1_iters": 40, "stage2": [_entry(30, GOOD if g else BAD_MIX)]}
            for g in (0.0, 1.0) for s in (0, 1)]
    s = ablation.summarize_sweep(runs)
    assert [(r["gap"], r["holds_fraction"]["all_hold"]) for r in s["table"]] == [(0.0, 0.0), (1.0, 1.0)]
    assert s["holds_at"] == {"stage2_bg": False, "gap": 1.0, "stage1_iters": 40, "stage2_iters": 30, "seeds": [0, 1],
                             "cpu": ablation.UNRECORDED_CPU, "n_train": 24}
    assert s["each_holds_at"]["full_beats_wplus_mse"]["gap"] == 0.0      # MSE holds on both worlds
    assert s["each_holds_at"]["mix_beats_nomix_novel_lpips"]["gap"] == 1.0
    png = ablation.plot_gap(s, tmp_path / "gap.png")
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    assert ablation.plot_gap(ablation.summarize_sweep(runs[:2]), tmp_path / "one.png") is None   # one gap
    # runs with stage-2 L_BG are their own cells, listed (and reported) first
    s2 = ablation.summarize_sweep(runs + [dict(r, stage2_bg=True, stage2=[_entry(30, BAD_MIX)]) for r in runs])
    assert [(r["stage2_bg"], r["gap"]) for r in s2["table"]] == [(True, 0.0), (True, 1.0), (False, 0.0), (False, 1.0)]
    assert s2["holds_at"]["stage2_bg"] is False and s2["each_holds_at"]["full_beats_wplus_mse"]["stage2_bg"] is True
