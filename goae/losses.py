"""Every GOAE loss term and weight (paper §4.1, §4.5): Eqs. 2-5, 10, 11, L_w+, L_ΔF. Nowhere else.

The paper writes ||.||_2 for every term; its weights only make sense under these readings:

- L2 image (Eq. 5/10): mean squared error over all elements ("follow pSp": pSp/e4e use F.mse_loss).
- L_BG (Eq. 4): mean over ALL pixels and the batch of (M⊙(D - D_avg))^2, i.e. ||.||^2/N, the same reading
  as the image term. A true norm over a 128^2 depth map (~8k background px, ~0.2 error) is ~18, and
  x λ5 = 5 it would swamp L_rec; dividing by the mask area instead would weight small backgrounds up.
- L_w+ (§4.5): Σ_i mean_b ||w_i - w_0||_2, per-row norms (e4e delta-norm, delta_norm=2); read as an
  MSE, λ6 = 1e-3 would make it vanish.
- L_ΔF (§4.5): mean_b ||F* - F||_2 over C·H·W (a per-sample norm); as an MSE λ7 = 1e-4 would be ≈ 0.
- R1 (Eq. 2): γ/2 · E||∇D(w_c)||_2^2 (Mescheder et al. [26]; the paper's Eq. 2 drops the square).

Eq. 11 sums the objectives of two players. L_adv^D is minimised over D_Wc only (its fake codes are
detached); the encoder minimises the rest. `stage1_encoder_loss` returns both the encoder objective and
the full Eq. 11 value (detached, for logging) as 'total' and 'eq11'.
"""
from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from goae.config import LossConfig  # the weights λ1..λ7, γ: paper §4.5 defaults, one place

DRows = Literal["all", "base"]


# ----------------------------------------------------------------------------- latent adversarial

def d_codes(w_plus: torch.Tensor, d_rows: DRows = "all") -> torch.Tensor:
    """Which codes D_Wc sees: [B,num_ws,512] -> [B*num_ws,512] (paper: every w_i) or [B,512] (release:
    row 0, the base code)."""
    if w_plus.ndim != 3:
        raise ValueError(f"w_plus must be [B,num_ws,w_dim], got {tuple(w_plus.shape)}")
    if d_rows == "all":
        return w_plus.reshape(-1, w_plus.shape[-1])
    if d_rows == "base":
        return w_plus[:, 0]
    raise ValueError(f"d_rows must be 'all' or 'base', got {d_rows!r}")


def d_adv_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eq. 2 without R1: -E[log σ(D(w_c))] - E[log(1-σ(D(w_i)))] = E[softplus(-l_real)] + E[softplus(l_fake)]."""
    d_real = F.softplus(-real_logits).mean()
    d_fake = F.softplus(fake_logits).mean()
    return {"d_real": d_real, "d_fake": d_fake, "d_adv": d_real + d_fake}  # Eq. 2


def e_adv_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 3: L_adv^E = -E[log σ(D(w_i))] = E[softplus(-l_fake)] (non-saturating)."""
    return F.softplus(-fake_logits).mean()  # Eq. 3


def r1_penalty(disc: nn.Module, w_real: torch.Tensor, gamma: float, interval: int = 1) -> torch.Tensor:
    """R1 term of Eq. 2: γ/2 · E_b ||∇_w D(w_c)||^2, times `interval` for lazy regularisation (e4e:
    applied every d_reg_every steps and scaled by it so its average strength is unchanged)."""
    w = w_real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(disc(w).sum(), w, create_graph=True)
    return 0.5 * gamma * grad.square().flatten(1).sum(1).mean() * interval  # Eq. 2 (R1)


def r1_due(step: int, interval: int) -> bool:
    """Lazy R1 schedule: regularise on steps 0, interval, 2*interval, ..."""
    return interval > 0 and step % interval == 0


def discriminator_loss(disc: nn.Module, w_real: torch.Tensor, w_plus: torch.Tensor, *, gamma: float,
                       d_rows: DRows = "all", r1_interval: int | None = None) -> dict[str, torch.Tensor]:
    """Full Eq. 2 for the D_Wc step. `w_plus` is detached (no gradient into the encoder).
    r1_interval: None = no R1 this step; k = lazy R1 scaled by k (1 = every step)."""
    out = d_adv_loss(disc(w_real.detach()), disc(d_codes(w_plus.detach(), d_rows)))
    out["r1"] = (r1_penalty(disc, w_real, gamma, r1_interval) if r1_interval
                 else torch.zeros((), device=w_real.device))
    out["total"] = out["d_adv"] + out["r1"]
    return out


def encoder_adv_loss(disc: nn.Module, w_plus: torch.Tensor, d_rows: DRows = "all") -> torch.Tensor:
    """Eq. 3 through D_Wc (D's parameters get gradients too; the encoder step only steps E)."""
    return e_adv_loss(disc(d_codes(w_plus, d_rows)))


