"""compute_davg on known depth maps and masks (paper §4.1): the background mean, the per-pixel map with its
fallback, the mask rate, the canonical camera for both mapping and rendering, and batch-size independence."""
from __future__ import annotations

import pytest
import torch

from goae.eg3d import camera as cam
from goae.train.davg import compute_davg

# sample k renders a constant depth k+1 with background mask MASKS[k] (1 = background), 2x2 pixels
MASKS = [[[1, 0], [0, 0]], [[1, 1], [0, 0]], [[0, 0], [0, 0]], [[1, 0], [0, 0]]]


class KnownG:
    """Renders sample k (in call order) as depth k+1 and an image that names k for the mask below."""
    z_dim = 3
    neural_rendering_resolution = 2

    def __init__(self):
        self.next, self.cameras = 0, []

    def mapping(self, z, c):
        self.cameras.append(("mapping", c))
        return z[:, None].repeat(1, 2, 1)

    def synthesis(self, ws, c, generator=None, superresolution=True):
        self.cameras.append(("render", c))
        k = torch.arange(self.next, self.next + ws.shape[0], dtype=torch.float32)
        self.next += ws.shape[0]
        return {"image_depth": (k + 1).reshape(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone(),
                "image": (k / 10).reshape(-1, 1, 1, 1).expand(-1, 3, 4, 4).clone()}


class KnownMask:
    name = "known"   # image-based provider: background_mask resizes M to the depth size (here already 2x2)

    def background(self, image):
        k = (image[:, 0, 0, 0] * 10).round().long()
        return torch.tensor(MASKS, dtype=torch.float32)[k][:, None]


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_known_depths_and_masks_give_known_d_avg(batch_size):
    G = KnownG()
    r = compute_davg(G, KnownMask(), n_samples=4, batch_size=batch_size, seed=0, device="cpu", progress=False)
    # background pixels: sample 0 (depth 1) one pixel, sample 1 (depth 2) two, sample 2 none, sample 3 (depth 4) one
    assert r["d_avg"] == pytest.approx((1 + 2 * 2 + 4) / 4)                    # 2.25
    assert r["mask_rate"] == pytest.approx(4 / 16)
    expect_map = torch.tensor([[(1 + 2 + 4) / 3, 2.0], [2.25, 2.25]])          # never-background px -> scalar
    assert torch.allclose(r["d_avg_map"], expect_map)
    assert r["n_samples"] == 4 and r["resolution"] == 2
    front = cam.canonical_camera(1)
    assert {kind for kind, _ in G.cameras} == {"mapping", "render"}
    assert all(torch.equal(c, front.expand(c.shape[0], -1)) for _, c in G.cameras)   # c_front for both


def test_no_background_anywhere_is_nan_not_zero():
    class NoBg(KnownMask):
        def background(self, image):
            return torch.zeros(image.shape[0], 1, 2, 2)
    r = compute_davg(KnownG(), NoBg(), n_samples=2, batch_size=2, seed=0, device="cpu", progress=False)
    assert r["d_avg"] != r["d_avg"] and r["mask_rate"] == 0   # NaN: nothing to average, never a fake 0
