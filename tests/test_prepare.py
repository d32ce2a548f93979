"""The `prepare` stage (goae.data.prepare): labelled splits pass through, photo splits go through
landmarks → EG3D crop → pose fit; every file gets ok or a reason and bad files never stop good ones."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from goae.config import Params
from goae.data import photos as photos_mod
from goae.data.dataset import read_dataset_json
from goae.data.prepare import prepare_all
from goae.eg3d import camera as cam

SIZE = 128


@pytest.fixture(scope="module")
def detector():
    from goae.data.landmarks import MTCNNDetector
    return MTCNNDetector("cpu")


@pytest.fixture
def shared_detector(monkeypatch, detector):
    monkeypatch.setattr(photos_mod, "build_detector", lambda name, device, fan_weights=None: detector)


@pytest.fixture(scope="module")
def params():
    p = Params()
    return dataclasses.replace(p, prepare=dataclasses.replace(p.prepare, output_size=SIZE))


def _labelled_split(d: Path, rng) -> list:
    """EG3D-format split: 3 good images (one not at the output size), depth maps, one corrupt file."""
    d.mkdir(parents=True)
    (d / "depth").mkdir()
    labels = cam.yaw_pitch_camera(np.radians([0.0, 20.0, -20.0, 5.0]), np.zeros(4)).tolist()
    names = ["img00000.png", "img00001.png", "img00002.png", "img00003.png"]
    for i, n in enumerate(names[:3]):
        s = SIZE if i else 96   # resized on the way through
        Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8)).save(d / n)
        np.save(d / "depth" / (Path(n).stem + ".npy"), rng.random((32, 32), dtype=np.float32))
    (d / names[3]).write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (d / "dataset.json").write_text(json.dumps({"labels": [[n, lab] for n, lab in zip(names, labels)]}))
    return list(zip(names, labels))


def _photo_split(d: Path) -> None:
    import matplotlib.cbook
    import skimage.data
    (d / "sub").mkdir(parents=True)
    Image.fromarray(skimage.data.astronaut()).save(d / "astronaut.png")
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        (d / "sub" / "grace_hopper.jpg").write_bytes(f.read())
    png = (d / "astronaut.png").read_bytes()
    (d / "broken.png").write_bytes(png[:len(png) // 3])
    (d / "readme.txt").write_text("these are photos")


def _check_label(lab) -> None:
    """A valid EG3D label: 25 finite floats, rotation orthonormal, camera ~2.7 from the origin, FFHQ focal."""
    lab = np.asarray(lab, dtype=np.float64)
    assert lab.shape == (25,) and np.isfinite(lab).all()
    m = lab[:16].reshape(4, 4)
    np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-4)
    np.testing.assert_allclose(m[3], [0, 0, 0, 1], atol=1e-6)
    assert abs(np.linalg.norm(m[:3, 3]) - 2.7) < 0.05
    np.testing.assert_allclose(lab[16:], [4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1], atol=1e-3)


def test_prepare_all_labelled_and_photo_splits(tmp_path, params, shared_detector):
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    rng = np.random.default_rng(0)
    given = _labelled_split(raw / "train", rng)
    _photo_split(raw / "wild")
    res = prepare_all(params, raw, out, "cpu", log=lambda *a: None)
    assert res == {"train": {"ok": 3, "skipped": 1}, "wild": {"ok": 2, "skipped": 2}}

    # labelled split: passthrough, resized, depth copied, the corrupt file reported
    rep = json.loads((out / "train" / "report.json").read_text())
    assert rep["summary"] == res["train"]
    assert {k: v["status"] for k, v in rep["files"].items()} == {
        "img00000.png": "ok", "img00001.png": "ok", "img00002.png": "ok", "img00003.png": "skipped"}
    assert rep["files"]["img00003.png"]["reason"] == "unreadable" and rep["files"]["img00003.png"]["detail"]
    labels = read_dataset_json(out / "train")
    assert labels == [(n, [float(np.float32(v)) for v in lab]) for n, lab in given[:3]]
    for n, lab in labels:
        _check_label(lab)
        with Image.open(out / "train" / n) as im:
            assert im.size == (SIZE, SIZE) and im.mode == "RGB"
        assert (out / "train" / "depth" / (Path(n).stem + ".npy")).is_file()
    with Image.open(raw / "train" / "img00001.png") as a, Image.open(out / "train" / "img00001.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))   # already at size: bit-exact

    # photo split: every good photo processed despite the bad ones; reasons are specific
    rep = json.loads((out / "wild" / "report.json").read_text())
    files = rep["files"]
    assert set(files) == {"astronaut.png", "sub/grace_hopper.jpg", "broken.png", "readme.txt"}
    assert files["broken.png"]["reason"] == "truncated" and files["readme.txt"]["reason"] == "not_an_image"
    for k in ("astronaut.png", "sub/grace_hopper.jpg"):
        assert files[k]["status"] == "ok" and files[k]["score"] > 0.9
    assert files["sub/grace_hopper.jpg"]["output"] == "sub__grace_hopper.png"
    labels = dict(read_dataset_json(out / "wild"))
    assert set(labels) == {"astronaut.png", "sub__grace_hopper.png"}
    for n, lab in labels.items():
        _check_label(lab)
        with Image.open(out / "wild" / n) as im:
            crop = np.asarray(im)
        assert crop.shape == (SIZE, SIZE, 3) and crop.std() > 20
    # the photos are near-frontal portraits
    for k in ("astronaut.png", "sub/grace_hopper.jpg"):
        yaw, pitch, roll = files[k]["yaw_pitch_roll_deg"]
        assert abs(yaw) < 15 and abs(roll) < 15, (k, files[k]["yaw_pitch_roll_deg"])
    # the EG3D crop puts the eyes where the FFHQ crops have them: level, symmetric about the centre
    lm = np.asarray(files["astronaut.png"]["landmarks_crop"])
    assert abs(lm[0, 1] - lm[1, 1]) < 0.08 * SIZE and abs((lm[0, 0] + lm[1, 0]) / 2 - SIZE / 2) < 0.08 * SIZE


def test_prepare_all_from_manifest(tmp_path, params, shared_detector):
    """User folders indexed by `ingest` (raw/manifest.json points at them) are prepared in place of raw/."""
    user = tmp_path / "my_photos"
    _photo_split(user)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "manifest.json").write_text(json.dumps({"wild": {"root": str(user), "files": []}}))
    (raw / "ignored").mkdir()   # with a manifest, folders under raw/ are not splits
    res = prepare_all(params, raw, tmp_path / "prepared", "cpu", log=lambda *a: None)
    assert res == {"wild": {"ok": 2, "skipped": 2}}
    assert not (tmp_path / "prepared" / "ignored").exists()


def test_prepare_all_bad_photos_only(tmp_path, params, shared_detector):
    """A split with no usable photo still gets its report and an empty (valid) dataset.json."""
    d = tmp_path / "raw" / "wild"
    d.mkdir(parents=True)
    Image.fromarray(np.full((128, 128, 3), 90, np.uint8)).save(d / "wall.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(d / "icon.png")
    res = prepare_all(params, tmp_path / "raw", tmp_path / "prepared", "cpu", log=lambda *a: None)
    assert res == {"wild": {"ok": 0, "skipped": 2}}
    rep = json.loads((tmp_path / "prepared" / "wild" / "report.json").read_text())["files"]
    assert rep["wall.png"]["reason"] == "no_face" and rep["icon.png"]["reason"] == "too_small"
    assert read_dataset_json(tmp_path / "prepared" / "wild") == []
