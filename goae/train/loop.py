"""Training-loop machinery shared by both stages: device, DDP, sampling, checkpoint/resume, NaN guard.

Resumability contract: everything a step consumes is a pure function of (seed, step, rank) — the global
batch indices, the renderer's torch.Generator and the global RNG used by dropout/drop-path — and every
`train.checkpoint_every` steps the full state (modules, optimisers, step, params hash) is written
atomically. Re-running a killed stage therefore continues from the last checkpoint and ends with weights
equal bit for bit to an uninterrupted run (on CPU).

DDP (torchrun): each rank takes its contiguous share of the global batch, and every draw except the
global RNG behind dropout/drop-path is made for the whole global batch from a rank-independent seed and
split by rank (`rank_rows`, `render_uniforms`); gradients are averaged. N processes therefore compute what
one process computes for the same global batch (tests/test_ddp.py; dropout masks stay per rank).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from goae.config import params_hash  # noqa: F401  (re-exported)
from goae.fileio import write_atomic
from goae.runtime import Dist, autocast, init_distributed, pick_device  # noqa: F401  (re-exported)


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def average_gradients(params: Iterable[torch.nn.Parameter], d: Dist) -> None:
    """Mean of the per-rank gradients (each rank's loss is a mean over its local batch, so the mean of
    rank gradients equals the gradient of the global-batch mean). Done by hand instead of wrapping in
    DDP because stage steps call submodules (encoder heads, D) in several passes per step."""
    if d.world <= 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= d.world
    o = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[o:o + n].view_as(g))
        o += n


def broadcast_module(module: torch.nn.Module, d: Dist) -> None:
    if d.world > 1:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def mean_over_ranks(values: dict[str, float], d: Dist) -> dict[str, float]:
    """Global-batch means of per-rank scalar means (equal local batches), for rank-0 logging."""
    if d.world <= 1 or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(values, (t / d.world).tolist()))


def rank_rows(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """This rank's contiguous rows (dim 0) of a tensor drawn for the whole global batch."""
    if d.world <= 1:
        return t
    if t.shape[0] % d.world:
        raise ValueError(f"{t.shape[0]} rows are not divisible by world size {d.world}")
    per = t.shape[0] // d.world
    return t[d.rank * per:(d.rank + 1) * per]


def render_uniforms(G, n_global: int, generator: torch.Generator, d: Dist) -> dict[str, torch.Tensor]:
    """The renderer's two draws (stratified jitter [B,M,D,1], then importance u [B*M,N], the order and
    shapes it draws them in) made for the global batch from a rank-independent generator; this rank's
    rows, as `synthesis(..., **render_uniforms(...))` kwargs. A torchrun run then renders exactly what one
    process renders for the global batch, and one process draws the very numbers it drew before."""
    rk = G.rendering_kwargs
    m = int(G.neural_rendering_resolution) ** 2
    n_d, n_imp = int(rk["depth_resolution"]), int(rk["depth_resolution_importance"])
    dev = generator.device
    out = {"stratified_u": rank_rows(torch.rand((n_global, m, n_d, 1), generator=generator, device=dev), d)}
    if n_imp > 0:
        u = torch.rand((n_global * m, n_imp), generator=generator, device=dev)
        out["importance_u"] = rank_rows(u.view(n_global, m * n_imp), d).reshape(-1, n_imp)
    return out


# -------------------------------------------------------------------------------------- sampling

def step_seed(seed: int, step: int, rank: int = 0, salt: int = 0) -> int:
    h = hashlib.sha256(f"{seed}:{step}:{rank}:{salt}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def global_batch_indices(n: int, batch: int, step: int, seed: int) -> torch.Tensor:
    """Indices of the global batch of `step`: epoch-wise seeded permutations, wrapped at the end."""
    per_epoch = max(1, n // batch) if n >= batch else 1
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed, epoch, salt=7)))
    if n >= batch:
        return perm[k * batch:(k + 1) * batch]
    return perm.repeat(math.ceil(batch / n))[:batch]


def local_indices(global_idx: torch.Tensor, d: Dist) -> torch.Tensor:
    """This rank's contiguous share of the global batch (the DistributedSampler role)."""
    if len(global_idx) % d.world:
        raise ValueError(f"global batch {len(global_idx)} is not divisible by world size {d.world}")
    per = len(global_idx) // d.world
    return global_idx[d.rank * per:(d.rank + 1) * per]


# ------------------------------------------------------------------------------- checkpoint/resume



