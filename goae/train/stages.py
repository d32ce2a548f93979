"""Stage-1 (encoder + D_Wc) and stage-2 (AFA) training: one step function each, one shared loop.

Stage 1 (§4.1, Eq. 11): E ← L_rec + λ4·L_adv^E + λ5·L_BG + λ6·‖Δw+‖;  D_Wc ← Eq. 2 (+ lazy R1).
Stage 2 (§4.2, §4.5): E frozen, AFA ← L_rec(I_F*, I) + λ5·L_BG(F*) + λ7·‖F* − F‖: §4.2 trains the AFA with
the stage-1 objective minus the adversarial and w+ terms, so the background depth term stays (the F*
tri-plane rendered at the front camera); `loss.stage2_bg: false` drops it, as the released code does.
Mixed precision (`runtime.bf16`) covers the encoder and the AFA only: the frozen EG3D renders in fp32 (its
SR in fp16 when `runtime.fp16_sr`, as the official code), so L_BG compares an fp32 depth with the fp32 D_avg.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from goae import losses as L
from goae.config import Params, params_hash
from goae.data.dataset import LabeledImages
from goae.eg3d import camera as cam
from goae.model.discriminator import LatentCodesDiscriminator
from goae.model.encoder import stage_for_iteration
from goae.model.goae import GOAE
from goae.train import common
from goae.model.io import load_afa, load_encoder  # noqa: F401  (re-exported)
from goae.params_view import stage_values
from goae.train.davg import DAVG_FILE, load_davg
from goae.train.loop import (CurveWriter, Dist, NonFiniteLoss, TrainState, autocast, average_gradients,
                             broadcast_module, check_finite, check_finite_grads, global_batch_indices, local_indices,
                             mean_over_ranks, rank_rows, render_uniforms, step_seed)


@dataclass
class Trainer:
    """The loop both stages share: deterministic batches, per-step seeding, resume, NaN guard, logs."""
    name: str
    iters: int
    batch_size: int
    seed: int
    dataset: LabeledImages
    device: torch.device
    d: Dist
    state_dir: Path
    curve: CurveWriter
    phash: str
    checkpoint_every: int
    log_every: int
    resume: bool = True
    log: Callable[[str], None] = print
    metrics: Callable[[dict, int], None] = lambda m, s: None
    state_objects: dict = field(default_factory=dict)   # name -> module/optimizer (state_dict/load_state_dict)

    def _save(self, step: int) -> None:
        if self.d.main:
            TrainState(self.state_dir).save(step, self.phash,
                                            {k: v.state_dict() for k, v in self.state_objects.items()})
        if self.d.world > 1:
            torch.distributed.barrier()

    def run(self, step_fn: Callable[[int, dict, torch.Generator], dict],
            on_step: Callable[[int], None] | None = None) -> dict:
        """`on_step(n)` runs after step n-1 (n steps done). Every step reseeds its own randomness, so
        whatever it does (e.g. evaluate a snapshot) leaves the rest of the run unchanged."""
        start = 0
        state = TrainState(self.state_dir)
        if self.resume:
            loaded = state.load(self.phash, self.log)
            if loaded is not None:
                start, objs = loaded
                for k, v in self.state_objects.items():
                    v.load_state_dict(objs[k])
        else:
            state.clear()
        self.curve.load_until(start)
        last = {}
        t0, n_img = time.time(), 0
        for step in tqdm(range(start, self.iters), desc=self.name, initial=start, total=self.iters,
                         disable=not self.d.main, unit="it"):
            # Everything random in a step is a function of (seed, step, rank): resumes are exact.
            torch.manual_seed(step_seed(self.seed, step, self.d.rank))  # dropout / drop-path
            # rank-independent: draws are made for the global batch and split (loop.render_uniforms)
            gen = torch.Generator(device=self.device).manual_seed(step_seed(self.seed, step, 0, 1))
            idx = local_indices(global_batch_indices(len(self.dataset), self.batch_size, step, self.seed), self.d)
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v
                     for k, v in self.dataset.batch(idx).items()}
            try:
                terms = step_fn(step, batch, gen)
            except NonFiniteLoss:
                raise
            last = terms = mean_over_ranks(terms, self.d)
            n_img += self.batch_size
            if self.d.main and (step % self.log_every == 0 or step == self.iters - 1):
                self.curve.add(step, terms)
                self.curve.flush()
                self.metrics({f"{self.name}/{k}": v for k, v in terms.items()}, step)
            if (step + 1) % self.checkpoint_every == 0 and step + 1 < self.iters:
                self._save(step + 1)
            if on_step is not None:
                on_step(step + 1)
        elapsed = time.time() - t0
        self._save(self.iters)
        self.curve.flush() if self.d.main else None
        return {"final": last, "steps_run": self.iters - start, "img_per_s": n_img / max(elapsed, 1e-9)}


def _trainer(p: Params, name: str, scfg, ds, device, d, state_dir, curve_path, columns, phash, log, metrics):
    return Trainer(name=name, iters=scfg.iters, batch_size=scfg.batch_size, seed=scfg.seed, dataset=ds,
                   device=device, d=d, state_dir=Path(state_dir), curve=CurveWriter(curve_path, columns),
                   phash=phash, checkpoint_every=p.train.checkpoint_every, log_every=p.train.log_every,
                   resume=p.train.resume, log=log, metrics=metrics)


STAGE1_COLUMNS = ["total", "rec", "l2", "lpips", "id", "adv_e", "bg", "w_delta", "d_adv", "r1", "d_real", "d_fake"]
STAGE2_COLUMNS = ["total", "rec", "l2", "lpips", "id", "bg", "delta_f"]


def front_bg_loss(render, mask, d_avg, n: int, device, uniforms: dict) -> torch.Tensor:
    """Eq. 4 on the front view: `render(c, **kw)` renders the inversion's tri-plane at camera c; D and M come
    from that render at c_front (§4.1: "depth map and background mask ... under the front-view pose")."""
    front = render(cam.canonical_camera(n, device=device),
                   superresolution=common.mask_needs_image(mask),  # Eq. 4 needs D and M only
                   **uniforms)
    return L.bg_depth_loss(front["image_depth"].float(), common.background_mask(mask, front), d_avg)  # Eq. 4


def inputs_fingerprint(files=(), folders=()) -> str:
    """What a checkpoint was trained on besides params. DVC re-runs a stage when its data, generator or
    D_avg change; resuming then would silently keep weights trained on the old ones. Files are hashed by
    content; folders (maybe 70k images) by every file's path and size plus the content of their JSON."""
    h = hashlib.sha1()
    for f in map(Path, files):
        h.update(f"{f.name}:{common.sha256_file(f) if f.is_file() else None};".encode())
    for d in map(Path, folders):
        for f in sorted(x for x in d.rglob("*") if x.is_file()):
            tag = common.sha256_file(f) if f.suffix == ".json" else f.stat().st_size
            h.update(f"{f.relative_to(d).as_posix()}:{tag};".encode())
    # The training code itself: DVC re-runs the stage when goae/ changes (a code dep), and resuming a
    # finished checkpoint would then re-emit weights trained by the old code.
    pkg = Path(__file__).resolve().parents[1]
    for f in sorted(pkg.rglob("*.py")):
        h.update(f"{f.relative_to(pkg).as_posix()}:{common.sha256_file(f)};".encode())
    return h.hexdigest()[:12]