# ----------------------------------------------------------------------------- canonical real codes

def sample_canonical_codes(mapping_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], n: int,
                           z_dim: int, generator: torch.Generator, mode: Literal["paper", "release"] = "paper",
                           jitter: tuple[float, float] = (0.4, 0.15),
                           device: torch.device | str = "cpu") -> torch.Tensor:
    """Real codes w_c ∈ W_c for D_Wc -> [n, w_dim].

    paper:   w = mapping(z, c_front) with GOAE's static canonical camera (§3.1 canonical latent space).
    release: camera yaw ~ U(±jitter[0]), pitch ~ U(±jitter[1]) around pivot (0,0,0.2) at r 2.7, then
             mapping(z, c).mean over ws rows (the early training script).
    z ~ N(0, I) and the angles are drawn from `generator` (on its own device), then moved to `device`.
    """
    from goae.eg3d.camera import canonical_camera, yaw_pitch_camera

    gdev = generator.device
    z = torch.randn(n, z_dim, generator=generator, device=gdev)
    if mode == "paper":
        c = canonical_camera(n, device=gdev)
    elif mode == "release":
        u = torch.rand(2, n, generator=generator, device=gdev) * 2 - 1
        c = yaw_pitch_camera(u[0] * jitter[0], u[1] * jitter[1], device=gdev)
    else:
        raise ValueError(f"mode must be 'paper' or 'release', got {mode!r}")
    ws = mapping_fn(z.to(device), c.to(device))
    if ws.ndim == 3:  # [n,num_ws,w_dim]: rows are identical without truncation cut-off
        ws = ws[:, 0] if mode == "paper" else ws.mean(1)
    return ws


# ----------------------------------------------------------------------------- geometry / latent regularisers

def bg_depth_loss(depth: torch.Tensor, mask: torch.Tensor, d_avg: float | torch.Tensor) -> torch.Tensor:
    """Eq. 4: L_BG = ||D⊙M - D_avg⊙M||_2, read as mean over all pixels and batch of (M⊙(D - D_avg))^2.

    depth [B,1,H,W] (front-view render of the inversion), mask [B,1,H,W] (1 = background; resized by
    area averaging if its size differs, which keeps fractional coverage), d_avg a scalar or a per-pixel
    map [H',W'] / [1,H',W'] / [1,1,H',W'] (bilinearly resized to D's size, then broadcast).
    """
    if depth.ndim != 4 or depth.shape[1] != 1:
        raise ValueError(f"depth must be [B,1,H,W], got {tuple(depth.shape)}")
    size = depth.shape[-2:]
    mask = mask.to(depth.dtype)
    if mask.shape[-2:] != size:
        mask = F.interpolate(mask, size=size, mode="area")
    d_avg = torch.as_tensor(d_avg, dtype=depth.dtype, device=depth.device)
    if d_avg.ndim >= 2:
        d_avg = d_avg.reshape(1, 1, *d_avg.shape[-2:])
        if d_avg.shape[-2:] != size:
            d_avg = F.interpolate(d_avg, size=size, mode="bilinear", align_corners=False)
    return (mask * (depth - d_avg)).square().mean()  # Eq. 4


def w_plus_delta_loss(w_plus: torch.Tensor, n_active: int | None = None) -> torch.Tensor:
    """||Δw+|| with Δw+ = (w1-w0, ..., w13-w0) as e4e's delta-norm: Σ_i mean_b ||w_i - w_0||_2 over rows
    1..n_active (progressive training: rows not yet active are w_0 and contribute 0). Unweighted."""
    delta = w_plus[:, 1:] - w_plus[:, :1]
    if n_active is not None:
        delta = delta[:, :n_active]
    return torch.linalg.vector_norm(delta, dim=-1).mean(0).sum()  # L_w+ / λ6


