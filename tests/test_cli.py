"""The `goae` command end to end, offline: help texts, invert on the packaged real photos (all outputs),
the bad-input matrix (a specific reason per file, the rest still processed, exit status), edit, sample,
convert-eg3d.

The detector and the stand-in models are built once per module and handed to the command by patching
its two builders (MTCNN construction and the embedded generator's w_avg estimate dominate otherwise).
"""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from goae import app, cli
from goae.data import photos as photos_mod

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def detector():
    from goae.data.landmarks import MTCNNDetector
    return MTCNNDetector("cpu")


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """cli.load_models exactly as the command calls it, from a folder without params.yaml or models."""
    cwd = os.getcwd()
    d = tmp_path_factory.mktemp("cwd")
    os.chdir(d)
    try:
        return app.load_models(d / "no_models", torch.device("cpu"), None, "params.yaml")
    finally:
        os.chdir(cwd)


@pytest.fixture
def goae(monkeypatch, tmp_path, detector, stand_in):
    """Run `goae ARGS` in-process from a bare cwd; returns the exit status."""
    monkeypatch.setattr(photos_mod, "build_detector", lambda name, device, fan_weights=None: detector)
    monkeypatch.setattr(app, "load_models", lambda *a, **k: stand_in)
    monkeypatch.chdir(tmp_path)
    return lambda *args: cli.main([str(a) for a in args] + (["--device", "cpu"] if args[0] in
                                                             ("invert", "edit", "sample") else []))


@pytest.fixture(scope="module")
def real_photos(tmp_path_factory):
    import matplotlib.cbook
    import skimage.data
    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage.data.astronaut()).save(d / "astronaut.png")
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        (d / "grace_hopper.jpg").write_bytes(f.read())
    return d


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# -------------------------------------------------------------------------------------------- help