def _generator_files(folder) -> list[Path]:
    folder = Path(folder)
    return [folder / "source.json", folder / "generator.safetensors"]  # source.json pins a converted G's sha256


# Declared keys that do not change the trained weights: a checkpoint stays valid across them.
NOT_IN_FINGERPRINT = ("train.log_every", "train.checkpoint_every", "train.resume")


def stage_hash(p: Params, **extra) -> str:
    """Resume fingerprint: the params the stage reads (its dvc.yaml keys; all params for a plain Params)
    plus `extra` (input fingerprints). A stage-2 knob therefore never invalidates a stage-1 checkpoint."""
    return params_hash({"params": stage_values(p, exclude=NOT_IN_FINGERPRINT), **extra})


def train_stage1(p: Params, data_dir, davg_dir, out_dir, state_dir, curve_path, device, d: Dist = Dist(), *,
                 generator, log=print, metrics=lambda m, s: None) -> dict:
    prov: dict = {}
    G, gcfg = common.load_generator(generator, device=device)
    prov["generator"] = gcfg.get("provenance")
    torch.manual_seed(step_seed(p.stage1.seed, -1))  # default inits draw from the global RNG: same on every rank
    E = common.build_encoder(p, prov).to(device)
    D = LatentCodesDiscriminator().to(device)
    broadcast_module(E, d)
    broadcast_module(D, d)
    model = GOAE(G, E).to(device)
    common.apply_runtime(p, device, G, E)
    rec = common.build_rec_loss(p, prov, device)
    mask = common.build_mask(p, prov, device)
    d_avg = load_davg(davg_dir, p.loss.d_avg, device)
    W = p.loss
    opt_e = torch.optim.Adam(E.parameters(), lr=p.stage1.lr)
    opt_d = torch.optim.Adam(D.parameters(), lr=p.stage1.d_lr)
    ds = LabeledImages(data_dir, resolution=G.img_resolution)
    tr = _trainer(p, "stage1", p.stage1, ds, device, d, state_dir, curve_path, STAGE1_COLUMNS,
                  stage_hash(p, inputs=inputs_fingerprint([*_generator_files(generator), Path(davg_dir) / DAVG_FILE],
                                                          [data_dir])), log, metrics)
    tr.state_objects = {"encoder": E, "discriminator": D, "opt_e": opt_e, "opt_d": opt_d}
    E.train()
    counts = E.cfg.query_counts

    def step_fn(step: int, batch: dict, gen: torch.Generator) -> dict:
        img, c = batch["image"], batch["label"]
        stage = stage_for_iteration(step, tuple(p.encoder.schedule))
        n_active = sum(counts[:stage])  # rows beyond the active stage equal w0 (progressive training)
        with autocast(device, p.runtime):
            w_plus = model.encode(img, stage=stage)
        w_plus = w_plus.float()
        # --- D_Wc step (Eq. 2): real canonical codes vs every row (paper) / row 0 (release)
        zg = torch.Generator().manual_seed(step_seed(p.stage1.seed, step, 0, 2))
        with torch.no_grad():  # drawn for the global batch, this rank's rows
            w_c = rank_rows(L.sample_canonical_codes(G.mapping, p.stage1.batch_size, G.z_dim, zg, p.loss.canonical,
                                                     device=device), d)
        r1_k = p.loss.r1_interval if L.r1_due(step, p.loss.r1_interval) else None
        d_out = L.discriminator_loss(D, w_c, w_plus, gamma=W.r1_gamma, d_rows=p.loss.d_rows, r1_interval=r1_k)
        opt_d.zero_grad(set_to_none=True)
        d_out["total"].backward()
        average_gradients(D.parameters(), d)
        check_finite_grads(step, D.parameters(), {k: d_out[k] for k in ("d_adv", "r1", "d_real", "d_fake")},
                           str(state_dir), "discriminator gradients")
        opt_d.step()
        # --- encoder step (Eq. 11); G in fp32 (module docstring)
        out = G.synthesis(w_plus, c, **render_uniforms(G, p.stage1.batch_size, gen, d))  # Eq. 1: I_w+
        rec_terms = rec(out["image"].float(), img)
        # the tri-plane does not depend on the camera: render I_w+'s planes again at c_front
        bg = front_bg_loss(lambda cf, **kw: G.render_planes(out["planes"], cf, w_plus, **kw), mask, d_avg,
                           img.shape[0], device, render_uniforms(G, p.stage1.batch_size, gen, d))
        adv_e = L.encoder_adv_loss(D, w_plus, p.loss.d_rows)                     # Eq. 3
        wd = L.w_plus_delta_loss(w_plus, n_active)
        terms = L.stage1_encoder_loss(W, rec_terms, adv_e=adv_e, bg=bg, w_delta=wd, d_adv=d_out)
        vals = check_finite(step, {**{k: terms[k] for k in STAGE1_COLUMNS if k in terms},
                                   **{k: d_out[k] for k in ("d_adv", "r1", "d_real", "d_fake")}},
                            str(state_dir))
        opt_e.zero_grad(set_to_none=True)
        terms["total"].backward()
        average_gradients(E.parameters(), d)
        check_finite_grads(step, E.parameters(), vals, str(state_dir), "encoder gradients")
        opt_e.step()
        return vals

    summary = tr.run(step_fn)
    if d.main:
        cfg = {"encoder": common.config_dict(E.cfg), "w_avg_source": "generator.backbone.mapping.w_avg",
               "steps": p.stage1.iters, "provenance": prov}
        common.save_module(Path(out_dir) / "encoder", E, cfg)
        common.save_module(Path(out_dir) / "discriminator", D, {"discriminator": common.config_dict(D.cfg)})
    return {**summary, "provenance": prov}


