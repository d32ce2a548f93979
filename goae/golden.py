"""`python -m goae.golden ../shared/fixtures/goae`: check Encoder + AFA against the official GOAE goldens.

1. Rebuild the official-layout state dicts from the fixture's deterministic weight recipe (crc32-seeded
   randn, rules C/R0..R8) and verify them against recipe_checksums.json (sum, sumsq, first3).
   Rule-C buffers come from our timm trunk, mapped back to the official names.
2. Convert them with goae.model.official (the loader used for the released files), load strictly.
3. Run the encoder at stages 0-3 on each golden image (batch 1) and AFA on the golden inputs; compare
   every stored tensor (atol = rtol = 1e-4; F* atol 5e-4) and the statistics of the full tensors
   that were too big to store.
Prints one row per check and exits 0 only if all pass. `run_golden(dir)` returns the rows.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from goae.model.afa import AFA, AFAConfig
from goae.model.encoder import LEVELS, Encoder, EncoderConfig, strict_load
from goae.model.official import (convert_official_afa, convert_official_encoder,
                                 export_official_encoder, official_computed_buffers)

PAPER_PARAMS = dict(encoder=111_218_822, afa=12_099_904)
TOL, TOL_FSTAR, TOL_STAT = 1e-4, 5e-4, 1e-5
_R4 = re.compile(r"(^|\.)(input_layer|res_layer)\.2\.weight$")
_R7 = re.compile(r"(^|\.)output_layer\.(0|2)\.weight$")


@dataclass
class Row:
    name: str
    shape: str
    err: float
    tol: float
    ok: bool


# ---- weight recipe (fixture README, "Weight recipe (exact)") ------------------------------------

def recipe_rule(key: str, shape: tuple[int, ...]) -> str:
    if key.endswith(("relative_coords_table", "relative_position_index", "attn_mask")):
        return "C"
    if key.endswith("num_batches_tracked"):
        return "R0"
    if key.endswith("running_mean"):
        return "R1"
    if key.endswith("running_var"):
        return "R2"
    if key.endswith("logit_scale"):
        return "R3"
    if _R4.search(key):
        return "R4"
    if key.endswith(".weight") and len(shape) == 1:
        return "R5"
    if key.endswith("bias"):
        return "R6"
    if _R7.search(key):
        return "R7"
    return "R8"


def recipe_value(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    rule = recipe_rule(key, shape)
    if rule == "C":
        raise ValueError(f"{key}: computed buffer, not drawn")
    if rule == "R0":
        return torch.tensor(0, dtype=torch.int64)
    g = torch.Generator(device="cpu")
    g.manual_seed(zlib.crc32(key.encode("utf-8")))
    r = torch.randn(shape, generator=g, dtype=torch.float32)
    if rule == "R1":
        return r * 0.1
    if rule == "R2":
        return r.abs() * 0.1 + 1.0
    if rule == "R3":
        return r * 0.1 + math.log(10.0)
    if rule == "R4":
        return r * 0.05 + 0.25
    if rule == "R5":
        return r * 0.1 + 1.0
    if rule == "R6":
        return r * 0.05
    if rule == "R7":
        return r
    return r * (1.0 / math.sqrt(float(math.prod(shape[1:]))))


def recipe_state_dict(manifest: dict, computed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official-layout state dict in manifest order; rule-C keys from `computed`."""
    out = {}
    for key, meta in manifest["keys"].items():
        shape = tuple(meta["shape"])
        rule = recipe_rule(key, shape)
        if rule != meta["recipe_rule"]:
            raise ValueError(f"{key}: recipe rule {rule} but the manifest says {meta['recipe_rule']}")
        out[key] = computed[key].clone() if rule == "C" else recipe_value(key, shape)
    return out


def stats(t: torch.Tensor) -> dict:
    f = t.detach().reshape(-1).to(torch.float64)
    return dict(sum=f.sum().item(), sumsq=(f * f).sum().item(), absmax=f.abs().max().item(),
                first3=t.detach().reshape(-1)[:3].tolist())


def checksum_mismatches(sd: dict[str, torch.Tensor], ref: dict[str, dict]) -> list[str]:
    bad = sorted(set(ref) ^ set(sd))
    for k in set(ref) & set(sd):
        s, r = stats(sd[k]), ref[k]
        if (list(sd[k].shape) != r["shape"] or s["first3"] != r["first3"]
                or not math.isclose(s["sum"], r["sum"], rel_tol=1e-9, abs_tol=1e-6)
                or not math.isclose(s["sumsq"], r["sumsq"], rel_tol=1e-9, abs_tol=1e-6)):
            bad.append(k)
    return bad


# ---- comparisons ---------------------------------------------------------------------------------

