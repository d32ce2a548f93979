"""EG3D camera labels from 2D face landmarks (offline stand-in for Deep3DFaceRecon + 3dface2idr).

Conventions (EG3D `docs/camera_conventions.md`): cam2world, OpenCV camera (x right, y down,
z forward), world y up; label = 16 row-major cam2world + 9 normalised intrinsics.
Pixel coordinates are pixel-centre based (pixel i has centre i), matching EG3D's ray sampler, which
puts pixel i at normalised (i + 0.5) / size.
Angles are radians. yaw/pitch are the sphere coordinates of the camera around the world origin
(as EG3D's LookAtPoseSampler: yaw > 0 puts the camera at +x, pitch > 0 puts it below the horizon);
pitch here is the true elevation angle, while the sampler's `v` maps to it via `lookat_sampler_hv`.
roll is the camera's rotation about its optical axis relative to the no-roll look-at frame.
"""
from dataclasses import dataclass

import cv2
import numpy as np

from goae.data import face_template as ft

FOCAL = 4.2647          # 2985.29 / 700, EG3D FFHQ labels
RADIUS = 2.7
PIVOT = np.array([0.0, 0.0, 0.2])
FLIP_YAW_INDICES = (1, 2, 3, 4, 8)   # preprocess_face_cameras.py flip_yaw
INTRINSICS = np.array([[FOCAL, 0.0, 0.5], [0.0, FOCAL, 0.5], [0.0, 0.0, 1.0]])