def delta_f_loss(feat_star: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
    """||ΔF||_2 with ΔF = F* - F, per-sample L2 norm over C·H·W, mean over batch. Unweighted."""
    return torch.linalg.vector_norm((feat_star - feat).flatten(1), dim=1).mean()  # L_ΔF / λ7


# ----------------------------------------------------------------------------- reconstruction (Eqs. 5, 10)

class ReconstructionLoss(nn.Module):
    """Eq. 10: L_rec = λ1·L2 + λ2·LPIPS(alex) + λ3·(1 - cos(ArcFace(I_w+), ArcFace(I))).

    LPIPS and ArcFace are frozen (no parameter grads, kept in eval mode even under .train()); gradients
    flow to the first image only. Terms whose λ is 0 are skipped (their nets are not even built).
    lpips_net: callable (x, y) -> [N] distances; default goae.metrics.image.build_lpips(alexnet_path)
      (packaged lpips v0.1 heads; torchvision AlexNet from `alexnet_path`, else a seeded random trunk).
    id_net / id_embed: ArcFace and its embedding recipe; default goae.nets.arcface IR-SE50 from
      `arcface_path`, else a seeded random IR-SE50 (offline tests only), with `id_embedding`.
    """

    def __init__(self, weights: LossConfig | None = None, *, lpips_net: nn.Module | None = None,
                 alexnet_path: str | None = None, id_net: nn.Module | None = None,
                 id_embed: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
                 arcface_path: str | None = None, seed: int = 0):
        super().__init__()
        weights = LossConfig() if weights is None else weights
        self.weights = weights
        if lpips_net is None and weights.lambda2 > 0:
            from goae.metrics.image import build_lpips
            lpips_net = build_lpips(alexnet_path=alexnet_path, seed=seed)
        if id_net is None and weights.lambda3 > 0:
            from goae.nets import arcface
            id_net = arcface.load_arcface(arcface_path) if arcface_path else arcface.random_arcface(seed)
        if id_embed is None and id_net is not None:
            from goae.nets.arcface import id_embedding as id_embed
        self.lpips_net = None if lpips_net is None else lpips_net.eval().requires_grad_(False)
        self.id_net = None if id_net is None else id_net.eval().requires_grad_(False)
        self.id_embed = id_embed
        self.provenance = {"lpips": getattr(self.lpips_net, "provenance", "injected"),
                           "arcface": getattr(self.id_net, "provenance", "injected")}

    def train(self, mode: bool = True) -> "ReconstructionLoss":
        super().train(mode)
        for net in (self.lpips_net, self.id_net):  # frozen nets never switch dropout/BN to training
            if net is not None:
                net.eval()
        return self

    def forward(self, img: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """img = I_w+ (or I_F*), target = I, both [B,3,H,W] in [-1,1]. Returns raw terms + 'rec'."""
        w = self.weights
        zero = img.new_zeros(())
        target = target.detach()
        l2 = F.mse_loss(img, target)
        lp = self.lpips_net(img, target).mean() if w.lambda2 > 0 else zero
        if w.lambda3 > 0:
            e_img = self.id_embed(self.id_net, img)
            e_tgt = self.id_embed(self.id_net, target).detach()
            cos = (e_img * e_tgt).sum(-1)  # embeddings are unit-length
            id_loss = (1 - cos).mean()
        else:
            cos, id_loss = zero, zero
        rec = w.lambda1 * l2 + w.lambda2 * lp + w.lambda3 * id_loss  # Eq. 10 (Eq. 5 with weights)
        return {"l2": l2, "lpips": lp, "id": id_loss, "id_sim": cos.mean().detach(), "rec": rec}


# ----------------------------------------------------------------------------- totals

def stage1_encoder_loss(weights: LossConfig, rec: dict[str, torch.Tensor], *,
                        adv_e: torch.Tensor | None = None, bg: torch.Tensor | None = None,
                        w_delta: torch.Tensor | None = None,
                        d_adv: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Eq. 11 (stage 1). 'total' = L_rec + λ4·L_adv^E + λ5·L_BG + λ6·||Δw+|| is what E minimises;
    'eq11' adds L_adv^D (+R1) from `d_adv` (discriminator_loss output), detached, for logging.
    Absent terms count as 0 (ablations)."""
    zero = rec["rec"].new_zeros(())
    adv_e = zero if adv_e is None else adv_e
    bg = zero if bg is None else bg
    w_delta = zero if w_delta is None else w_delta
    enc = rec["rec"] + weights.lambda4 * adv_e + weights.lambda5 * bg  # Eq. 11 (encoder's share)
    enc = enc + weights.lambda6 * w_delta  # L_w+ = λ6·||Δw+||_2 (§4.5)
    d_total = zero if d_adv is None else d_adv["total"].detach()
    out = {k: v for k, v in rec.items()}
    out.update(adv_e=adv_e, bg=bg, w_delta=w_delta, total=enc, eq11=enc.detach() + d_total)
    return out


def stage2_loss(weights: LossConfig, rec: dict[str, torch.Tensor], delta_f: torch.Tensor,
                adv_e: torch.Tensor | None = None, bg: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Stage 2 (AFA only, encoder frozen): L_rec + λ5·L_BG + λ7·||ΔF||_2. §4.2 trains the AFA with the
    stage-1 objective minus L_adv and L_w+, so L_BG (Eq. 4 on the F* render at c_front) stays; `bg=None`
    drops it (release). `adv_e` (release keeps the latent-D loss on) is added with λ4 if given."""
    bg = rec["rec"].new_zeros(()) if bg is None else bg
    total = rec["rec"] + weights.lambda5 * bg + weights.lambda7 * delta_f  # §4.2 / §4.5 (Eq. 11 minus adv, w+)
    if adv_e is not None:
        total = total + weights.lambda4 * adv_e
    out = {k: v for k, v in rec.items()}
    out.update(bg=bg, delta_f=delta_f, total=total)
    if adv_e is not None:
        out["adv_e"] = adv_e
    return out