def compare(name: str, got: torch.Tensor, ref: torch.Tensor, atol: float = TOL, rtol: float = TOL) -> Row:
    got = got.detach().to(torch.float32)
    if tuple(got.shape) != tuple(ref.shape):
        return Row(name, f"{tuple(got.shape)} != {tuple(ref.shape)}", math.inf, atol, False)
    err = (got - ref).abs().max().item()
    return Row(name, str(tuple(ref.shape)), err, atol, torch.allclose(got, ref, atol=atol, rtol=rtol))


def compare_stats(name: str, got: torch.Tensor, ref: dict) -> Row:
    """Relative stat error: sum against its bound sqrt(n * sumsq); sumsq and absmax relative;
    first3 absolute (scaled by the feature tolerance)."""
    if list(got.shape) != ref["shape"]:
        return Row(name + " [stats]", f"{tuple(got.shape)} != {tuple(ref['shape'])}", math.inf,
                   TOL_STAT, False)
    s, n = stats(got), got.numel()
    errs = [abs(s["sum"] - ref["sum"]) / math.sqrt(n * ref["sumsq"]),
            abs(s["sumsq"] - ref["sumsq"]) / ref["sumsq"],
            abs(s["absmax"] - ref["absmax"]) / ref["absmax"],
            max(abs(a - b) for a, b in zip(s["first3"], ref["first3"])) * TOL_STAT / TOL]
    err = max(errs)
    return Row(name + " [stats]", str(tuple(ref["shape"])), err, TOL_STAT, err <= TOL_STAT)