@pytest.mark.parametrize("sub, flags", [
    (None, ["invert", "edit", "pose", "convert-eg3d", "convert-goae", "sample", "sync-exps", "Exit status"]),
    ("invert", ["--out", "--views", "--video", "--video-frames", "--mesh", "--mesh-res", "--models", "--goae",
                "--detector", "--device", "report.json", "Exit status", "untrained"]),
    ("edit", ["--direction", "--alpha", "--views", "--out", "--models", "Eq. 9"]),
    ("convert-eg3d", ["pkl", "out"]),
    ("convert-goae", ["--encoder", "--afa"]),
    ("sample", ["--out", "--n", "--psi", "--models"]),
    ("sync-exps", ["root"]),
])
def test_help(sub, flags, capsys):
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(([sub] if sub else []) + ["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for f in flags:
        assert f in text, f


def test_module_entry_point_bad_usage():
    r = subprocess.run([sys.executable, "-m", "goae.cli", "invert"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert r.returncode == 2 and "--out" in r.stderr   # bad usage


# ------------------------------------------------------------------------------------------ models

def test_stand_in_models_say_so(stand_in):
    assert stand_in.stand_in
    assert "embedded" in stand_in.provenance["generator"]
    assert stand_in.provenance["encoder"].startswith("untrained")
    assert stand_in.provenance["afa"].startswith("untrained")


# ------------------------------------------------------------------------------ invert: real photos

def test_invert_real_photos_all_outputs(goae, real_photos, tmp_path):
    out = tmp_path / "out"
    rc = goae("invert", real_photos, "--out", out, "--views", 3, "--video", "--video-frames", 4,
              "--mesh", "--mesh-res", 32)
    assert rc == 0
    rep = _report(out)
    s = rep["summary"]
    assert s["ok"] == 2 and s["failed"] == 0 and s["stand_in_weights"] is True
    assert "embedded" in s["weights"]["generator"] and s["weights"]["encoder"].startswith("untrained")
    assert "stand-in" in s["note"]
    from safetensors.torch import load_file
    for key, stem in (("astronaut.png", "astronaut"), ("grace_hopper.jpg", "grace_hopper")):
        r = rep["files"][key]
        assert r["status"] == "ok" and r["faces_found"] >= 1 and r["score"] > 0.9
        d = out / stem
        for f in r["outputs"]:
            assert (d / f).is_file() and (d / f).stat().st_size > 0, f
        crop, rec, depth = _png(d / "crop.png"), _png(d / "reconstruction.png"), _png(d / "depth.png")
        assert crop.shape == rec.shape == (128, 128, 3) and crop.std() > 20   # a real photo crop, not blank
        assert depth.shape[0] == depth.shape[1] and depth.max() > depth.min()
        views = [_png(d / f"view_{i:02d}.png") for i in range(3)]
        assert all(v.shape == (128, 128, 3) for v in views)
        assert np.abs(views[0].astype(int) - views[2].astype(int)).mean() > 1   # yaw −30° vs +30° differ
        lab = json.loads((d / "camera.json").read_text())["label"]
        assert len(lab) == 25 and np.isfinite(lab).all()
        t = load_file(str(d / "latents.safetensors"))
        assert t["w_plus"].shape == (14, 512) and t["feat_star"].shape[-2:] == (32, 32)
        assert torch.isfinite(t["w_plus"]).all() and torch.isfinite(t["feat_star"]).all()
        video = [f for f in r["outputs"] if f.startswith("orbit.")]
        assert len(video) == 1
        import imageio.v2 as imageio
        frames = imageio.mimread(d / video[0])
        assert len(frames) == 4 and frames[0].shape[:2] == (128, 128)
        # PLY: parse the header, then the binary vertex/face blocks must have exactly the declared size
        raw = (d / "mesh.ply").read_bytes()
        head, body = raw.split(b"end_header\n", 1)
        nv = int(head.split(b"element vertex ")[1].split(b"\n")[0])
        nf = int(head.split(b"element face ")[1].split(b"\n")[0])
        assert nv > 0 and nf > 0 and nv == r["mesh"]["vertices"] and len(body) == 12 * nv + 13 * nf
        v = np.frombuffer(body[:12 * nv], "<f4").reshape(nv, 3)
        assert np.abs(v).max() <= 0.5 + 1e-5     # inside EG3D's box (box_warp 1)
        idx = np.frombuffer(body[12 * nv:], dtype=[("n", "u1"), ("i", "<i4", (3,))])
        assert (idx["n"] == 3).all() and idx["i"].min() >= 0 and idx["i"].max() < nv


# ---------------------------------------------------------------------------- invert: bad inputs

def _bad_inputs(d: Path, ast: np.ndarray, hop: np.ndarray) -> dict:
    """Build the matrix; returns {file name: expected reason, or 'ok' for inputs that must be converted}."""
    png = io.BytesIO()
    Image.fromarray(ast).save(png, "PNG")
    jpg = io.BytesIO()
    Image.fromarray(hop).save(jpg, "JPEG", quality=90)
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + np.random.default_rng(0).bytes(5000))
    (d / "truncated.png").write_bytes(png.getvalue()[:len(png.getvalue()) // 2])
    (d / "truncated.jpg").write_bytes(jpg.getvalue()[:len(jpg.getvalue()) // 2])
    Image.fromarray(ast).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    gray = np.asarray(Image.fromarray(ast).convert("L"))
    Image.fromarray(gray).save(d / "gray.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(d / "gray16.png")        # mode I;16
    rgba = np.dstack([ast, np.full(ast.shape[:2], 255, np.uint8)])
    rgba[:40, :40, 3] = 0
    Image.fromarray(rgba).save(d / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6   # Orientation 6: stored rotated, must be turned 90° clockwise to view
    Image.fromarray(np.ascontiguousarray(np.rot90(hop, 1))).save(d / "exif_rot.jpg", exif=exif, quality=95)
    Image.fromarray(ast[:16, :16]).save(d / "tiny.png")
    Image.new("1", (12000, 12000)).save(d / "huge.png")   # 144 MP in a 17 kB file: refused from the header
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(d / "blank.png")
    canvas = np.full((400, 600, 3), 255, np.uint8)   # big astronaut left, small Grace Hopper right
    canvas[:, :400] = np.asarray(Image.fromarray(ast).resize((400, 400)))
    canvas[100:300, 400:] = np.asarray(Image.fromarray(hop).resize((200, 200)))
    Image.fromarray(canvas).save(d / "two_faces.png")
    (d / "notes.txt").write_text("not a photo")
    return {"corrupt.jpg": "corrupt", "truncated.png": "truncated", "truncated.jpg": "truncated",
            "tiny.png": "too_small", "huge.png": "too_large", "blank.png": "no_face", "notes.txt": "not_an_image",
            "cmyk.jpg": "ok", "gray.png": "ok", "gray16.png": "ok", "rgba.png": "ok", "exif_rot.jpg": "ok",
            "two_faces.png": "ok"}


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory, real_photos):
    d = tmp_path_factory.mktemp("bad")
    ast = _png(real_photos / "astronaut.png")
    hop = _png(real_photos / "grace_hopper.jpg")
    return d, _bad_inputs(d, ast, hop)


def test_invert_bad_input_matrix(goae, bad_dir, real_photos, tmp_path, capsys):
    d, expected = bad_dir
    out = tmp_path / "out"
    rc = goae("invert", d, real_photos / "astronaut.png", real_photos / "grace_hopper.jpg", "--out", out)
    assert rc == 1   # some inputs failed
    rep = _report(out)
    files = rep["files"]
    assert set(files) == set(expected) | {"astronaut.png", "grace_hopper.jpg"}
    for name, want in expected.items():
        r = files[name]
        if want == "ok":
            assert r["status"] == "ok", (name, r)
            assert (out / Path(r["output"]).stem / "reconstruction.png").is_file(), name
        else:
            assert r["status"] != "ok" and r["reason"] == want, (name, r)
            assert r["detail"]
    assert rep["summary"]["ok"] == 8 and rep["summary"]["failed"] == 7
    printed = capsys.readouterr().out
    assert "huge.png: too_large" in printed and "notes.txt: not_an_image" in printed
    # conversions really happened: same face as the plain photo, wherever the format put the pixels
    box = {k: np.array(v["box"]) for k, v in files.items() if v["status"] == "ok"}
    for conv in ("gray.png", "gray16.png", "rgba.png", "cmyk.jpg"):
        assert np.abs(box[conv] - box["astronaut.png"]).max() < 6, conv
    np.testing.assert_allclose(_png(out / "gray16" / "crop.png"), _png(out / "gray" / "crop.png"), atol=1)
    assert np.abs(box["exif_rot.jpg"] - box["grace_hopper.jpg"]).max() < 6   # upright after EXIF
    roll = {k: files[k]["yaw_pitch_roll_deg"][2] for k in ("exif_rot.jpg", "grace_hopper.jpg")}
    assert abs(roll["exif_rot.jpg"] - roll["grace_hopper.jpg"]) < 3
    # two faces: the larger (astronaut, left 400 px, scaled 400/512) is chosen
    assert files["two_faces.png"]["faces_found"] >= 2
    np.testing.assert_allclose(box["two_faces.png"], box["astronaut.png"] * 400 / 512, atol=6)


def test_invert_all_bad_exit_2(goae, bad_dir, tmp_path):
    d, expected = bad_dir
    bad = [d / n for n, w in expected.items() if w != "ok"] + [tmp_path / "missing.jpg"]
    out = tmp_path / "out"
    assert goae("invert", *bad, "--out", out) == 2
    files = _report(out)["files"]
    assert files["missing.jpg"]["reason"] == "not_found"
    assert all(r["status"] != "ok" for r in files.values()) and len(files) == len(bad)


def test_pose_writes_dataset_json_with_provenance(goae, bad_dir, real_photos, tmp_path, capsys):
    """`goae pose`: crops + EG3D dataset.json (labels + per-image provenance) + report.json, no inversion;
    every broken file named with its reason, exit 1 when some failed."""
    d, expected = bad_dir
    out = tmp_path / "poses" / "cams.json"
    assert goae("pose", real_photos, d / "blank.png", d / "notes.txt", "--out", out, "--size", "256") == 1
    data = json.loads(out.read_text())
    names = {n for n, _ in data["labels"]}
    assert names == {"astronaut.png", "grace_hopper.png"} and set(data["provenance"]) == names
    assert all(len(lab) == 25 and lab[16] == pytest.approx(4.2647) for _, lab in data["labels"])
    prov = data["provenance"]["astronaut.png"]
    assert prov["camera"] == "estimated" and prov["landmark_model"] == "mtcnn5" and prov["n_points"] == 5
    assert not prov["reliable"] and prov["template"] and prov["fit"] == "pnp"   # 5 points: flagged
    assert all(_png(out.parent / n).shape == (256, 256, 3) for n in names)
    rep = _report(out.parent)
    assert rep["files"]["blank.png"]["reason"] == "no_face" and rep["summary"]["failed"] == 2
    assert rep["summary"]["images_per_s"] > 0
    printed = capsys.readouterr().out
    assert "notes.txt: not_an_image" in printed and not (out.parent / "astronaut").exists()


def test_invert_name_clash_and_rerun(goae, real_photos, tmp_path):
    """Same file name in two folders, and a.png beside a.jpg: every input keeps its own outcome and crop;
    a second run into an output folder inside the input folder does not invert its own earlier crops."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    src = (real_photos / "astronaut.png").read_bytes()
    (a / "face.png").write_bytes(src)
    (b / "face.png").write_bytes(src)
    Image.open(real_photos / "grace_hopper.jpg").save(a / "face.jpg")
    (a / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")   # hidden files in folders are not inputs
    out = a / "out"
    assert goae("invert", a, b, "--out", out) == 0
    files = _report(out)["files"]
    assert len(files) == 3 and all(r["status"] == "ok" for r in files.values())
    assert len({r["output"] for r in files.values()}) == 3
    assert goae("invert", a, "--out", out) == 0
    assert len(_report(out)["files"]) == 2


# ------------------------------------------------------------------------------------ edit, sample

def test_edit_multi_view(goae, real_photos, tmp_path):
    g = torch.Generator().manual_seed(0)
    direction = tmp_path / "dir.npy"
    np.save(direction, (0.5 * torch.randn(1, 14, 512, generator=g)).numpy())
    out = tmp_path / "edit"
    rc = goae("edit", real_photos / "grace_hopper.jpg", "--direction", direction, "--alpha", -3, 0, 3,
              "--views", 2, "--out", out)
    assert rc == 0
    imgs = {(a, v): _png(out / f"alpha{a:+.2f}_view{v:02d}.png") for a in (-3.0, 0.0, 3.0) for v in (0, 1)}
    assert all(x.shape == (128, 128, 3) for x in imgs.values())
    diff = lambda p, q: np.abs(imgs[p].astype(int) - imgs[q].astype(int)).mean()  # noqa: E731
    assert diff((3.0, 0), (0.0, 0)) > 1 and diff((-3.0, 0), (3.0, 0)) > 1 and diff((0.0, 0), (0.0, 1)) > 1
    rep = _report(out)
    assert rep["alphas"] == [-3.0, 0.0, 3.0] and rep["stand_in_weights"] is True


def test_edit_rejects_no_face_and_bad_direction(goae, bad_dir, real_photos, tmp_path, capsys):
    d, _ = bad_dir
    direction = tmp_path / "dir.npy"
    np.save(direction, np.zeros((1, 14, 512), np.float32))
    assert goae("edit", d / "blank.png", "--direction", direction, "--out", tmp_path / "o1") == 2
    assert "no_face" in capsys.readouterr().err
    np.save(direction, np.zeros((3, 7), np.float32))
    assert goae("edit", real_photos / "astronaut.png", "--direction", direction, "--out", tmp_path / "o2") == 2
    assert "direction shape" in capsys.readouterr().err


def test_sample(goae, tmp_path):
    out = tmp_path / "s"
    assert goae("sample", "--out", out, "--n", 2) == 0
    views = [[_png(out / f"sample{i:02d}_view{j}.png").astype(int) for j in range(3)] for i in range(2)]
    assert all(v.shape == (128, 128, 3) for vs in views for v in vs)
    # the random world saturates for some identities; at least one must change with the camera
    assert max(np.abs(vs[0] - vs[2]).mean() for vs in views) > 1


# ---------------------------------------------------------------------------------- convert-eg3d

def test_convert_eg3d(goae, tmp_path, capsys):
    try:
        from test_eg3d_checkpoint import _dumps, _generator, _snapshot
    except ImportError:
        pytest.skip("tests/test_eg3d_checkpoint.py's pickle builder is not importable")
    from goae.eg3d.checkpoint import load_checkpoint
    G_ema = _generator(2)
    pkl = tmp_path / "tiny-eg3d.pkl"
    pkl.write_bytes(_dumps(_snapshot(G_ema)))
    assert goae("convert-eg3d", pkl, tmp_path / "conv" / "g") == 0
    tensors, cfg = load_checkpoint(tmp_path / "conv" / "g")
    expected = G_ema.state_dict()
    assert set(tensors) == set(expected) and all(torch.equal(tensors[k], v) for k, v in expected.items())
    assert cfg["provenance"]["source"] == pkl.name
    assert '"class_name": "TriPlaneGenerator"' in capsys.readouterr().out
    # a pickle that would run code: refused with a message and exit 2, nothing written
    (tmp_path / "evil.pkl").write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    assert goae("convert-eg3d", tmp_path / "evil.pkl", tmp_path / "conv" / "e") == 2
    assert "goae convert-eg3d:" in capsys.readouterr().err
    assert not (tmp_path / "conv" / "e.safetensors").exists()
