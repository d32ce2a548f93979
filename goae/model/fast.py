"""Fast inversion: GOAE.invert with the GPU fast paths from `runtime.*`, for one fixed input shape.

The exact path is `GOAE.invert` itself (fp32, eager). `FastInverter` runs the same function with:

- autocast (`runtime.inv_autocast`: bf16 / fp16 / off) over the encoder, the EG3D convolutions, the
  OSG decoder's matmuls, the SR and the AFA. The ray marcher (its inputs are cast back to fp32 by the
  renderer) and the visibility mask of Eqs. 7-8 (mix.py turns autocast off) stay fp32: both make
  decisions (sorting, thresholds) that half precision would flip.
- channels_last (`runtime.channels_last`): NHWC activations in every EG3D/SR synthesis block and in
  the AFA CNN (values unchanged; cuDNN's tensor-core convolutions want NHWC).
- batched modulated convs (`runtime.batched_modconv`): for batch > 1 the StyleGAN2 "non-fused" form,
  conv(x * s, W) * d, one shared-weight convolution instead of a grouped conv with one group per
  sample (the same maths, rounded differently).
- torch.compile (`runtime.compile`) of the whole fixed-shape inversion; its warm-up time is reported
  and any failure falls back to eager with the reason recorded (`stats['compile_fallback']`).
- CUDA graphs (`runtime.cuda_graphs`, CUDA only): the inversion is captured once and replayed.

Randomness: the renderer's two draws per render (stratified and importance u) are made *outside* the
compiled/captured function, into fixed buffers, in exactly the order GOAE.invert(generator=g) would
make them. So for the same generator state the fast path sees the same random numbers as the exact
path, and a replayed graph still gets fresh draws every call. Host syncs: none inside the inversion
(mask built on the device, cached plane tables; tests/test_fast_paths.py checks it with a fake GPU).

Every fast path is off on CPU unless the caller asks for it (`FastPaths.from_runtime(..., on_cpu=True)`:
the tests and the GPU suite's --dry-run), so CPU runs stay exact and comparable.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass

import torch

from goae.model.goae import GOAE, InversionResult

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# InversionResult fields that are tensors (returned by the compiled / captured function)
_TENSOR_FIELDS = tuple(f.name for f in dataclasses.fields(InversionResult) if f.name != "extras")


@dataclass(frozen=True)
class FastPaths:
    """Which fast paths are active (all off = the exact path)."""
    autocast: str = "off"              # off | bf16 | fp16
    channels_last: bool = False
    batched_modconv: bool = False
    compile: bool = False
    compile_backend: str = "inductor"  # the dry run uses 'eager': dynamo's tracing without code generation
    cuda_graphs: bool = False

    @classmethod
    def from_runtime(cls, runtime, device, *, on_cpu: bool = False, compile_backend: str = "inductor") -> "FastPaths":
        """The fast paths `runtime` asks for on `device`. On CPU none is active unless `on_cpu`;
        CUDA graphs only ever on CUDA."""
        dev = torch.device(device)
        if dev.type != "cuda" and not on_cpu:
            return cls()
        if runtime.inv_autocast not in ("off", *AUTOCAST_DTYPES):
            raise ValueError(f"runtime.inv_autocast must be off/bf16/fp16, got {runtime.inv_autocast!r}")
        return cls(autocast=runtime.inv_autocast, channels_last=bool(runtime.channels_last),
                   batched_modconv=bool(runtime.batched_modconv), compile=bool(runtime.compile),
                   compile_backend=compile_backend, cuda_graphs=bool(runtime.cuda_graphs) and dev.type == "cuda")

    @property
    def exact(self) -> bool:
        return self == FastPaths(compile_backend=self.compile_backend)

    def autocast_context(self, device: torch.device):
        if self.autocast == "off":
            return contextlib.nullcontext()
        # no weight-cast cache: a cache filled during a CUDA-graph capture would hand later replays
        # tensors from the capture's private pool (PyTorch's advice for autocast + graphs)
        return torch.autocast(device_type=torch.device(device).type, dtype=AUTOCAST_DTYPES[self.autocast],
                              cache_enabled=False)


def set_channels_last(model: GOAE, enabled: bool) -> None:
    """NHWC activations in every synthesis block (backbone + SR; they read `channels_last` per call) and
    NHWC weights in the AFA CNN. Values do not change; on CPU the synthesis blocks are NHWC already."""
    from goae.eg3d.synthesis import SynthesisBlock

    for m in model.G.modules():
        if isinstance(m, SynthesisBlock):
            m.channels_last = bool(enabled) or (m.use_fp16 and m.channels_last)
    if model.afa is not None:
        model.afa.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)


def draw_shapes(model: GOAE, batch: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of one render's (stratified u, importance u), as the renderer draws them."""
    rk, res = model.G.rendering_kwargs, int(model.G.neural_rendering_resolution)
    M = res * res
    return (batch, M, rk["depth_resolution"], 1), (batch * M, rk["depth_resolution_importance"])


