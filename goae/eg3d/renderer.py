"""EG3D volume rendering: rays, tri-plane sampling, OSG decoder, importance renderer, ray marcher.

Behaves as the official NVlabs/eg3d `volumetric_rendering` package (commit 7cf1fd1), float32, pure
PyTorch. Two render paths give the same result within the golden tolerances (depths, weights_sum
and features 1e-5, sigma 1e-4):

- reference (`rendering_options['fast'] = False`): the official operation order, one pass over all
  rays; kept for the golden checker and tests.
- fast (default): rays in chunks that stay in cache, the three planes sampled and averaged by one
  fused gather (`F.embedding_bag` over channels-last planes), and the 32-channel features never
  sorted: the marcher's sum over sorted intervals, sum_i w_i (c_i + c_i+1)/2, equals
  sum_s c_s (w_s-1 + w_s)/2, so coefficients are computed on the 1-channel sorted sequence and
  scattered back to the unsorted samples.

Extra rendering options (absent from official configs): 'fast' (default True; density_noise > 0
always takes the reference path, whose draw order it needs) and 'ray_chunk' (rays per chunk; default
512 on CPU, all rays of one batch element elsewhere).

Randomness (two draws, in eval too, as official): the stratified jitter u [B,M,D,1] and the
importance u [B*M,N_imp]. Injected tensors win; else `generator`; else the global torch RNG in the
official order (`torch.manual_seed(S)` before synthesis reproduces the official CPU draws).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------
# Tri-plane sampling


def generate_planes() -> torch.Tensor:
    """Official plane axes [3,3,3]: XY, XZ and *ZX* (not YZ). A known quirk of the official code
    (NVlabs/eg3d#67), kept on purpose: every released checkpoint was trained with it. After
    projection plane 0 is indexed by (x, y), plane 1 by (x, z) and plane 2 by (z, x)."""
    return torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                         [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                         [[0, 0, 1], [1, 0, 0], [0, 1, 0]]], dtype=torch.float32)


def project_onto_planes(plane_axes: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """coords [B,N,3] -> 2D plane coordinates [B*3,N,2] (official layout, plane index fastest)."""
    B, N, _ = coords.shape
    n_planes = plane_axes.shape[0]
    coords = coords.unsqueeze(1).expand(-1, n_planes, -1, -1).reshape(B * n_planes, N, 3)
    inv = torch.linalg.inv(plane_axes).unsqueeze(0).expand(B, -1, -1, -1).reshape(B * n_planes, 3, 3)
    return torch.bmm(coords, inv)[..., :2]


def sample_from_planes(plane_axes: torch.Tensor, planes: torch.Tensor, coords: torch.Tensor,
                       box_warp: float = 2.0, mode: str = 'bilinear', padding_mode: str = 'zeros') -> torch.Tensor:
    """planes [B,3,C,H,W], coords [B,N,3] in world units -> features [B,3,N,C]. The box
    [-box_warp/2, box_warp/2]^3 maps to the grid's [-1,1]; outside it reads zeros."""
    B, n_planes, C, H, W = planes.shape
    N = coords.shape[1]
    grid = project_onto_planes(plane_axes, (2 / box_warp) * coords).unsqueeze(1)
    out = F.grid_sample(planes.reshape(B * n_planes, C, H, W), grid.float(), mode=mode,
                        padding_mode=padding_mode, align_corners=False)  # [B*3,C,1,N]
    return out.permute(0, 3, 2, 1).reshape(B, n_planes, N, C)


# ----------------------------------------------------------------------------------------------
# Decoder


class _FC(nn.Module):
    """Official FullyConnectedLayer, linear activation: x (W*lr_mul/sqrt(in))^T + b*lr_mul."""

    def __init__(self, in_features: int, out_features: int, lr_multiplier: float = 1.0):
        super().__init__()
        # Official init (global RNG, as nn.Linear): weights are stored divided by lr_mul.
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias.to(x.dtype)
        if self.bias_gain != 1:
            b = b * self.bias_gain
        return torch.addmm(b.unsqueeze(0), x, (self.weight.to(x.dtype) * self.weight_gain).t())


class OSGDecoder(nn.Module):
    """Mean of the 3 plane features -> FC -> softplus -> FC -> (sigma raw, 32 features).
    State-dict keys net.0.{weight,bias}, net.2.{weight,bias} as official. Directions are unused."""

    def __init__(self, n_features: int = 32, hidden_dim: int = 64, decoder_output_dim: int = 32,
                 lr_multiplier: float = 1.0):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.net = nn.Sequential(_FC(n_features, hidden_dim, lr_multiplier), nn.Softplus(),
                                 _FC(hidden_dim, 1 + decoder_output_dim, lr_multiplier))

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Averaged features [n,C] -> (sigma [n,1], rgb [n,out])."""
        x = self.net(x)
        return x[:, 0:1], torch.sigmoid(x[:, 1:]) * (1 + 2 * 0.001) - 0.001

    def forward(self, sampled_features: torch.Tensor, ray_directions: torch.Tensor) -> dict:
        B, _, N, C = sampled_features.shape
        sigma, rgb = self.decode(sampled_features.mean(1).reshape(B * N, C))
        return {'rgb': rgb.reshape(B, N, -1), 'sigma': sigma.reshape(B, N, 1)}


# ----------------------------------------------------------------------------------------------
# Rays


class RaySampler(nn.Module):
    """One ray per pixel centre; OpenCV camera (x right, y down, z forward), unit directions
    (depths are distances along the ray, not z-depth), origins at the camera centre."""

    def forward(self, cam2world: torch.Tensor, intrinsics: torch.Tensor, resolution: int):
        B, M = cam2world.shape[0], resolution ** 2
        dev = cam2world.device
        cam_loc = cam2world[:, :3, 3]
        fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]
        cx, cy, sk = intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None], intrinsics[:, 0, 1, None]
        ar = torch.arange(resolution, dtype=torch.float32, device=dev)
        uv = torch.stack(torch.meshgrid(ar, ar, indexing='ij')) * (1.0 / resolution) + (0.5 / resolution)
        uv = uv.flip(0).reshape(2, -1).t()  # [M,2] = (u = col, v = row), row-major pixel order
        x_cam, y_cam = uv[None, :, 0].expand(B, M), uv[None, :, 1].expand(B, M)
        z_cam = torch.ones((B, M), device=dev)
        x_lift = (x_cam - cx + cy * sk / fy - sk * y_cam / fy) / fx * z_cam  # skew as official
        y_lift = (y_cam - cy) / fy * z_cam
        pts = torch.stack((x_lift, y_lift, z_cam, torch.ones_like(z_cam)), dim=-1)
        world = torch.bmm(cam2world, pts.permute(0, 2, 1)).permute(0, 2, 1)[:, :, :3]
        dirs = F.normalize(world - cam_loc[:, None, :], dim=2)
        return cam_loc.unsqueeze(1).repeat(1, M, 1), dirs


# ----------------------------------------------------------------------------------------------
# Ray marcher


def _marcher_weights(densities: torch.Tensor, depths: torch.Tensor, clamp_mode: str) -> torch.Tensor:
    """MipRayMarcher2 steps 1-4 along dim -2: raw sigma of S samples -> S-1 interval weights."""
    deltas = depths[..., 1:, :] - depths[..., :-1, :]
    densities_mid = (densities[..., :-1, :] + densities[..., 1:, :]) / 2
    if clamp_mode != 'softplus':
        raise ValueError("MipRayMarcher2 only supports clamp_mode='softplus'")
    densities_mid = F.softplus(densities_mid - 1)  # official activation bias -1
    alpha = 1 - torch.exp(-densities_mid * deltas)
    alpha_shifted = torch.cat([torch.ones_like(alpha[..., :1, :]), 1 - alpha + 1e-10], -2)
    return alpha * torch.cumprod(alpha_shifted, -2)[..., :-1, :]


def _expected_depth(num: torch.Tensor, wsum: torch.Tensor) -> torch.Tensor:
    """Σw·t / Σw with the official forward (a fully transparent ray, Σw = 0, gives 0/0 = NaN, which the
    official code turns into +inf before the clamp) but finite gradients: the plain division would
    back-propagate NaN from those rays into every weight."""
    pos = wsum > 0
    return torch.where(pos, num / torch.where(pos, wsum, torch.ones_like(wsum)), torch.full_like(num, float("inf")))


class MipRayMarcher2(nn.Module):
    def forward(self, colors, densities, depths, rendering_options):
        """colors [B,M,S,C], densities/depths [B,M,S,1] (sorted) -> rgb [B,M,C] in [-1,1] (+ white_back),
        depth [B,M,1], weights [B,M,S-1,1].

        The depth clamp uses min/max over the *whole* depths tensor, so batch elements are coupled
        (official behaviour; a ray with zero weight gets the largest depth in the batch)."""
        weights = _marcher_weights(densities, depths, rendering_options['clamp_mode'])
        colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
        depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
        rgb = torch.sum(weights * colors_mid, -2)
        weight_total = weights.sum(2)
        depth = _expected_depth(torch.sum(weights * depths_mid, -2), weight_total)
        depth = torch.clamp(depth, torch.min(depths), torch.max(depths))
        if rendering_options.get('white_back', False):
            rgb = rgb + 1 - weight_total
        return rgb * 2 - 1, depth, weights


# ----------------------------------------------------------------------------------------------
# Sampling along rays


def ray_limits_box(origins: torch.Tensor, directions: torch.Tensor, box_side_length: float):
    """Slab test against the cube [-s/2, s/2]^3 -> (t_min, t_max) [...,1]; misses get (-1, -2)."""
    o, d = origins.detach().reshape(-1, 3), directions.detach().reshape(-1, 3)
    inv = 1 / d
    t0 = (-box_side_length / 2 - o) * inv
    t1 = (box_side_length / 2 - o) * inv
    lo, hi = torch.minimum(t0, t1), torch.maximum(t0, t1)
    tmin, tmax = lo.max(-1).values, hi.min(-1).values
    valid = tmin <= tmax
    tmin, tmax = tmin.masked_fill(~valid, -1.0), tmax.masked_fill(~valid, -2.0)
    return tmin.reshape(*origins.shape[:-1], 1), tmax.reshape(*origins.shape[:-1], 1)


def sample_stratified(ray_start, ray_end, depth_resolution: int, u: torch.Tensor,
                      disparity_space_sampling: bool = False) -> torch.Tensor:
    """Coarse depths [B,M,D,1] = evenly spaced + u * one step (jitter always on, as official).
    ray_start/ray_end are floats or [B,M,1] tensors ('auto' limits)."""
    B, M, D = u.shape[0], u.shape[1], depth_resolution
    if disparity_space_sampling:
        t = torch.linspace(0, 1, D, device=u.device).reshape(1, 1, D, 1).repeat(B, M, 1, 1)
        t = t + u * (1 / (D - 1))
        return 1. / (1. / ray_start * (1. - t) + 1. / ray_end * t)
    if isinstance(ray_start, torch.Tensor):
        steps = torch.arange(D, dtype=ray_start.dtype, device=u.device) / (D - 1)
        depths = ray_start[..., None, :] + steps.reshape(1, 1, D, 1) * (ray_end - ray_start)[..., None, :]
        return depths + u * ((ray_end - ray_start) / (D - 1))[..., None]
    depths = torch.linspace(ray_start, ray_end, D, device=u.device).reshape(1, 1, D, 1).repeat(B, M, 1, 1)
    return depths + u * ((ray_end - ray_start) / (D - 1))


@torch.no_grad()
def sample_importance(depths: torch.Tensor, weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF importance samples. depths [R,D] (coarse), weights [R,D-1] (coarse marcher),
    u [R,N] -> [R,N] unsorted, in u's column order. Official steps: max_pool(2,1,pad 1) ->
    avg_pool(2,1) -> +0.01 -> [1:-1] -> +1e-5 -> pdf/cdf over D-3 bins on the depth midpoints."""
    w = F.max_pool1d(weights.unsqueeze(1).float(), 2, 1, padding=1)
    w = F.avg_pool1d(w, 2, 1).squeeze(1) + 0.01
    bins = 0.5 * (depths[:, :-1] + depths[:, 1:])
    w = w[:, 1:-1] + 1e-5
    n_bins = w.shape[1]
    pdf = w / torch.sum(w, -1, keepdim=True)
    cdf = torch.cumsum(pdf, -1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)
    inds = torch.searchsorted(cdf, u.contiguous(), right=True)
    below, above = torch.clamp_min(inds - 1, 0), torch.clamp_max(inds, n_bins)
    cdf_lo, cdf_hi = torch.gather(cdf, 1, below), torch.gather(cdf, 1, above)
    bins_lo, bins_hi = torch.gather(bins, 1, below), torch.gather(bins, 1, above)
    denom = cdf_hi - cdf_lo
    denom = torch.where(denom < 1e-5, torch.ones_like(denom), denom)
    return bins_lo + (u - cdf_lo) / denom * (bins_hi - bins_lo)


def _uniform(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float32, device=like.device)


# ----------------------------------------------------------------------------------------------
# Fast path helpers


def _plane_axis_pairs(plane_axes: torch.Tensor) -> torch.Tensor | None:
    """For axis-permutation planes, which world axis gives each plane's (column, row) coordinate,
    [2,P] (official: columns x, x, z and rows y, z, x); None for general axes (then the fast path
    samples with grid_sample)."""
    sel = torch.linalg.inv(plane_axes.double().cpu())[:, :, :2]  # [P,3,2]
    if not bool(((sel == 0) | (sel == 1)).all() and (sel.sum(1) == 1).all()):
        return None
    return sel.argmax(1).t().contiguous()


def _plane_table(planes: torch.Tensor) -> torch.Tensor:
    """[P,C,H,W] planes -> channels-last table [P*(H+3)*(W+3), C] with a zero border of 1 before
    and 2 after on each axis, so every bilinear tap of a clamped coordinate is a valid row."""
    P, C, H, W = planes.shape
    table = planes.new_zeros(P, H + 3, W + 3, C)
    table[:, 1:H + 1, 1:W + 1] = planes.permute(0, 2, 3, 1)  # one copy; autograd flows into planes
    return table.reshape(-1, C)


def _taps(c: torch.Tensor, size: int):
    """grid_sample (bilinear, align_corners=False) taps along one axis, in padded-table units:
    coords [n,k] -> first tap index [n,k] (second = +1) and the two weights [n,k] each.
    Clamping to [-1, size] moves far-away points onto the zero border with weights (1, 0), so the
    zero padding of grid_sample needs no masks."""
    a = (((c + 1) * size - 1) / 2).clamp_(-1, size)
    f0 = a.floor()
    # weights written as grid_sample writes them ((x0 + 1) - x and x - x0) for the same rounding
    return f0.long() + 1, f0 + 1 - a, a - f0


def _sample_mean_fast(table: torch.Tensor, hw: tuple[int, int], axes: torch.Tensor,
                      coords: torch.Tensor) -> torch.Tensor:
    """Mean over planes of bilinear plane features: table from `_plane_table`, coords [n,3]
    already scaled to the grid -> [n,C]. One weighted gather of 4 rows per plane and point."""
    H, W = hw
    cols, rows = axes.to(coords.device)  # already there when it comes from ImportanceRenderer.axis_pairs
    P = cols.shape[0]
    i, w0, w1 = _taps(coords, W)
    if H != W:
        ih, v0, v1 = _taps(coords, H)
    else:
        ih, v0, v1 = i, w0, w1
    Wp = W + 3
    # (broadcasts with inner dims of 2 or 4 are slow on CPU, hence the explicit stacks)
    base = ih.index_select(1, rows) * Wp + i.index_select(1, cols)  # [n,P] top-left tap row
    base += torch.arange(P, device=coords.device) * ((H + 3) * Wp)
    idx = torch.stack([base, base + 1, base + Wp, base + (Wp + 1)], -1)  # [n,P,4]
    c0, c1 = w0.index_select(1, cols), w1.index_select(1, cols)
    r0, r1 = v0.index_select(1, rows) * (1 / P), v1.index_select(1, rows) * (1 / P)  # 1/P: the mean
    wts = torch.stack([r0 * c0, r0 * c1, r1 * c0, r1 * c1], -1).to(table.dtype)
    return F.embedding_bag(idx.reshape(-1, 4 * P), table, per_sample_weights=wts.reshape(-1, 4 * P), mode='sum')


# ----------------------------------------------------------------------------------------------
# Renderer


class ImportanceRenderer(nn.Module):
    """Stratified coarse pass + importance pass + MipRayMarcher2 over all samples (official)."""

    cpu_ray_chunk = 512  # rays per chunk on CPU (keeps ~100 samples x 64 channels in cache)

    def __init__(self):
        super().__init__()
        self.ray_marcher = MipRayMarcher2()
        self.plane_axes = generate_planes()  # plain attribute, not in the state_dict (as official)
        self._axes_cache: tuple = (None, {})

    def axis_pairs(self, device) -> torch.Tensor | None:
        """`_plane_axis_pairs` of the current plane_axes, computed once and kept per device: a render
        then never copies host data to the GPU (no stall, CUDA-graph capturable)."""
        src, per_device = getattr(self, '_axes_cache', (None, {}))  # absent on objects built without __init__
        if src is not self.plane_axes:
            pairs = _plane_axis_pairs(self.plane_axes)
            self._axes_cache = src, per_device = self.plane_axes, {'cpu': pairs}
        key = str(torch.device(device))
        if key not in per_device:
            pairs = per_device['cpu']
            per_device[key] = None if pairs is None else pairs.to(device)
        return per_device[key]

    def forward(self, planes, decoder, ray_origins, ray_directions, rendering_options, *,
                generator=None, stratified_u=None, importance_u=None, record=None):
        """planes [B,3,C,H,W], rays [B,M,3] -> feature [B,M,32] (in [-1,1]), depth [B,M,1],
        weights_sum [B,M,1]. See the module docstring for the randomness modes; `record`, if a
        dict, receives depths_coarse, depths_fine, sigma_coarse, sigma_fine, rgb_coarse,
        stratified_u and importance_u (official shapes)."""
        opts = rendering_options
        B, M, _ = ray_origins.shape
        D, Ni = opts['depth_resolution'], opts['depth_resolution_importance']
        ray_start, ray_end = opts['ray_start'], opts['ray_end']
        if ray_start == ray_end == 'auto':
            ray_start, ray_end = ray_limits_box(ray_origins, ray_directions, opts['box_warp'])
            # official: if any ray hits the box, misses get the extreme valid start (sic: end too). Written
            # with where/min/max on the device instead of .item() and boolean indexing (host syncs).
            valid = ray_end > ray_start
            fill = ~valid & valid.any()
            inf = torch.full_like(ray_start, float('inf'))
            lo, hi = torch.where(valid, ray_start, inf).min(), torch.where(valid, ray_start, -inf).max()
            ray_start, ray_end = torch.where(fill, lo, ray_start), torch.where(fill, hi, ray_end)
        if stratified_u is None:
            stratified_u = _uniform((B, M, D, 1), ray_origins, generator)
        depths_coarse = sample_stratified(ray_start, ray_end, D, stratified_u,
                                          opts.get('disparity_space_sampling', False))
        if record is not None:
            record.update(stratified_u=stratified_u, depths_coarse=depths_coarse)
        fast = opts.get('fast', True) and not opts.get('density_noise', 0) > 0
        run = self._forward_fast if fast else self._forward_reference
        return run(planes, decoder, ray_origins, ray_directions, opts, depths_coarse,
                   generator, importance_u, record)

    # -- reference: the official operation order --------------------------------------------------

    def run_model(self, planes, decoder, coords, directions, opts, generator=None):
        feats = sample_from_planes(self.plane_axes.to(coords.device), planes, coords, box_warp=opts['box_warp'])
        out = decoder(feats, directions)
        if opts.get('density_noise', 0) > 0:
            noise = torch.randn(out['sigma'].shape, generator=generator, device=coords.device)
            out['sigma'] = out['sigma'] + noise * opts['density_noise']
        return out

    def _forward_reference(self, planes, decoder, ray_origins, ray_directions, opts, depths_coarse,
                           generator, importance_u, record):
        B, M, D, _ = depths_coarse.shape
        Ni = opts['depth_resolution_importance']

        def run(depths):
            S = depths.shape[2]
            coords = (ray_origins.unsqueeze(-2) + depths * ray_directions.unsqueeze(-2)).reshape(B, -1, 3)
            dirs = ray_directions.unsqueeze(-2).expand(-1, -1, S, -1).reshape(B, -1, 3)
            return self.run_model(planes, decoder, coords, dirs, opts, generator)

        out = run(depths_coarse)
        colors = out['rgb'].reshape(B, M, D, -1)
        densities = out['sigma'].reshape(B, M, D, 1)
        depths = depths_coarse
        if record is not None:
            record.update(sigma_coarse=out['sigma'], rgb_coarse=out['rgb'])
        if Ni > 0:
            _, _, weights = self.ray_marcher(colors, densities, depths_coarse, opts)
            if importance_u is None:
                importance_u = _uniform((B * M, Ni), ray_origins, generator)
            depths_fine = sample_importance(depths_coarse.reshape(B * M, D), weights.reshape(B * M, D - 1),
                                            importance_u).reshape(B, M, Ni, 1)
            out = run(depths_fine)
            if record is not None:
                record.update(importance_u=importance_u, depths_fine=depths_fine, sigma_fine=out['sigma'])
            depths = torch.cat([depths_coarse, depths_fine], -2)
            colors = torch.cat([colors, out['rgb'].reshape(B, M, Ni, -1)], -2)
            densities = torch.cat([densities, out['sigma'].reshape(B, M, Ni, 1)], -2)
            _, order = torch.sort(depths, dim=-2)
            depths = torch.gather(depths, -2, order)
            colors = torch.gather(colors, -2, order.expand(-1, -1, -1, colors.shape[-1]))
            densities = torch.gather(densities, -2, order)
        rgb, depth, weights = self.ray_marcher(colors, densities, depths, opts)
        return rgb, depth, weights.sum(2)

    # -- fast: chunked, fused plane gather, unsorted feature contraction ----------------------------

    def _forward_fast(self, planes, decoder, ray_origins, ray_directions, opts, depths_coarse,
                      generator, importance_u, record):
        B, M, D, _ = depths_coarse.shape
        Ni = opts['depth_resolution_importance']
        if Ni > 0 and importance_u is None:  # no draw happens in between, so the official order holds
            importance_u = _uniform((B * M, Ni), ray_origins, generator)
        clamp_mode, box_warp = opts['clamp_mode'], opts['box_warp']
        axes = self.axis_pairs(ray_origins.device)
        plane_axes = self.plane_axes.to(ray_origins.device) if axes is None else None
        _, P, C, H, W = planes.shape
        chunk = opts.get('ray_chunk') or (self.cpu_ray_chunk if ray_origins.device.type == 'cpu' else M)
        zc_all = depths_coarse.reshape(B, M, D)
        u_all = importance_u.reshape(B, M, Ni) if Ni > 0 else None
        osg = isinstance(decoder, OSGDecoder)

        def decode(table, pl, o, d, z):  # rays [R,3], depths [R,S] -> sigma [R,S], rgb [R,S,C']
            R, S = z.shape
            coords = ((o[:, None, :] + z[..., None] * d[:, None, :]) * (2 / box_warp)).reshape(R * S, 3)
            if axes is not None:
                feats = _sample_mean_fast(table, (H, W), axes, coords)
            else:
                grid = torch.bmm(coords.expand(P, -1, -1), torch.linalg.inv(plane_axes)[:, :, :2])
                feats = F.grid_sample(pl, grid.unsqueeze(1), mode='bilinear', padding_mode='zeros',
                                      align_corners=False)[:, :, 0].mean(0).t()
            if osg:
                sigma, rgb = decoder.decode(feats)
            else:  # any decoder with the official interface
                out = decoder(feats[None, None].expand(1, 1, -1, -1),
                              d[:, None, :].expand(-1, S, -1).reshape(1, R * S, 3))
                sigma, rgb = out['sigma'][0], out['rgb'][0]
            # fp32 for the marcher even when an autocast ran the decoder's matmuls in bf16/fp16
            return sigma.reshape(R, S).float(), rgb.reshape(R, S, -1).float()

        feats_out, depth_out, wsum_out, zmin, zmax = [], [], [], [], []
        rec = {k: [] for k in ('sigma_coarse', 'rgb_coarse', 'depths_fine', 'sigma_fine')}
        for b in range(B):
            pl = planes[b]
            table = _plane_table(pl) if axes is not None else None
            for s in range(0, M, chunk):
                o, d, zc = ray_origins[b, s:s + chunk], ray_directions[b, s:s + chunk], zc_all[b, s:s + chunk]
                sig_c, rgb_c = decode(table, pl, o, d, zc)
                if record is not None:
                    rec['sigma_coarse'].append(sig_c.reshape(-1, 1))
                    rec['rgb_coarse'].append(rgb_c.reshape(-1, rgb_c.shape[-1]))
                if Ni > 0:
                    with torch.no_grad():
                        w = _marcher_weights(sig_c[..., None], zc[..., None], clamp_mode)[..., 0]
                        zf = sample_importance(zc, w, u_all[b, s:s + chunk])
                    sig_f, rgb_f = decode(table, pl, o, d, zf)
                    if record is not None:
                        rec['depths_fine'].append(zf)
                        rec['sigma_fine'].append(sig_f.reshape(-1, 1))
                    z, order = torch.sort(torch.cat([zc, zf], 1), dim=1)
                    sig = torch.gather(torch.cat([sig_c, sig_f], 1), 1, order)
                else:  # official marches the coarse samples unsorted (they are increasing anyway)
                    z, sig, order = zc, sig_c, None
                w = _marcher_weights(sig[..., None], z[..., None], clamp_mode)[..., 0]  # [R,S-1]
                wsum = w.sum(1, keepdim=True)
                depth = _expected_depth(torch.sum(w * (z[:, :-1] + z[:, 1:]) / 2, 1, keepdim=True), wsum)
                coef = F.pad(w, (1, 1))
                coef = (coef[:, :-1] + coef[:, 1:]) / 2  # per sorted sample: (w_{s-1} + w_s) / 2
                if order is not None:
                    coef = torch.zeros_like(coef).scatter(1, order, coef)
                feat = torch.bmm(coef[:, None, :D], rgb_c)[:, 0]
                if order is not None:
                    feat = feat + torch.bmm(coef[:, None, D:], rgb_f)[:, 0]
                feats_out.append(feat)
                depth_out.append(depth)
                wsum_out.append(wsum)
                zmin.append(z.min())
                zmax.append(z.max())
        rgb = torch.cat(feats_out).reshape(B, M, -1).float()  # fp32 out even if an autocast ran the bmm
        wsum = torch.cat(wsum_out).reshape(B, M, 1)
        # batch-coupled clamp, as official: min/max over every sample depth of every ray in the batch
        depth = torch.clamp(torch.cat(depth_out).reshape(B, M, 1), torch.stack(zmin).min(), torch.stack(zmax).max())
        if opts.get('white_back', False):
            rgb = rgb + 1 - wsum
        if record is not None:
            record.update(sigma_coarse=torch.cat(rec['sigma_coarse']).reshape(B, M * D, 1),
                          rgb_coarse=torch.cat(rec['rgb_coarse']).reshape(B, M * D, -1))
            if Ni > 0:
                record.update(importance_u=importance_u,
                              depths_fine=torch.cat(rec['depths_fine']).reshape(B, M, Ni, 1),
                              sigma_fine=torch.cat(rec['sigma_fine']).reshape(B, M * Ni, 1))
        return rgb * 2 - 1, depth, wsum
