"""A real MEAD layout (one folder per identity, MEAD camera names) through `prepare` into the novel-view
protocol: meta.json from the camera names or from the fitted cameras, incomplete identities left out."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from goae.config import Params
from goae.data.mead import build_mead_meta, camera_name
from goae.data.prepare import prepare_all
from goae.eg3d import camera as cam

SIZE = 64
VIEWS = {"front": 0.0, "left_30": 30.0, "left_60": 60.0, "right_30": -30.0, "right_60": -60.0}


def _params(**prep):
    p = Params()
    return dataclasses.replace(p, prepare=dataclasses.replace(p.prepare, output_size=SIZE, **prep))


def _write(root: Path, entries: list[tuple[str, float]]) -> None:
    """Labelled split (EG3D crops + dataset.json) at `root`: (relative name, camera yaw in degrees)."""
    rng = np.random.default_rng(0)
    labels = cam.yaw_pitch_camera(np.radians([y for _, y in entries]), np.zeros(len(entries))).tolist()
    for name, _ in entries:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / name)
    (root / "dataset.json").write_text(json.dumps({"labels": [[n, lab] for (n, _), lab in zip(entries, labels)]}))


def test_camera_names_and_frame_keys():
    assert camera_name("M003/front/angry/level_1/001.png") == ("front", "M003/angry/level_1/001")
    assert camera_name("M003/left_60/angry/level_1/001.png") == ("left_60", "M003/angry/level_1/001")
    assert camera_name("W009/001_right_30.jpg") == ("right_30", "W009/001")
    assert camera_name("W009/top/001.jpg")[0] == "top"
    assert camera_name("W009/frontal_face/001.jpg")[0] is None     # a name containing "front" is not a camera


def test_real_layout_by_camera_names_through_prepare_into_the_protocol(tmp_path):
    from goae.metrics.protocols import load_split
    raw = tmp_path / "raw"
    entries = [(f"{i}/{v}/neutral/001.png", y) for i in ("M003", "W011") for v, y in VIEWS.items()]
    entries += [("M003/top/neutral/001.png", 0.0)]                                  # pitch view: ignored
    entries += [(f"M005/{v}/neutral/001.png", y) for v, y in VIEWS.items() if v != "left_60"]  # incomplete
    _write(raw / "mead", entries)
    res = prepare_all(_params(), raw, tmp_path / "prep", "cpu")
    assert res["mead"]["mead_identities"] == 2
    meta = json.loads((tmp_path / "prep" / "mead" / "meta.json").read_text())
    assert meta["yaw_source"] == "names" and "left_*" in meta["yaw_convention"]
    assert meta["yaws_deg"] == [-60.0, -30.0, 0.0, 30.0, 60.0]
    assert sorted(meta["identities"]) == ["M003/neutral/001", "W011/neutral/001"]
    assert meta["identities"]["M003/neutral/001"] == [f"M003/{v}/neutral/001.png" for v in
                                                       ("right_60", "right_30", "front", "left_30", "left_60")]
    assert meta["incomplete"] == {"M005/neutral/001": [60.0]}
    assert "pitch camera" in meta["ignored"]["M003/top/neutral/001.png"]
    # the protocol reads it: views in yaw order, labels of the right files (nested names keep their folders)
    split = load_split(tmp_path / "prep" / "mead", "mead", n=5, resolution=SIZE)
    assert split.identity_names == ["M003/neutral/001", "W011/neutral/001"] and split.yaws == meta["yaws_deg"]
    assert len(split.identities) == 2 and all(len(v) == 5 for v in split.identities)
    yaw_of = np.degrees(np.arctan2(split.labels[:, 3].numpy(), split.labels[:, 11].numpy()))
    assert np.allclose(yaw_of[split.identities[0]], meta["yaws_deg"], atol=1e-3)


def test_without_camera_names_the_fitted_camera_gives_the_yaw(tmp_path):
    raw = tmp_path / "raw"
    entries = [(f"M007/img_{k}.png", y + off) for k, (y, off) in enumerate(
        [(-60, 3.0), (-30, -2.0), (0, 1.0), (30, 4.0), (60, -5.0)])]
    entries += [("M007/odd.png", 80.0)]                # 20° from the nearest view (60): not snapped
    _write(raw / "mead", entries)
    prepare_all(_params(), raw, tmp_path / "prep", "cpu")
    meta = json.loads((tmp_path / "prep" / "mead" / "meta.json").read_text())
    assert meta["yaw_source"] == "camera"
    assert meta["identities"] == {"M007": [f"M007/img_{k}.png" for k in range(5)]}
    assert "more than 15" in meta["ignored"]["M007/odd.png"]


def test_no_complete_identity_is_an_error_naming_what_is_missing():
    with pytest.raises(ValueError, match="incomplete"):
        build_mead_meta({"A/front/1.png": "a.png", "B/left_30/1.png": "b.png"}, {}, "names")