class FastInverter:
    """`GOAE.invert(images, cameras, use_afa, use_mix, generator)` for a fixed batch size and image size.

    Call it like GOAE.invert; it returns an InversionResult (fp32 tensors). With CUDA graphs the
    result's tensors are the graph's output buffers, overwritten by the next call: clone what you keep.
    `stats` records what ran: compile time (first call), compile fallback reason, graph capture time.
    """

    def __init__(self, model: GOAE, fast: FastPaths, *, use_afa: bool = True, use_mix: bool = True):
        if use_mix and model.mix_cfg.blur == "random" and (fast.cuda_graphs or fast.compile):
            # the release's random blur draws inside the mix; keep it out of compiled/captured graphs
            fast = dataclasses.replace(fast, cuda_graphs=False, compile=False)
        self.model, self.fast = model.eval(), fast
        self.use_afa, self.use_mix = use_afa and model.afa is not None, use_mix
        self.device = model.w_avg.device
        self.stats: dict = {"fast_paths": dataclasses.asdict(fast), "compile_s": None, "compile_fallback": None,
                            "graph_capture_s": None, "graph_fallback": None, "calls": 0}
        set_channels_last(model, fast.channels_last)
        self._fn = self._core
        if fast.compile:
            self._fn = torch.compile(self._core, backend=fast.compile_backend, dynamic=False)
        self._shape = None
        self._graph = None
        self._static_in: list[torch.Tensor] = []
        self._static_out: dict[str, torch.Tensor] = {}

    # ---------------------------------------------------------------------------------------------
    def _core(self, img, c, u_ws, u_wi, u_fs, u_fi) -> dict[str, torch.Tensor]:
        """The traced / captured function: tensors in, a flat dict of fp32 tensors out."""
        B = img.shape[0]
        kw = {"fused_modconv": False} if self.fast.batched_modconv and B > 1 else {}
        if self.fast.channels_last:
            img = img.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), self.fast.autocast_context(self.device):
            res = self.model.invert(img, c, use_afa=self.use_afa, use_mix=self.use_mix,
                                    draws=({"stratified_u": u_ws, "importance_u": u_wi},
                                           {"stratified_u": u_fs, "importance_u": u_fi}), **kw)
        out = {k: getattr(res, k) for k in _TENSOR_FIELDS if getattr(res, k) is not None}
        out.update({f"extras.{k}": v for k, v in res.extras.items()})
        return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in out.items()}

    def draws(self, batch: int, generator: torch.Generator | None, out: list[torch.Tensor] | None = None):
        """The renderer's random numbers for the w+ and (with AFA) the F* render, in the order
        GOAE.invert(generator=generator) draws them; into `out` (the graph's buffers) if given."""
        (s_shape, i_shape) = draw_shapes(self.model, batch)
        n_imp = i_shape[1]
        shapes = [s_shape, i_shape if n_imp else (0,)] * 2
        if out is None:
            out = [torch.empty(s, device=self.device) for s in shapes]
        renders = 2 if self.use_afa else 1
        for t in out[:2 * renders]:
            if t.numel():
                t.uniform_(0, 1, generator=generator)  # torch.rand is uniform_ on a fresh tensor: same draws
        return out

    def _unpack(self, out: dict[str, torch.Tensor]) -> InversionResult:
        fields = {k: v for k, v in out.items() if not k.startswith("extras.")}
        res = InversionResult(**fields)
        res.extras.update({k.split(".", 1)[1]: v for k, v in out.items() if k.startswith("extras.")})
        return res

    def _first_call(self, args) -> dict[str, torch.Tensor]:
        """Eager warm-up, or the compile (timed, with fallback to eager)."""
        if not self.fast.compile:
            return self._fn(*args)
        t0 = time.perf_counter()
        try:
            out = self._fn(*args)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.stats["compile_s"] = round(time.perf_counter() - t0, 3)
            return out
        except Exception as e:  # noqa: BLE001 - any compiler failure: record it, run eager
            self.stats["compile_fallback"] = f"{type(e).__name__}: {str(e).strip()[:600]}"
            self.stats["compile_s"] = round(time.perf_counter() - t0, 3)
            torch._dynamo.reset()
            self._fn = self._core
            return self._fn(*args)

    def _capture(self, args) -> None:
        """Record the inversion into a CUDA graph on static buffers (after a side-stream warm-up)."""
        t0 = time.perf_counter()
        try:
            self._static_in = [a.clone() for a in args]
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._fn(*self._static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._static_out = self._fn(*self._static_in)
            self._graph = graph
        except Exception as e:  # noqa: BLE001 - e.g. a host sync in a captured op: record, stay eager
            self.stats["graph_fallback"] = f"{type(e).__name__}: {str(e).strip()[:600]}"
            self._graph, self._static_in, self._static_out = None, [], {}
        self.stats["graph_capture_s"] = round(time.perf_counter() - t0, 3)

    def __call__(self, img: torch.Tensor, c: torch.Tensor, generator: torch.Generator | None = None) -> InversionResult:
        shape = (tuple(img.shape), tuple(c.shape))
        if self._shape is not None and shape != self._shape:
            raise ValueError(f"FastInverter was built for inputs {self._shape}, got {shape}: one instance per shape")
        self.stats["calls"] += 1
        if self._graph is not None:
            self._static_in[0].copy_(img)
            self._static_in[1].copy_(c)
            self.draws(img.shape[0], generator, out=self._static_in[2:])
            self._graph.replay()
            return self._unpack(self._static_out)
        args = [img, c, *self.draws(img.shape[0], generator)]
        if self._shape is None:
            self._shape = shape
            out = self._first_call(args)
            if self.fast.cuda_graphs:
                self._capture(args)
            return self._unpack(out)
        return self._unpack(self._fn(*args))
