"""EG3D's in-the-wild face crop (`crop_images_in_the_wild.py`: Deep3DFaceRecon `align_img` with
rescale_factor 300 and target 1024, centre crop 700, LANCZOS resize to 512), plus the 2x3 affine
from the original image to the crop so landmarks can be carried along.

Geometry kept from the official code: the POS fit (y-up landmarks `H - 1 - y`), s = 300 / s_POS,
the resized size int(W*s) x int(H*s), the truncated `left`/`up` of the 1024 window, the 162-px
centre-crop offset, BICUBIC then LANCZOS resampling (PIL). Only the pixels that reach the output are
resampled (PIL's `box=` gives the same sample positions and filter support as resizing everything).
Deviations, both optional: `pad_mode` fills outside the photo by reflection (EG3D's PIL crop pads
black: use pad_mode='constant'), and `align_roll` first rotates the photo so the eyes are level
(the official FFHQ images are roll-aligned, NVlabs/eg3d#28; the in-the-wild script is not).
Coordinates are pixel-centre based (pixel i has centre i).
"""
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from goae.data import face_template as ft

_BORDER = {"reflect": cv2.BORDER_REFLECT_101, "edge": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT}


@dataclass(frozen=True)
class CropConfig:
    target_size: int = 1024
    rescale_factor: float = 300.0
    center_crop_size: int = 700
    output_size: int = 512
    align_roll: bool = False
    pad_mode: str = "reflect"  # 'reflect' | 'edge' | 'constant' (black, as EG3D)


@dataclass
class CropResult:
    image: np.ndarray         # [S, S, 3] uint8
    affine: np.ndarray        # [2, 3] original pixel coords -> output pixel coords
    padded_fraction: float    # share of output pixels whose source lies outside the photo
    scale: float              # s = rescale_factor / s_POS (resize factor of the photo)
    center: np.ndarray        # POS translation t in original pixel coords (y down)
    roll: float               # radians the photo was rotated by (0 unless align_roll)


