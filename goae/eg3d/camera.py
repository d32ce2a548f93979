"""EG3D cameras: look-at poses, normalised intrinsics, 25-value labels, x-flip.

Conventions (official `docs/camera_conventions.md`): OpenCV cam2world (camera x right, y down,
z forward), world y up, the frontal camera on +z looking at -z; intrinsics normalised by the
image size. A label is 25 floats: the 4x4 cam2world row-major, then the 3x3 K row-major.

Everything is deterministic. The official `LookAtPoseSampler.sample` draws `torch.randn` twice
even with zero stddev (advancing the global RNG); `lookat_pose` computes the same pose without it.
Arithmetic follows the official float32 operation order, so poses match it to ~1e-7.
"""
import math

import torch

FFHQ_FOCAL = 4.2647  # = 2985.29/700, the FFHQ label focal; true full FOV 2*atan(0.5/4.2647) = 13.37 deg
AVG_CAM_RADIUS = 2.7
AVG_CAM_PIVOT = (0.0, 0.0, 0.2)
FLIP_YAW_INDICES = (1, 2, 3, 4, 8)  # cam2world entries (0,1), (0,2), (0,3), (1,0), (2,0)


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def create_cam2world_matrix(forward: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """[B,3] forward (any length) and camera origin -> [B,4,4] cam2world; columns right, up', fwd."""
    forward = _normalize(forward)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=forward.dtype, device=forward.device).expand_as(forward)
    right = -_normalize(torch.cross(up, forward, dim=-1))
    up = _normalize(torch.cross(forward, right, dim=-1))
    m = torch.eye(4, dtype=forward.dtype, device=forward.device).repeat(forward.shape[0], 1, 1)
    m[:, :3, :3] = torch.stack((right, up, forward), dim=-1)
    m[:, :3, 3] = origin  # official T @ R with T = [I, t] is exactly this
    return m


def lookat_pose(horizontal, vertical, lookat=AVG_CAM_PIVOT, radius: float = AVG_CAM_RADIUS,
                device=None) -> torch.Tensor:
    """LookAtPoseSampler.sample with zero stddev, without RNG draws -> [B,4,4].

    horizontal/vertical are the official angles (pi/2, pi/2 = frontal), scalars or [B] tensors.
    Quirk kept: the camera sits on a sphere of `radius` around the world origin, not around
    `lookat`, so its distance to `lookat` is not `radius`.
    """
    h = torch.as_tensor(horizontal, dtype=torch.float32, device=device).reshape(-1, 1)
    v = torch.as_tensor(vertical, dtype=torch.float32, device=device).reshape(-1, 1)
    h, v = torch.broadcast_tensors(h, v)
    v = torch.clamp(v, 1e-5, math.pi - 1e-5) / math.pi
    phi = torch.arccos(1 - 2 * v)
    origin = torch.cat([radius * torch.sin(phi) * torch.cos(math.pi - h),
                        radius * torch.cos(phi),
                        radius * torch.sin(phi) * torch.sin(math.pi - h)], dim=1)
    target = torch.as_tensor(lookat, dtype=torch.float32, device=h.device).reshape(-1, 3)
    return create_cam2world_matrix(target - origin, origin)


def fov_to_intrinsics(fov_degrees: float, device=None) -> torch.Tensor:
    """Official FOV_to_intrinsics -> [3,3]. Quirk kept: 3.14159 and 1.414 instead of pi and sqrt 2,
    so 18.837 deg gives f = 4.263391 (not 4.2647, and not the 13.37 deg that 4.2647 really is);
    gen_samples.py's int-typed --fov-deg turns its 18.837 default into 18 -> f = 4.465175."""
    f = float(1 / (math.tan(fov_degrees * 3.14159 / 360) * 1.414))
    return intrinsics(f, device=device)


def intrinsics(focal: float = FFHQ_FOCAL, center: float = 0.5, device=None) -> torch.Tensor:
    """Normalised pinhole K [3,3] (fx = fy = focal, cx = cy = center, no skew)."""
    return torch.tensor([[focal, 0, center], [0, focal, center], [0, 0, 1]], dtype=torch.float32, device=device)


def make_label(cam2world: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """[B,4,4] cam2world and [B,3,3] or [3,3] K -> [B,25] label."""
    K = K.to(cam2world).expand(cam2world.shape[0], 3, 3)
    return torch.cat([cam2world.reshape(-1, 16), K.reshape(-1, 9)], dim=1)


def split_label(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B,25] label -> (cam2world [B,4,4], K [B,3,3])."""
    return c[:, :16].reshape(-1, 4, 4), c[:, 16:25].reshape(-1, 3, 3)


def flip_yaw(label: torch.Tensor) -> torch.Tensor:
    """Mirror a pose about the x = 0 plane (official preprocess_face_cameras.flip_yaw) on labels
    [..., >=16]: negates flat indices 1, 2, 3, 4, 8. Returns a new tensor; an involution."""
    sign = torch.ones(label.shape[-1], dtype=label.dtype, device=label.device)
    sign[list(FLIP_YAW_INDICES)] = -1
    return label * sign


def canonical_camera(batch_size: int = 1, device=None) -> torch.Tensor:
    """GOAE's c_front [B,25]: cam2world rows [1,0,0,0],[0,-1,0,0],[0,0,-1,2.7],[0,0,0,1] and the
    4.2647 intrinsics. Equals lookat_pose(pi/2, pi/2, (0,0,z), 2.7) up to float32 round-off."""
    m = torch.tensor([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, AVG_CAM_RADIUS], [0, 0, 0, 1]],
                     dtype=torch.float32, device=device)
    return make_label(m.expand(batch_size, 4, 4), intrinsics(device=device))


def yaw_pitch_camera(yaw, pitch, radius: float = AVG_CAM_RADIUS, pivot=AVG_CAM_PIVOT,
                     focal: float = FFHQ_FOCAL, device=None) -> torch.Tensor:
    """[B,25] label for yaw/pitch offsets (radians) from frontal; yaw = pitch = 0 is frontal.

    Same pose as LookAtPoseSampler.sample(pi/2 + yaw, pi/2 + pitch, pivot, radius) (GOAE's novel
    views). Positive yaw moves the camera to +x, positive pitch moves it down (-y).
    """
    yaw = torch.as_tensor(yaw, dtype=torch.float32, device=device)
    pitch = torch.as_tensor(pitch, dtype=torch.float32, device=device)
    # Offsets are added in float64 then rounded, as the official caller passes python floats.
    h = (yaw.double() + math.pi / 2).float()
    v = (pitch.double() + math.pi / 2).float()
    pose = lookat_pose(h, v, pivot, radius, device=device)
    return make_label(pose, intrinsics(focal, device=device))
