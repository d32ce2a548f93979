"""Optimisation baseline (Table 1 "PTI"): per-image latent optimisation, then pivotal generator tuning.

PTI (Roich et al.) in two phases, per image:
  1. the pivot from w_avg (PTI's start; or from an encoder's w+ when `init_model` is given), Adam on
     λ1·L2 + λ2·LPIPS for `w_steps`;
  2. a COPY of the generator, its backbone (mapping + synthesis) and tri-plane decoder trainable, pivot frozen,
     Adam lr 3e-4 on L2 + LPIPS (PTI's pt_l2_lambda = pt_lpips_lambda = 1) for `g_steps`.
Two recipes (`eval.optim_recipe`), each row named by what it is:
  pti       PTI's choices: a single w (repeated over the ws rows), LPIPS-VGG (PTI's lpips net), 450 + 350
            steps in the paper config (PTI first_inv_steps / max_pti_steps);
  pti_like  w+ (as GOAE inverts into w+), LPIPS-alex with the GOAE weights loss.lambda1/2 in phase 1.
Both differ from PTI as released in: constant learning rates, no noise regularisation (EG3D renders with
constant noise), the SR module stays frozen. The shared generator is never modified.
Every render during optimisation takes a torch.Generator seeded from one draw of the caller's generator.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class OptimConfig:
    w_steps: int = 450          # PTI first_inv_steps
    g_steps: int = 350          # PTI max_pti_steps
    w_lr: float = 5e-3          # PTI first_inv_lr
    g_lr: float = 3e-4          # PTI pti_learning_rate
    lambda_l2: float = 1.0      # phase 1: loss.lambda1
    lambda_lpips: float = 0.8   # phase 1: loss.lambda2
    g_lambda_l2: float = 1.0    # phase 2: PTI pt_l2_lambda
    g_lambda_lpips: float = 1.0  # phase 2: PTI pt_lpips_lambda
    space: str = "w+"           # "w": PTI's single pivot w; "w+": one code per ws row
    lpips_net: str = "alex"     # which LPIPS trunk the caller passes (recorded; PTI: vgg)

    @classmethod
    def recipe(cls, name: str, w_steps: int, g_steps: int, lambda_l2: float, lambda_lpips: float) -> "OptimConfig":
        """'pti': w, LPIPS-VGG, PTI's phase-1 weights (L2 off, LPIPS 1: PTI's first inversion is LPIPS-only);
        'pti_like': w+, LPIPS-alex, the GOAE reconstruction weights."""
        if name == "pti":
            return cls(w_steps=w_steps, g_steps=g_steps, lambda_l2=0.0, lambda_lpips=1.0, space="w", lpips_net="vgg")
        if name == "pti_like":
            return cls(w_steps=w_steps, g_steps=g_steps, lambda_l2=lambda_l2, lambda_lpips=lambda_lpips)
        raise ValueError(f"optim recipe must be 'pti' or 'pti_like', got {name!r}")

    @property
    def row_name(self) -> str:
        return "pti" if (self.space, self.lpips_net) == ("w", "vgg") else "pti_like"

    def describe(self) -> str:
        return (f"{self.row_name}: {self.space} from w_avg, {self.w_steps} steps Adam lr {self.w_lr} on "
                f"{self.lambda_l2}·L2+{self.lambda_lpips}·LPIPS-{self.lpips_net}; G copy {self.g_steps} steps "
                f"lr {self.g_lr} on {self.g_lambda_l2}·L2+{self.g_lambda_lpips}·LPIPS-{self.lpips_net}")


@dataclass
class OptimHandle:
    w_plus: list[torch.Tensor]         # per image [1,num_ws,w_dim]
    generators: list[nn.Module]        # per image fine-tuned copy (the same object as G when g_steps == 0)


class OptimInverter:
    """`Inverter` for the PTI baselines (see goae.metrics.protocols); `name` is the recipe's row name."""
    timing = (1, 1)   # one warm-up image, one timed image: each costs a full optimisation

    def __init__(self, G: nn.Module, cfg: OptimConfig, lpips_net: nn.Module, weights: str = "",
                 init_model: nn.Module | None = None):
        self.G, self.cfg, self.lpips, self.weights, self.init_model = G, cfg, lpips_net, weights, init_model
        self.name = cfg.row_name

    def _loss(self, img, target, l2: float, lp: float) -> torch.Tensor:
        return l2 * F.mse_loss(img, target) + lp * self.lpips(img, target).mean()

    def _invert_one(self, x: torch.Tensor, c: torch.Tensor, seed: int) -> tuple[torch.Tensor, nn.Module]:
        cfg, dev = self.cfg, x.device

        def gen(phase: int, step: int) -> torch.Generator:
            return torch.Generator(device=dev).manual_seed((seed + 1_000_003 * phase + step) % (1 << 63))

        with torch.no_grad():
            if self.init_model is not None:
                w0 = self.init_model.encode(x)
            else:
                w_avg = self.G.backbone.mapping.w_avg.reshape(1, 1, -1)
                w0 = w_avg.expand(1, self.G.backbone.mapping.num_ws, -1)
        num_ws = w0.shape[1]
        if cfg.space == "w":   # PTI's pivot: one w for every ws row (the mean row of an encoder's w+)
            w0 = w0.mean(1, keepdim=True)
        with torch.enable_grad():   # time_per_image runs its callable under no_grad
            w = w0.detach().clone().float().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=cfg.w_lr)
            for step in range(cfg.w_steps):
                out = self.G.synthesis(w.expand(-1, num_ws, -1), c, generator=gen(0, step))
                loss = self._loss(out["image"], x, cfg.lambda_l2, cfg.lambda_lpips)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            w = w.detach().expand(-1, num_ws, -1).contiguous()
            if cfg.g_steps == 0:
                return w, self.G
            Gi = copy.deepcopy(self.G).requires_grad_(False)   # the shared G stays untouched
            params = [*Gi.backbone.parameters(), *Gi.decoder.parameters()]
            for q in params:
                q.requires_grad_(True)
            opt = torch.optim.Adam(params, lr=cfg.g_lr)
            for step in range(cfg.g_steps):
                out = Gi.synthesis(w, c, generator=gen(1, step))
                loss = self._loss(out["image"], x, cfg.g_lambda_l2, cfg.g_lambda_lpips)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return w, Gi.requires_grad_(False).eval()

    def invert(self, images: torch.Tensor, cameras: torch.Tensor, generator: torch.Generator) -> OptimHandle:
        ws, gs = [], []
        for i in range(images.shape[0]):
            seed = int(torch.randint(0, 1 << 62, (1,), generator=generator, device=generator.device))
            w, g = self._invert_one(images[i:i + 1], cameras[i:i + 1], seed)
            ws.append(w)
            gs.append(g)
        return OptimHandle(ws, gs)

    @torch.no_grad()
    def render(self, handle: OptimHandle, cameras: torch.Tensor, generator: torch.Generator) -> dict:
        outs = [g.synthesis(w, cameras[i:i + 1], generator=generator)
                for i, (w, g) in enumerate(zip(handle.w_plus, handle.generators))]
        return {"image": torch.cat([o["image"] for o in outs]),
                "image_depth": torch.cat([o["image_depth"] for o in outs])}