def _flatten_state(prefix: str, obj, tensors: dict, meta):
    """Split a (nested) state dict into tensors (for safetensors) and a JSON skeleton."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k if isinstance(k, str) else {"__int__": k},
                              _flatten_state(f"{prefix}.{k}", v, tensors, meta)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten_state(f"{prefix}.{i}", v, tensors, meta) for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    return obj


def _unflatten_state(node, tensors: dict):
    if isinstance(node, dict):
        if "__tensor__" in node:
            return tensors[node["__tensor__"]]
        if "__float__" in node:
            return float(node["__float__"])
        if "__dict__" in node:
            return {(k["__int__"] if isinstance(k, dict) else k): _unflatten_state(v, tensors)
                    for k, v in node["__dict__"]}
        if "__list__" in node:
            items = [_unflatten_state(v, tensors) for v in node["__list__"]]
            return tuple(items) if node.get("tuple") else items
    return node


def _fsync_replace(tmp: Path, dst: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)


class TrainState:
    """Atomic full-state checkpoints: `<dir>/state.safetensors` + `<dir>/state.json` (never pickles).

    Both files are written to temporaries, fsynced, then renamed; the JSON (renamed last) names the
    tensor file's sha1, so a crash between the two renames is detected and the previous pair is kept.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @property
    def json_path(self) -> Path:
        return self.folder / "state.json"

    def save(self, step: int, phash: str, objects: dict, extra: dict | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        skeleton = {name: _flatten_state(name, obj, tensors, None) for name, obj in objects.items()}
        fd, tmp_t = tempfile.mkstemp(dir=self.folder, prefix=".state.", suffix=".safetensors")
        os.close(fd)
        save_file(tensors, tmp_t)
        sha = hashlib.sha1(Path(tmp_t).read_bytes()).hexdigest()
        final_t = self.folder / f"state-{sha[:12]}.safetensors"
        _fsync_replace(Path(tmp_t), final_t)
        meta = {"step": step, "params_hash": phash, "tensors": final_t.name, "sha1": sha,
                "skeleton": skeleton, "extra": extra or {}, "time": time.time()}
        fd, tmp_j = tempfile.mkstemp(dir=self.folder, prefix=".state.", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f)
        old = self._current_tensor_file()
        _fsync_replace(Path(tmp_j), self.json_path)
        if old is not None and old != final_t:
            old.unlink(missing_ok=True)

    def _current_tensor_file(self) -> Path | None:
        try:
            return self.folder / json.loads(self.json_path.read_text())["tensors"]
        except (FileNotFoundError, KeyError, json.JSONDecodeError):
            return None

    def load(self, phash: str, log: Callable[[str], None] = print) -> tuple[int, dict] | None:
        """(step, objects) of the last checkpoint if it matches `phash`; None → start fresh."""
        if not self.json_path.is_file():
            return None
        try:
            meta = json.loads(self.json_path.read_text())
        except json.JSONDecodeError:
            log(f"resume: {self.json_path} is unreadable; starting fresh")
            return None
        if meta.get("params_hash") != phash:
            log(f"resume: params changed since the checkpoint at step {meta.get('step')} "
                f"({meta.get('params_hash')} → {phash}); starting fresh")
            return None
        tpath = self.folder / meta["tensors"]
        if not tpath.is_file() or hashlib.sha1(tpath.read_bytes()).hexdigest() != meta["sha1"]:
            log(f"resume: checkpoint tensors {tpath.name} missing or corrupt; starting fresh")
            return None
        tensors = load_file(str(tpath))
        objects = {k: _unflatten_state(v, tensors) for k, v in meta["skeleton"].items()}
        log(f"resume: continuing from step {meta['step']} ({tpath.name})")
        return int(meta["step"]), objects

    def clear(self) -> None:
        if self.folder.is_dir():
            for p in self.folder.glob("state*"):
                p.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------- NaN guard

class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, terms: dict, checkpoint: str | None, what: str = "loss"):
        self.step, self.terms, self.checkpoint = step, terms, checkpoint
        shown = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
        super().__init__(f"non-finite {what} at step {step}: {shown}. Training stopped; the last good "
                         f"checkpoint is kept at {checkpoint or '(none yet)'}")


def check_finite(step: int, terms: dict[str, torch.Tensor | float], checkpoint: str | None) -> dict[str, float]:
    vals = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in terms.items()}
    if not all(math.isfinite(v) for v in vals.values()):
        raise NonFiniteLoss(step, vals, checkpoint)
    return vals


def check_finite_grads(step: int, params: Iterable[torch.nn.Parameter], terms: dict, checkpoint: str | None,
                       what: str = "gradients") -> None:
    """Before an optimiser step. A finite loss can still back-propagate NaN/inf (e.g. 0/0 in a backward);
    stepping would poison the weights and then the next checkpoint. Called after the DDP average, so
    every rank sees the same gradients and stops together."""
    grads = [p.grad for p in params if p.grad is not None]
    if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
        vals = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in terms.items()}
        vals["nonfinite_grad_tensors"] = sum(1 for g in grads if not bool(torch.isfinite(g).all()))
        raise NonFiniteLoss(step, vals, checkpoint, what)


# --------------------------------------------------------------------------------------- logging

class CurveWriter:
    """Per-step loss curve as CSV (a DVC plot); rewritten atomically so a crash never truncates it."""

    def __init__(self, path: str | Path, columns: list[str]):
        self.path = Path(path)
        self.columns = ["step"] + columns
        self.rows: list[list] = []

    def load_until(self, step: int) -> None:
        """Keep the rows of a resumed run up to `step` (later rows would be duplicated)."""
        if self.path.is_file():
            lines = self.path.read_text().strip().splitlines()[1:]
            self.rows = [r.split(",") for r in lines if r and int(r.split(",")[0]) < step]

    def add(self, step: int, values: dict) -> None:
        self.rows.append([step] + [f"{values.get(c, float('nan')):.6g}" for c in self.columns[1:]])

    def flush(self) -> None:
        write_atomic(self.path, ",".join(self.columns) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in self.rows))
