"""goae.eg3d.camera against the official LookAtPoseSampler / FOV_to_intrinsics goldens."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from goae.eg3d import camera as C

ATOL = 1e-6


@pytest.fixture
def cams(eg3d_fixture):
    return json.loads((eg3d_fixture / "eg3d_cameras.json").read_text())


def test_lookat_pose_matches_official(cams):
    for cam in cams["cameras"]:
        got = C.lookat_pose(cam["yaw"], cam["pitch"], (0, 0, 0.2), 2.7)
        torch.testing.assert_close(got[0], torch.tensor(cam["cam2world"]), atol=ATOL, rtol=0)
        torch.testing.assert_close(got.reshape(-1), torch.tensor(cam["cam2world_flat16"]), atol=ATOL, rtol=0)
    # batched call gives the same rows
    yaw = torch.tensor([c["yaw"] for c in cams["cameras"]])
    pitch = torch.tensor([c["pitch"] for c in cams["cameras"]])
    torch.testing.assert_close(C.lookat_pose(yaw, pitch), torch.tensor([c["cam2world"] for c in cams["cameras"]]),
                               atol=ATOL, rtol=0)


def test_other_official_poses(cams):
    doc = C.lookat_pose(math.pi / 2, math.pi / 2, (0, 0, 0), 1.0)
    torch.testing.assert_close(doc[0], torch.tensor(cams["doc_example_lookat_origin_radius1"]), atol=ATOL, rtol=0)
    gs = C.lookat_pose(3.14 / 2, 3.14 / 2, (0, 0, 0.2), 2.7)  # gen_samples.py's first pose
    torch.testing.assert_close(gs[0], torch.tensor(cams["gen_samples_initial_pose_3.14_over_2"]), atol=ATOL, rtol=0)


def test_origin_on_sphere_around_world_origin():
    pose = C.lookat_pose(math.pi / 2 + 0.5, math.pi / 2 - 0.3, (0, 0, 0.2), 2.7)[0]
    assert abs(pose[:3, 3].norm().item() - 2.7) < 1e-6  # official quirk: not |origin - lookat|
    assert abs((pose[:3, 3] - torch.tensor([0, 0, 0.2])).norm().item() - 2.7) > 1e-3
    fwd = torch.tensor([0, 0, 0.2]) - pose[:3, 3]
    torch.testing.assert_close(pose[:3, 2], fwd / fwd.norm(), atol=ATOL, rtol=0)  # z axis looks at the pivot
    torch.testing.assert_close(pose[:3, :3] @ pose[:3, :3].T, torch.eye(3), atol=ATOL, rtol=0)


def test_fov_to_intrinsics_quirks(cams):
    fov = cams["FOV_to_intrinsics"]
    torch.testing.assert_close(C.fov_to_intrinsics(18.837), torch.tensor(fov["18.837"]), atol=ATOL, rtol=0)
    torch.testing.assert_close(C.fov_to_intrinsics(18), torch.tensor(fov["18"]), atol=ATOL, rtol=0)
    torch.testing.assert_close(C.intrinsics(), torch.tensor(cams["literal_intrinsics_used_in_fixtures"]), atol=0, rtol=0)
    assert abs(math.degrees(2 * math.atan(0.5 / C.FFHQ_FOCAL)) - 13.37) < 5e-3  # the true FOV of 4.2647
    assert abs(C.fov_to_intrinsics(18.837)[0, 0].item() - C.FFHQ_FOCAL) > 1e-3  # 18.837 deg != 4.2647


def test_yaw_pitch_camera_reproduces_fixture_labels(eg3d_fixture, cams):
    c = load_file(str(eg3d_fixture / "eg3d_tiny_io.safetensors"))["input.c"]
    got = torch.cat([C.yaw_pitch_camera(0.0, 0.0), C.yaw_pitch_camera(0.4, 0.0)])
    torch.testing.assert_close(got, c, atol=ATOL, rtol=0)
    batched = C.yaw_pitch_camera(torch.tensor([0.4, -0.4, -0.25]), torch.tensor([-0.2, -0.2, 0.3]))
    want = torch.tensor([cam["cam2world_flat16"] for cam in cams["cameras"][2:]])
    torch.testing.assert_close(batched[:, :16], want, atol=ATOL, rtol=0)


def test_label_roundtrip():
    pose = C.lookat_pose(torch.tensor([1.2, 1.9]), torch.tensor([1.5, 1.6]))
    K = C.intrinsics(4.0, 0.5)
    c = C.make_label(pose, K)
    assert c.shape == (2, 25)
    torch.testing.assert_close(c[0, :16], pose[0].reshape(-1), atol=0, rtol=0)  # row-major
    torch.testing.assert_close(c[1, 16:], K.reshape(-1), atol=0, rtol=0)
    p2, K2 = C.split_label(c)
    assert torch.equal(p2, pose) and torch.equal(K2, K.expand(2, 3, 3))


def test_flip_yaw(cams):
    c = C.yaw_pitch_camera(torch.tensor([0.3, -0.1]), torch.tensor([0.1, -0.2]))
    f = C.flip_yaw(c)
    assert torch.equal(C.flip_yaw(f), c)  # involution
    r = torch.rand(2, 25) + 1  # generic label (look-at poses have entry (1,0) = 0)
    assert ((C.flip_yaw(r) - r) != 0).any(0).nonzero().flatten().tolist() == [1, 2, 3, 4, 8]
    assert torch.equal(C.flip_yaw(r)[:, [1, 2, 3, 4, 8]], -r[:, [1, 2, 3, 4, 8]])
    # flipping mirrors the pose about x = 0: yaw -> -yaw
    torch.testing.assert_close(f, C.yaw_pitch_camera(torch.tensor([-0.3, 0.1]), torch.tensor([0.1, -0.2])),
                               atol=ATOL, rtol=0)
    a, b = (torch.tensor(cams["cameras"][i]["cam2world_flat16"]) for i in (2, 3))  # yaw +-0.4, same pitch
    torch.testing.assert_close(C.flip_yaw(a[None])[0], b, atol=ATOL, rtol=0)


def test_canonical_camera():
    c = C.canonical_camera(3)
    assert c.shape == (3, 25)
    want = torch.tensor([1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 2.7, 0, 0, 0, 1,
                         4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1], dtype=torch.float32)
    assert torch.equal(c[1], want)
    torch.testing.assert_close(c[:1], C.yaw_pitch_camera(0.0, 0.0), atol=ATOL, rtol=0)
    lookat = C.make_label(C.lookat_pose(math.pi / 2, math.pi / 2, (0, 0, 0.2), 2.7), C.intrinsics())
    torch.testing.assert_close(c[:1], lookat, atol=ATOL, rtol=0)


def test_no_global_rng_draws():
    state = torch.random.get_rng_state()
    C.yaw_pitch_camera(0.2, 0.1)
    C.lookat_pose(1.0, 1.2)
    assert torch.equal(state, torch.random.get_rng_state())