def _u8(shape, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ---- main check ----------------------------------------------------------------------------------

def run_golden(fixture_dir, log=print, sdpa: bool = True) -> list[Row]:
    """All checks; `sdpa=False` uses the official explicit attention path (need_weights=True)."""
    from safetensors.torch import load_file

    d = Path(fixture_dir)
    enc_man = json.loads((d / "goae_encoder_manifest.json").read_text())
    afa_man = json.loads((d / "goae_afa_manifest.json").read_text())
    checks = json.loads((d / "recipe_checksums.json").read_text())
    summary = json.loads((d / "goae_io_summary.json").read_text())
    io = load_file(str(d / "goae_io.safetensors"))
    rows: list[Row] = []
    t0 = time.perf_counter()

    def count(name, got, want):
        rows.append(Row(name, "", float(abs(got - want)), 0.0, got == want))

    # sizes and key sets, without allocating weights
    with torch.device("meta"):
        menc, mafa = Encoder(EncoderConfig.paper()), AFA(AFAConfig.paper())
    for name, m in (("encoder", menc), ("afa", mafa)):
        n = sum(p.numel() for p in m.parameters())
        log(f"params {name}: {n:,} (paper {PAPER_PARAMS[name]:,})")
        count(f"params.{name} (meta) == paper", n, PAPER_PARAMS[name])
    del menc, mafa

    # 1. recipe weights in the official layout
    enc = Encoder(EncoderConfig.paper(sdpa=sdpa))
    afa = AFA(AFAConfig.paper(sdpa=sdpa))
    off_enc = recipe_state_dict(enc_man, official_computed_buffers(enc))
    off_afa = recipe_state_dict(afa_man, {})
    count("recipe.encoder checksum mismatches", len(checksum_mismatches(off_enc, checks["encoder"])), 0)
    count("recipe.afa checksum mismatches", len(checksum_mismatches(off_afa, checks["afa"])), 0)
    log(f"recipe built and verified: {time.perf_counter() - t0:.1f} s")

    # 2. convert with the released-file loader's converter and load strictly
    enc_sd, afa_sd = convert_official_encoder(off_enc), convert_official_afa(off_afa)
    count("keys.encoder converted", len(enc_sd), 495)
    strict_load(enc, enc_sd, "encoder (recipe)")
    strict_load(afa, afa_sd, "AFA (recipe)")
    exported = export_official_encoder(enc)
    count("keys.encoder export vs manifest (sym. diff)", len(set(exported) ^ set(enc_man["keys"])), 0)
    count("keys.afa vs manifest (sym. diff)", len(set(afa.state_dict()) ^ set(afa_man["keys"])), 0)
    del off_enc, off_afa, enc_sd, afa_sd, exported
    enc.eval(), afa.eval()

    # inputs are regenerated (they must equal the stored ones)
    u8 = torch.cat([_u8((1, 3, 256, 256), 1000 + i) for i in range(2)])
    count("inputs.enc regenerated == stored", int((u8 != io["enc.input_u8"]).sum()), 0)
    count("inputs.afa regenerated == stored", int((_u8((1, 3, 512, 512), 2000) != io["afa.img_u8"]).sum()
                                                  + (_u8((1, 3, 512, 512), 2001) != io["afa.rec_img_u8"]).sum()), 0)

    # 3a. encoder, batch 1 per image; forward(x, s) == heads(trunk(x), s), so one trunk pass feeds
    # the heads at every stage
    x = io["enc.input_u8"].to(torch.float32) / 127.5 - 1.0
    out: dict[str, list] = {}
    t1 = time.perf_counter()
    with torch.no_grad():
        for i in range(x.shape[0]):
            taps = enc.trunk(x[i:i + 1])
            for s in range(4):
                w, w_base, ex = enc.heads(taps, s, extras=True)
                out.setdefault(f"ws_stage{s}", []).append(w)
            out.setdefault("ws_base", []).append(w_base)
            out.setdefault("ws_base_vec", []).append(ex["base_vec"])
            for lv in LEVELS:
                out.setdefault(f"ws_query_{lv}", []).append(ex[f"query_{lv}"])
                out.setdefault(f"ws_delta_{lv}", []).append(ex[f"delta_{lv}"])
            for k in ("x_base", "x_query", "x_coarse", "x_mid", "x_fine", "kv_coarse", "kv_mid", "kv_fine"):
                ref_key = f"enc.img{i}.{k}"
                if ref_key in io:
                    rows.append(compare(ref_key, ex[k], io[ref_key]))
                elif ref_key in summary:
                    rows.append(compare_stats(ref_key, ex[k], summary[ref_key]))
                if i == 0 and k in ("kv_coarse", "kv_mid", "kv_fine"):
                    rows.append(compare(f"enc.img0.{k}_first64", ex[k][:, :64], io[f"enc.img0.{k}_first64"]))
                if i == 0 and k == "x_fine":
                    rows.append(compare("enc.img0.x_fine_first1024", ex[k][:, :1024],
                                        io["enc.img0.x_fine_first1024"]))
        t_enc = (time.perf_counter() - t1) / x.shape[0]
        for k, v in out.items():
            rows.append(compare(f"enc.{k}", torch.cat(v), io[f"enc.{k}"]))

        # 3b. AFA; hooks expose the CNN intermediates whose statistics the summary holds
        img = io["afa.img_u8"].to(torch.float32) / 127.5 - 1.0
        rec = io["afa.rec_img_u8"].to(torch.float32) / 127.5 - 1.0
        feat = io["afa.feature_map_f16"].to(torch.float32)
        inter = {}
        hooks = [getattr(afa, n).register_forward_hook(
            lambda m, a, o, n=n: inter.__setitem__(n, o)) for n in ("input_layer", "body", "output_layer")]
        t2 = time.perf_counter()
        f_star, gamma, beta = afa(img, rec, feat)
        t_afa = time.perf_counter() - t2
        for h in hooks:
            h.remove()
    rows.append(compare("afa.gamma", gamma, io["afa.gamma"]))
    rows.append(compare("afa.beta", beta, io["afa.beta"]))
    rows.append(compare("afa.f_star", f_star, io["afa.f_star"], atol=TOL_FSTAR))
    count("afa.f_star == gamma*F+beta (bitwise, mismatches)", int((f_star != gamma * feat + beta).sum()), 0)
    tokens = inter["output_layer"].flatten(2).transpose(1, 2)
    rows.append(compare("afa.res_tokens_first64", tokens[:, :64], io["afa.res_tokens_first64"]))
    for n in ("input_layer", "body", "output_layer"):
        rows.append(compare_stats(f"afa.{n}_out", inter[n], summary[f"afa.{n}_out"]))
    log(f"timings: encoder trunk+heads(stages 0-3) {t_enc:.2f} s/image, AFA {t_afa:.2f} s, "
        f"total {time.perf_counter() - t0:.1f} s, threads {torch.get_num_threads()}")
    return rows


def format_rows(rows: list[Row]) -> str:
    w = max(len(r.name) for r in rows)
    lines = [f"{'name':<{w}}  {'shape':<18} {'max abs err':>12} {'tol':>8}  ok"]
    lines += [f"{r.name:<{w}}  {r.shape:<18} {r.err:>12.3g} {r.tol:>8.0e}  {'ok' if r.ok else 'FAIL'}"
              for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m goae.golden", description=__doc__.splitlines()[0])
    ap.add_argument("fixture_dir", help="folder with the GOAE golden fixtures (../shared/fixtures/goae)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--explicit-attention", action="store_true",
                    help="official need_weights=True attention path instead of SDPA")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = run_golden(a.fixture_dir, sdpa=not a.explicit_attention)
    print(format_rows(rows))
    bad = [r.name for r in rows if not r.ok]
    print(f"{len(rows) - len(bad)}/{len(rows)} checks pass" + (f"; FAILED: {bad}" if bad else ""))
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