def train_stage2(p: Params, data_dir, stage1_dir, out_dir, state_dir, curve_path, device, d: Dist = Dist(), *,
                 generator, davg_dir=None, log=print, metrics=lambda m, s: None,
                 on_step: Callable[[int, torch.nn.Module], None] | None = None) -> dict:
    """`on_step(n, afa)` after every step (benchmarks evaluate snapshots this way: with a constant learning
    rate and per-step seeding, the AFA after n steps of a longer run is the AFA of an n-step run).
    `davg_dir`: the davg stage's out, D_avg for λ5·L_BG (needed unless `loss.stage2_bg` is off or λ5 = 0)."""
    prov: dict = {}
    G, gcfg = common.load_generator(generator, device=device)
    prov["generator"] = gcfg.get("provenance")
    E = load_encoder(stage1_dir, device)          # frozen (§4.5)
    torch.manual_seed(step_seed(p.stage2.seed, -1))  # default inits draw from the global RNG: same on every rank
    A = common.build_afa(p, G).to(device)
    broadcast_module(A, d)
    if d.world > 1 and device.type == "cuda":  # global-batch BN statistics (SyncBatchNorm is CUDA-only;
        A = torch.nn.SyncBatchNorm.convert_sync_batchnorm(A)  # on CPU each rank normalises its own share)
    model = GOAE(G, E, A).to(device)
    common.apply_runtime(p, device, G, A)
    rec = common.build_rec_loss(p, prov, device)
    W = p.loss
    use_bg = p.loss.stage2_bg and W.lambda5 > 0
    davg_file = None if davg_dir is None else Path(davg_dir) / DAVG_FILE
    if use_bg:
        if davg_file is None or not davg_file.is_file():
            raise FileNotFoundError(f"stage 2 with loss.stage2_bg needs D_avg (the davg stage's out) at {davg_file}; "
                                    "run the davg stage, or set loss.stage2_bg: false (release behaviour)")
        mask = common.build_mask(p, prov, device)
        d_avg = load_davg(davg_dir, p.loss.d_avg, device)
    prov["stage2_bg"] = "on: λ5·L_BG on F* at the front camera (paper §4.2)" if use_bg else \
        "off: no L_BG in stage 2 (release behaviour)"
    opt = torch.optim.Adam(A.parameters(), lr=p.stage2.lr)
    ds = LabeledImages(data_dir, resolution=G.img_resolution)
    files = [*_generator_files(generator), Path(stage1_dir) / "encoder.safetensors", *([davg_file] if use_bg else [])]
    tr = _trainer(p, "stage2", p.stage2, ds, device, d, state_dir, curve_path, STAGE2_COLUMNS,
                  stage_hash(p, inputs=inputs_fingerprint(files, [data_dir])), log, metrics)
    tr.state_objects = {"afa": A, "opt": opt}
    A.train()

    def step_fn(step: int, batch: dict, gen: torch.Generator) -> dict:
        img, c = batch["image"], batch["label"]
        with torch.no_grad():
            with autocast(device, p.runtime):
                w_plus = model.encode(img)
            w_plus = w_plus.float()
            skip, feat = G.synthesis_to_F(w_plus)     # G in fp32 (module docstring)
            out_w = G.synthesis_from_F(feat, skip, w_plus, c, **render_uniforms(G, p.stage2.batch_size, gen, d))
        with autocast(device, p.runtime):
            f_star, _, _ = model.refine(img, out_w["image"], feat)   # Eq. 6
        f_star = f_star.float()
        out_f = G.synthesis_from_F(f_star, skip, w_plus, c, **render_uniforms(G, p.stage2.batch_size, gen, d))
        rec_terms = rec(out_f["image"], img)
        bg = None
        if use_bg:  # the F* tri-plane at c_front (its planes do not depend on the camera)
            bg = front_bg_loss(lambda cf, **kw: G.render_planes(out_f["planes"], cf, w_plus, **kw), mask, d_avg,
                               img.shape[0], device, render_uniforms(G, p.stage2.batch_size, gen, d))
        terms = L.stage2_loss(W, rec_terms, L.delta_f_loss(f_star, feat), bg=bg)
        vals = check_finite(step, {k: terms[k] for k in STAGE2_COLUMNS if k in terms}, str(state_dir))
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        average_gradients(A.parameters(), d)
        check_finite_grads(step, A.parameters(), vals, str(state_dir), "AFA gradients")
        opt.step()
        return vals

    summary = tr.run(step_fn, None if on_step is None else lambda n: on_step(n, A))
    if d.main:
        common.save_module(Path(out_dir) / "afa", A, {"afa": common.config_dict(A.cfg), "steps": p.stage2.iters,
                                                      "provenance": prov})
    return {**summary, "provenance": prov}