def pos_fit(points_2d: np.ndarray, points_3d: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares affine camera x = P X + t (P: 2x3); returns (t, s) with s the mean row norm
    of P, as Deep3DFaceRecon's POS. Both coordinate sets in the same handedness (y up for align_img)."""
    x3 = np.asarray(points_3d, dtype=np.float64)
    a = np.concatenate([x3, np.ones((len(x3), 1))], axis=1)
    k = np.linalg.lstsq(a, np.asarray(points_2d, dtype=np.float64), rcond=None)[0]  # [4, 2]
    return k[3].copy(), float(0.5 * (np.linalg.norm(k[:3, 0]) + np.linalg.norm(k[:3, 1])))


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    return p @ affine[:, :2].T + affine[:, 2]


def invert_affine(affine: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(np.vstack([affine, [0.0, 0.0, 1.0]]))
    return inv[:2]


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Affine of x -> a(b(x))."""
    return (np.vstack([a, [0, 0, 1]]) @ np.vstack([b, [0, 0, 1]]))[:2]


def _scale_shift(sx: float, sy: float, tx: float, ty: float) -> np.ndarray:
    return np.array([[sx, 0.0, tx], [0.0, sy, ty]])


def roll_angle(points5: np.ndarray) -> float:
    """Angle (radians, image coords y down) of the line from the left to the right eye."""
    d = np.asarray(points5, dtype=np.float64)[1] - np.asarray(points5, dtype=np.float64)[0]
    return float(np.arctan2(d[1], d[0]))


def eg3d_crop(image: np.ndarray, points5: np.ndarray, cfg: CropConfig = CropConfig(),
              lm3d: np.ndarray | None = None) -> CropResult:
    """Crop an RGB uint8 photo around a face given its 5 landmarks (EG3D order, pixel coords)."""
    if cfg.pad_mode not in _BORDER:
        raise ValueError(f"pad_mode must be one of {sorted(_BORDER)}, got {cfg.pad_mode!r}")
    img = np.ascontiguousarray(image)
    hh, ww = img.shape[:2]
    pts = np.asarray(points5, dtype=np.float64).reshape(5, 2)
    lm3d = ft.std5_bfm() if lm3d is None else np.asarray(lm3d, dtype=np.float64)

    roll = roll_angle(pts) if cfg.align_roll else 0.0
    # Rotation about the landmark centroid that levels the eyes (identity without align_roll).
    rot = cv2.getRotationMatrix2D(tuple(pts.mean(0)), np.degrees(roll), 1.0) if roll else _scale_shift(1, 1, 0, 0)
    pts = apply_affine(rot, pts)

    # align_img: POS on y-up landmarks, then the 1024 window of the photo resized by s.
    t_up, s_pos = pos_fit(np.stack([pts[:, 0], hh - 1 - pts[:, 1]], 1), lm3d)
    s = cfg.rescale_factor / s_pos
    t_size = cfg.target_size
    w, h = int(ww * s), int(hh * s)
    left = int(w / 2 - t_size / 2 + (t_up[0] - ww / 2) * s)   # int(): truncation as astype(int32)
    up = int(h / 2 - t_size / 2 + (hh / 2 - t_up[1]) * s)
    cc = cfg.center_crop_size
    off = int(t_size / 2 - cc / 2)
    x0, y0 = left + off, up + off                              # centre-crop origin, resized pixels
    fx, fy = ww / w, hh / h                                    # source pixels per resized pixel

    # Source box of the centre crop (PIL continuous coords) and an integer window around it that is
    # wide enough for the bicubic support; the window is filled by warpAffine (border = pad_mode).
    box = np.array([x0 * fx, y0 * fy, (x0 + cc) * fx, (y0 + cc) * fy])
    margin = int(np.ceil(2 * max(fx, fy, 1.0))) + 2
    wx0, wy0 = int(np.floor(box[0])) - margin, int(np.floor(box[1])) - margin
    win_w, win_h = int(np.ceil(box[2])) + margin - wx0, int(np.ceil(box[3])) + margin - wy0
    if max(win_w, win_h) >= 32767:
        raise ValueError("face too large for the crop window")
    to_win = _compose(_scale_shift(1, 1, -wx0, -wy0), rot)
    window = cv2.warpAffine(img, to_win, (win_w, win_h), flags=cv2.INTER_CUBIC,
                            borderMode=_BORDER[cfg.pad_mode], borderValue=(0, 0, 0))
    pil = Image.fromarray(window).resize((cc, cc), Image.BICUBIC,
                                         box=tuple(box - [wx0, wy0, wx0, wy0]))
    if cfg.output_size != cc:
        pil = pil.resize((cfg.output_size, cfg.output_size), Image.LANCZOS)

    # original -> rotated -> resized (pixel centres: u = (x + .5) / f - .5) -> centre crop -> output
    to_resized = _scale_shift(1 / fx, 1 / fy, 0.5 / fx - 0.5 - x0, 0.5 / fy - 0.5 - y0)
    k = cfg.output_size / cc
    to_out = _scale_shift(k, k, 0.5 * k - 0.5, 0.5 * k - 0.5)
    affine = _compose(to_out, _compose(to_resized, rot))

    # padded share on a grid of output pixel centres mapped back into the photo
    g = np.linspace(0, cfg.output_size - 1, 128)
    src = apply_affine(invert_affine(affine), np.stack(np.meshgrid(g, g), -1).reshape(-1, 2))
    inside = (src[:, 0] >= -0.5) & (src[:, 0] <= ww - 0.5) & (src[:, 1] >= -0.5) & (src[:, 1] <= hh - 0.5)
    center = apply_affine(invert_affine(rot), np.array([[t_up[0], hh - 1 - t_up[1]]]))[0]
    return CropResult(np.asarray(pil), affine, float(1.0 - inside.mean()), float(s), center, roll)