def lookat_rotation(origin: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[3,3] cam2world rotation of a camera at `origin` looking at `target`, world up (0,1,0),
    columns [right, up', forward] as EG3D's create_cam2world_matrix."""
    fwd = target - origin
    fwd = fwd / np.linalg.norm(fwd)
    right = -np.cross(np.array([0.0, 1.0, 0.0]), fwd)
    right /= np.linalg.norm(right)
    up = np.cross(fwd, right)
    return np.stack([right, up / np.linalg.norm(up), fwd], axis=1)


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def lookat_cam2world(yaw: float, pitch: float, roll: float = 0.0, pivot=PIVOT,
                     radius: float = RADIUS) -> np.ndarray:
    """[4,4] camera on the sphere of `radius` around the world origin looking at `pivot`."""
    origin = radius * np.array([np.cos(pitch) * np.sin(yaw), -np.sin(pitch), np.cos(pitch) * np.cos(yaw)])
    m = np.eye(4)
    m[:3, :3] = lookat_rotation(origin, np.asarray(pivot, dtype=np.float64)) @ _rot_z(roll)
    m[:3, 3] = origin
    return m


def lookat_sampler_hv(yaw: float, pitch: float) -> tuple[float, float]:
    """(h, v) for EG3D's LookAtPoseSampler.sample giving this camera position (its v is not an angle:
    cos(phi) = 1 - 2v/pi)."""
    return np.pi / 2 + yaw, np.pi / 2 * (1.0 + np.sin(pitch))


def make_label(cam2world: np.ndarray) -> np.ndarray:
    """[25] float32 EG3D label."""
    return np.concatenate([np.asarray(cam2world, np.float64).reshape(16), INTRINSICS.reshape(9)]).astype(np.float32)


def yaw_pitch_roll(label) -> tuple[float, float, float]:
    """Inverse of `lookat_cam2world` (pivot (0,0,0.2)) for a label or a 4x4 cam2world."""
    m = np.asarray(label, dtype=np.float64).reshape(-1)[:16].reshape(4, 4)
    c, rot = m[:3, 3], m[:3, :3]
    yaw = float(np.arctan2(c[0], c[2]))
    pitch = float(-np.arcsin(np.clip(c[1] / np.linalg.norm(c), -1.0, 1.0)))
    rel = lookat_rotation(c, PIVOT).T @ rot
    return yaw, pitch, float(np.arctan2(rel[1, 0], rel[0, 0]))


def flip_yaw(label: np.ndarray) -> np.ndarray:
    """Mirror a label (or a batch [..., 25] / [..., 16]) across the world x = 0 plane, as EG3D:
    conjugation of cam2world by diag(-1, 1, 1, 1)."""
    out = np.array(label, copy=True)
    out[..., list(FLIP_YAW_INDICES)] *= -1
    return out


def mirror_landmarks(points: np.ndarray, width: int) -> np.ndarray:
    """Landmarks of the horizontally flipped image: x -> width - 1 - x, left/right swapped."""
    p = np.array(points, dtype=np.float64, copy=True)
    p[..., 0] = width - 1 - p[..., 0]
    perm = {5: ft.FLIP5, 68: ft.FLIP68}[p.shape[-2]]
    return p[..., perm, :]


def pixel_intrinsics(size: int) -> np.ndarray:
    """[3,3] EG3D intrinsics in pixel-centre coordinates of a size x size crop."""
    return np.array([[FOCAL * size, 0.0, 0.5 * size - 0.5], [0.0, FOCAL * size, 0.5 * size - 0.5], [0.0, 0.0, 1.0]])


def project(points_world: np.ndarray, cam2world: np.ndarray, size: int) -> np.ndarray:
    """[N,3] world points -> [N,2] pixel coordinates through an EG3D camera."""
    m = np.asarray(cam2world, dtype=np.float64).reshape(-1)[:16].reshape(4, 4)
    cam = (np.asarray(points_world, dtype=np.float64) - m[:3, 3]) @ m[:3, :3]
    uvw = cam @ pixel_intrinsics(size).T
    return uvw[:, :2] / uvw[:, 2:3]


def template_points(n: int) -> np.ndarray:
    return {5: ft.template5_world, 68: ft.template68_world}[n]()


def project_template(yaw: float, pitch: float, roll: float, crop_size: int, n_points: int = 5) -> np.ndarray:
    """[n,2] template landmarks as seen by the look-at camera (yaw, pitch, roll) in a crop_size crop."""
    return project(template_points(n_points), lookat_cam2world(yaw, pitch, roll), crop_size)


# Which template a label was fitted with (recorded in every label's provenance).
TEMPLATE_ID = {5: "ibug68-mean-5pt/bfm-placed/3dface2idr-world", 68: "ibug68-mean/bfm-placed/3dface2idr-world"}

# A fit is flagged unreliable (label kept, flag recorded) beyond these limits.
MAX_RELIABLE_YAW_DEG = 60.0      # profile: half the face and most of the jaw line are hidden
MIN_VISIBLE_POINTS = 20          # of 68 with FAN confidence >= VISIBLE_CONFIDENCE
VISIBLE_CONFIDENCE = 0.2
MAX_RMS_FRACTION = 0.04          # rigid-template RMS above 4% of the crop side (real frontal faces: 1-2.3%,
                                 # jaw silhouette and expression): the landmarks are not a face like the template


@dataclass
class PoseFit:
    cam2world: np.ndarray   # [4,4], radius-normalised
    label: np.ndarray       # [25] float32
    rms_px: float           # reprojection RMS of the unnormalised fit
    distance: float         # camera-to-world-origin distance before normalisation
    n_points: int = 5       # landmarks used
    method: str = "pnp"     # 'pnp' (template depth) or 'depth-procrustes' (the face's measured depth)
    pnp_rms_px: float = -1.0  # RMS of the best rigid template fit: how well landmarks and template agree

    def quality(self, crop_size: int, visible: int | None = None) -> dict:
        """Per-image pose quality for report.json / dataset.json provenance: `reliable` is False with
        the reasons in `flags` when the camera should not be trusted like an official one."""
        yaw, pitch, roll = (float(np.degrees(a)) for a in yaw_pitch_roll(self.label))
        visible = self.n_points if visible is None else int(visible)
        flags = []
        if abs(yaw) > MAX_RELIABLE_YAW_DEG:
            flags.append(f"profile: |yaw| {abs(yaw):.0f} deg > {MAX_RELIABLE_YAW_DEG:.0f}")
        if self.n_points < 68:
            flags.append(f"only {self.n_points} landmarks (no 68-point model)")
        elif visible < MIN_VISIBLE_POINTS:
            flags.append(f"few visible points: {visible} < {MIN_VISIBLE_POINTS}")
        agree = self.pnp_rms_px if self.pnp_rms_px >= 0 else self.rms_px
        if agree > MAX_RMS_FRACTION * crop_size:
            flags.append(f"landmarks fit the template badly: RMS {agree:.1f} px > {MAX_RMS_FRACTION * crop_size:.1f}")
        return {"template": TEMPLATE_ID[self.n_points], "fit": self.method, "n_points": self.n_points, "visible_points": visible,
                "reprojection_rms_px": round(self.rms_px, 3), "template_fit_rms_px": round(agree, 3), "yaw_pitch_roll_deg": [yaw, pitch, roll],
                "reliable": not flags, "flags": flags}


def rotation_from_depth(obj: np.ndarray, cloud: np.ndarray) -> np.ndarray:
    """[3,3] world->camera rotation of the similarity (Umeyama/Kabsch) that best maps the template's
    world points onto the face's own 3D points in camera axes (x right, y down, z away, one unit)."""
    a, b = obj - obj.mean(0), cloud - cloud.mean(0)
    u, _, vt = np.linalg.svd(b.T @ a)
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    return u @ d @ vt


def _rms(obj, r_w2c, tvec, pts, k) -> float:
    q = (obj @ r_w2c.T + tvec) @ k.T
    return float(np.sqrt(((q[:, :2] / q[:, 2:3] - pts) ** 2).sum(1).mean()))


def _translation_for(r_w2c: np.ndarray, obj: np.ndarray, pts: np.ndarray, k: np.ndarray, t0: np.ndarray) -> np.ndarray:
    """Camera translation that best reprojects the template onto the landmarks with the rotation fixed."""
    from scipy.optimize import least_squares
    xc = obj @ r_w2c.T

    def resid(t):
        q = (xc + t) @ k.T
        return (q[:, :2] / q[:, 2:3] - pts).ravel()
    return least_squares(resid, t0, method="lm").x


def fit_camera(points_2d: np.ndarray, crop_size: int, mode: str = "orig", depth: np.ndarray | None = None) -> PoseFit:
    """Camera of an EG3D crop from 5 (EG3D order) or 68 (iBUG) landmarks.

    Without `depth`: rigid PnP of the world template. With `depth` ([68] per-landmark depth in crop
    pixels, larger = farther, any offset; e.g. FaceMesh z): the rotation is the 3D similarity fit of
    the template to the face's own (x, y, depth) points, so the face's nose and jaw depth are measured
    instead of assumed (the template's depth profile otherwise turns into pitch: a flatter or deeper
    face than the template reads as a camera above or below), and the translation is the perspective
    reprojection fit with that rotation.
    The world->camera fit is inverted to cam2world, so the template renders at the landmarks; then
    the camera is moved to radius 2.7: mode 'orig' scales its position (EG3D fix_pose_orig),
    mode 'lookat' slides it along its optical axis until it looks exactly at the pivot.
    """
    pts = np.asarray(points_2d, dtype=np.float64).reshape(-1, 2)
    obj = template_points(pts.shape[0])
    k = pixel_intrinsics(crop_size)
    # SQPnP: global optimum from >= 3 points; ITERATIVE (LM) then polishes it.
    ok, rvec, tvec = cv2.solvePnP(obj, pts, k, None, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        raise RuntimeError("solvePnP (SQPNP) failed")
    ok, rvec, tvec = cv2.solvePnP(obj, pts, k, None, rvec, tvec, useExtrinsicGuess=True,
                                  flags=cv2.SOLVEPNP_ITERATIVE)
    r_w2c, tvec = cv2.Rodrigues(rvec)[0], tvec.reshape(3)
    pnp_rms = _rms(obj, r_w2c, tvec, pts, k)
    method = "pnp"
    if depth is not None:
        z = np.asarray(depth, dtype=np.float64).reshape(-1)
        if z.shape[0] != pts.shape[0]:
            raise ValueError(f"depth has {z.shape[0]} values for {pts.shape[0]} landmarks")
        # undo the perspective of x, y: a point dz farther than the mean is drawn smaller by
        # 1 + dz / Z0, and dz / Z0 = (z - mean z) / f_px when z is in pixels at the face's scale
        ratio = 1.0 + (z - z.mean()) / k[0, 0]
        cloud = np.concatenate([(pts - k[:2, 2]) * ratio[:, None], z[:, None]], 1)
        r_w2c = rotation_from_depth(obj, cloud)
        tvec = _translation_for(r_w2c, obj, pts, k, tvec)
        method = "depth-procrustes"
    rms = _rms(obj, r_w2c, tvec, pts, k)
    if ((obj @ r_w2c.T + tvec)[:, 2] <= 0).any():
        raise RuntimeError("pose fit put the face behind the camera; landmarks are inconsistent")
    rot, c = r_w2c.T, -r_w2c.T @ tvec
    dist = float(np.linalg.norm(c))
    if mode == "orig":
        c = c * (RADIUS / dist)
    elif mode == "lookat":
        f = rot[:, 2]
        pf = float(PIVOT @ f)
        lam = pf + np.sqrt(pf * pf - PIVOT @ PIVOT + RADIUS ** 2)
        c = PIVOT - lam * f
    else:
        raise ValueError(f"unknown mode {mode!r}")
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = rot, c
    return PoseFit(m, make_label(m), rms, dist, len(pts), method, pnp_rms)


def camera_elevation(label) -> float:
    """Elevation (radians, > 0 above) of the camera seen from the pivot (0, 0, 0.2)."""
    c = np.asarray(label, dtype=np.float64).reshape(-1)[:16].reshape(4, 4)[:3, 3] - PIVOT
    return float(np.arctan2(c[1], np.hypot(c[0], c[2])))


def rotation_error(label_a, label_b) -> float:
    """Angle (radians) of R_a^T R_b for the cam2world rotations of two labels."""
    ra = np.asarray(label_a, dtype=np.float64).reshape(-1)[:16].reshape(4, 4)[:3, :3]
    rb = np.asarray(label_b, dtype=np.float64).reshape(-1)[:16].reshape(4, 4)[:3, :3]
    return float(np.arccos(np.clip((np.trace(ra.T @ rb) - 1.0) / 2.0, -1.0, 1.0)))


def compare_labels(official: dict, ours: dict) -> dict:
    """Per-image and summary agreement of estimated labels with official ones ({name: label}):
    rotation error and pitch difference (ours - official elevation about the pivot; > 0: ours higher), deg."""
    rows = {}
    for name, lab in ours.items():
        if name in official:
            rows[name] = {"rotation_error_deg": float(np.degrees(rotation_error(official[name], lab))),
                          "pitch_diff_deg": float(np.degrees(camera_elevation(lab) - camera_elevation(official[name]))),
                          "yaw_diff_deg": float(np.degrees(yaw_pitch_roll(lab)[0] - yaw_pitch_roll(official[name])[0]))}
    if not rows:
        raise ValueError("no image has both an official and an estimated label")
    err = np.array([r["rotation_error_deg"] for r in rows.values()])
    pd = np.array([r["pitch_diff_deg"] for r in rows.values()])
    return {"n": len(rows), "median_rotation_error_deg": float(np.median(err)),
            "max_rotation_error_deg": float(err.max()), "mean_pitch_diff_deg": float(pd.mean()),
            "sd_pitch_diff_deg": float(pd.std()), "images": rows}


def label_from_landmarks(points_2d: np.ndarray, crop_size: int, mode: str = "orig") -> np.ndarray:
    """[25] float32 EG3D label from landmarks (pixel-centre coords) in a crop_size EG3D crop."""
    return fit_camera(points_2d, crop_size, mode).label
