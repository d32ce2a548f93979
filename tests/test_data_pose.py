import json

import numpy as np
import pytest

from goae.data import face_template as ft
from goae.data import pose as P

D = np.radians
CANONICAL = np.array([1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 2.7, 0, 0, 0, 1,
                      4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1], dtype=np.float64)
POSES = [(y, p, r) for y in (-30, -15, 0, 15, 30) for p in (-15, 0, 15) for r in (-10, 0, 10)]


@pytest.mark.parametrize("n", [5, 68])
def test_pose_recovered_from_projected_template(n):
    err = []
    for yaw, pitch, roll in POSES:
        lab = P.label_from_landmarks(P.project_template(D(yaw), D(pitch), D(roll), 512, n), 512)
        err.append(np.degrees(P.yaw_pitch_roll(lab)) - [yaw, pitch, roll])
    assert np.abs(err).max() < 1.0


def test_pose_with_landmark_noise():
    rng = np.random.default_rng(0)
    err = []
    for yaw, pitch, roll in POSES[::3]:
        pts = P.project_template(D(yaw), D(pitch), D(roll), 512, 68) + rng.normal(0, 0.5, (68, 2))
        err.append(np.degrees(P.yaw_pitch_roll(P.label_from_landmarks(pts, 512))) - [yaw, pitch, roll])
    assert np.abs(err).max() < 1.0


@pytest.mark.parametrize("n", [5, 68])
@pytest.mark.parametrize("mode", ["orig", "lookat"])
def test_frontal_label_is_canonical_camera(n, mode):
    lab = P.label_from_landmarks(P.project_template(0.0, 0.0, 0.0, 512, n), 512, mode=mode)
    assert lab.shape == (25,) and lab.dtype == np.float32
    np.testing.assert_allclose(lab, CANONICAL, atol=1e-3)


def test_lookat_mode_looks_at_pivot_on_sphere():
    pts = P.project_template(D(25), D(-10), D(5), 512) + [3.0, -2.0]  # off-centre face
    m = P.label_from_landmarks(pts, 512, mode="lookat")[:16].reshape(4, 4).astype(np.float64)
    c, fwd = m[:3, 3], m[:3, 2]
    assert abs(np.linalg.norm(c) - 2.7) < 1e-5
    to_pivot = (P.PIVOT - c) / np.linalg.norm(P.PIVOT - c)
    assert np.dot(to_pivot, fwd) > 1 - 1e-6
    m0 = P.label_from_landmarks(pts, 512, mode="orig")[:16].reshape(4, 4)
    assert abs(np.linalg.norm(m0[:3, 3]) - 2.7) < 1e-5


@pytest.mark.parametrize("n", [5, 68])
def test_mirrored_landmarks_flip_yaw(n):
    pts = P.project_template(D(20), D(5), D(3), 512, n)
    lab = P.label_from_landmarks(pts, 512)
    lab_m = P.label_from_landmarks(P.mirror_landmarks(pts, 512), 512)
    y, p, r = np.degrees(P.yaw_pitch_roll(lab_m))
    assert abs(y + 20) < 1e-3 and abs(p - 5) < 1e-3 and abs(r + 3) < 1e-3
    np.testing.assert_allclose(lab_m, P.flip_yaw(lab), atol=1e-4)


def test_flip_yaw_is_x_mirror_conjugation():
    lab = P.make_label(P.lookat_cam2world(0.3, -0.1, 0.05))
    s = np.diag([-1.0, 1, 1, 1])
    m = lab[:16].reshape(4, 4).astype(np.float64)
    np.testing.assert_allclose(P.flip_yaw(lab)[:16].reshape(4, 4), s @ m @ s, atol=1e-6)
    np.testing.assert_array_equal(P.flip_yaw(lab)[16:], lab[16:])
    changed = np.nonzero(P.flip_yaw(np.arange(1.0, 26.0)) != np.arange(1.0, 26.0))[0]
    assert changed.tolist() == [1, 2, 3, 4, 8]
    batch = np.stack([lab, lab])
    np.testing.assert_array_equal(P.flip_yaw(P.flip_yaw(batch)), batch)


def test_projection_frontal_symmetric_and_mirror_consistent():
    pts = P.project_template(0.0, 0.0, 0.0, 512)
    # symmetric template, camera on the symmetry plane: mirroring is a relabelling
    np.testing.assert_allclose(P.mirror_landmarks(pts, 512), pts, atol=1e-9)
    assert pts[0, 0] < 255.5 < pts[1, 0] and pts[0, 1] < pts[2, 1] < pts[3, 1]
    # eyes of a face 2.5 units away at f = 4.2647*512: inter-eye ~ 0.16 world units ~ 140 px
    assert 120 < pts[1, 0] - pts[0, 0] < 160


def _eg3d_sampler(h, v, lookat=(0, 0, 0.2), radius=2.7):
    """EG3D LookAtPoseSampler/create_cam2world_matrix written from the facts sheet (§2.9)."""
    v = np.clip(v, 1e-5, np.pi - 1e-5)
    phi = np.arccos(1 - 2 * v / np.pi)
    o = radius * np.array([np.sin(phi) * np.cos(np.pi - h), np.cos(phi), np.sin(phi) * np.sin(np.pi - h)])
    f = (np.array(lookat) - o) / np.linalg.norm(np.array(lookat) - o)
    right = -np.cross([0, 1, 0], f)
    right /= np.linalg.norm(right)
    up = np.cross(f, right)
    m = np.eye(4)
    m[:3, :3] = np.stack([right, up / np.linalg.norm(up), f], 1)
    m[:3, 3] = o
    return m


@pytest.mark.parametrize("yaw,pitch", [(0.0, 0.0), (0.4, 0.0), (-0.35, 0.2), (0.2, -0.25)])
def test_lookat_matches_eg3d_sampler(yaw, pitch):
    h, v = P.lookat_sampler_hv(yaw, pitch)
    np.testing.assert_allclose(P.lookat_cam2world(yaw, pitch), _eg3d_sampler(h, v), atol=1e-9)
    np.testing.assert_allclose(P.yaw_pitch_roll(P.make_label(_eg3d_sampler(h, v)))[:2], (yaw, pitch), atol=1e-5)


def test_lookat_matches_eg3d_golden_cameras(eg3d_fixture):
    cams = json.loads((eg3d_fixture / "eg3d_cameras.json").read_text())["cameras"]
    for cam in cams:
        yaw, pitch = cam["yaw"] - np.pi / 2, np.arcsin(2 * cam["pitch"] / np.pi - 1)
        np.testing.assert_allclose(P.lookat_cam2world(yaw, pitch), np.array(cam["cam2world"]), atol=2e-6)


def test_template_in_eg3d_head_range():
    w = ft.template68_world()
    assert -0.2 < w[:, 0].min() < -0.15 and 0.15 < w[:, 0].max() < 0.2
    nose = ft.template5_world()[2]
    assert 0.28 < nose[2] < 0.36 and abs(nose[0]) < 1e-9
    np.testing.assert_allclose(w[ft.FLIP68] * [-1, 1, 1], w, atol=1e-12)  # mirror symmetric
