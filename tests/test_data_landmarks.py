import cv2
import numpy as np
import pytest

from goae.data.landmarks import Face, FaceError, build_detector, select_face


def _face(box, score=0.99):
    b = np.array(box, np.float32)
    cx, cy, w = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0]
    pts = np.array([[cx - w / 5, cy - w / 8], [cx + w / 5, cy - w / 8], [cx, cy], [cx - w / 6, cy + w / 5],
                    [cx + w / 6, cy + w / 5]], np.float32)
    return Face(b, score, pts)


def test_select_face_rules():
    small, big, unsure = _face([0, 0, 80, 90]), _face([100, 100, 300, 330]), _face([0, 0, 500, 500], 0.5)
    assert select_face([small, unsure, big]) is big                 # largest confident face
    assert select_face([small, unsure]) is small
    with pytest.raises(FaceError) as e:
        select_face([unsure])
    assert e.value.reason == "no_face"
    with pytest.raises(FaceError) as e:
        select_face([])
    assert e.value.reason == "no_face"
    with pytest.raises(FaceError) as e:
        select_face([_face([0, 0, 40, 50])])
    assert e.value.reason == "face_too_small"
    assert select_face([_face([0, 0, 40, 50])], min_size=32).box[2] == 40


def test_unknown_detector_message():
    # FAN without weights and the offline fallbacks: tests/test_data_pose_real.py
    with pytest.raises(ValueError, match="auto"):
        build_detector("dlib", "cpu")


@pytest.fixture(scope="module")
def mtcnn():
    pytest.importorskip("facenet_pytorch")
    return build_detector("mtcnn", "cpu")


@pytest.fixture(scope="module")
def photos():
    skimage_data = pytest.importorskip("skimage.data")
    cbook = pytest.importorskip("matplotlib.cbook")
    from PIL import Image
    hopper = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    return {"astronaut": skimage_data.astronaut(), "hopper": hopper}


def _check_face(f: Face):
    x0, y0, x1, y1 = f.box
    p = f.points5
    assert f.score >= 0.9 and p.shape == (5, 2) and p.dtype == np.float32
    assert ((p[:, 0] > x0) & (p[:, 0] < x1) & (p[:, 1] > y0) & (p[:, 1] < y1)).all()
    assert p[0, 0] < p[2, 0] < p[1, 0] and p[3, 0] < p[4, 0]          # image left -> right
    assert max(p[0, 1], p[1, 1]) < p[2, 1] < min(p[3, 1], p[4, 1])   # eyes, nose, mouth top -> down


def test_mtcnn_real_photos(mtcnn, photos):
    faces = mtcnn.detect([photos["astronaut"], photos["hopper"]])
    for name, fs in zip(["astronaut", "hopper"], faces):
        assert len([f for f in fs if f.score >= 0.9]) == 1, name
        _check_face(select_face(fs))
    # astronaut: face box ~[181, 62, 268, 172] (offline-assets.md §3.1)
    np.testing.assert_allclose(select_face(faces[0]).box, [181, 62, 268, 172], atol=6)


def test_mtcnn_blank_has_no_face(mtcnn):
    faces = mtcnn.detect([np.full((256, 256, 3), 127, np.uint8)])[0]
    with pytest.raises(FaceError) as e:
        select_face(faces)
    assert e.value.reason == "no_face"


def test_mtcnn_largest_of_two_faces(mtcnn, photos):
    small = cv2.resize(photos["astronaut"], (256, 256), interpolation=cv2.INTER_AREA)
    canvas = np.full((600, 900, 3), 255, np.uint8)
    canvas[:, :512] = photos["hopper"]
    canvas[100:356, 620:876] = small
    faces = mtcnn.detect([canvas])[0]
    assert len([f for f in faces if f.score >= 0.9]) == 2
    best = select_face(faces)
    _check_face(best)
    assert best.box[2] < 512            # the larger face is Grace Hopper's, on the left
    # batched detection of equal-size images matches single-image detection
    both = mtcnn.detect([canvas, canvas[:, ::-1].copy()])
    np.testing.assert_allclose(select_face(both[0]).box, best.box, atol=1e-3)
    flipped = select_face(both[1])
    assert flipped.box[0] > 900 - 512 and abs((899 - flipped.box[2]) - best.box[0]) < 8
