"""Photos → EG3D crops + camera labels: read (robustly) → landmarks → EG3D crop → pose fit.

Used by the `prepare` stage for unlabelled folders, by `goae invert` and by `goae pose` (pose_photos:
crop + camera only). Every file gets an outcome (ok, or a specific reason); one bad file never stops
the others. Each estimated label carries its provenance (landmark model, depth model, template, fit,
reprojection error, reliability flags) in report.json and in dataset.json's extra `provenance` key.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from goae.data.crop import CropConfig, apply_affine, eg3d_crop
from goae.data.dataset import write_dataset_json, write_json_atomic
from goae.data.io import ImageError, read_image, write_png_atomic
from goae.data.landmarks import BoxLandmarker, FaceError, FaceMesh68, build_detector, select_face
from goae.data.pose import VISIBLE_CONFIDENCE, fit_camera, flip_yaw, yaw_pitch_roll


def build_depth_model(name: str):
    """'facemesh': mediapipe FaceMesh depth for the pose fit (None when mediapipe is missing: the fit
    falls back to PnP and says so); 'none': PnP with the template's depth."""
    if name == "none":
        return None
    if name != "facemesh":
        raise ValueError(f"unknown pose depth {name!r}; choose 'facemesh' or 'none'")
    try:
        return FaceMesh68()
    except RuntimeError:
        return None


def crop_and_pose(image: np.ndarray, detector, output_size: int, min_face_px: int, roll_align: bool,
                  depth_model=None):
    """One photo → (crop uint8 [S,S,3], label [25], info, landmarks in the crop); raises FaceError.

    The crop uses the 5 MTCNN points (EG3D's align_img input); the camera is fitted to the 68-point
    landmarks when the detector has them (pitch needs more than 5 points: nose tip vs. eyes/mouth alone
    leaves it to the template's nose), else to the 5 points. With a depth model (FaceMesh run on the
    crop) the rotation uses the face's own landmark depth (pose.fit_camera). `info["pose"]` is the
    provenance."""
    faces = detector.detect([image])[0]
    face = select_face(faces, threshold=0.9, min_size=min_face_px)
    res = eg3d_crop(image, face.points5, CropConfig(output_size=output_size, align_roll=roll_align))
    src = face.points68 if face.points68 is not None else face.points5
    pts = apply_affine(res.affine, src)  # landmarks in the crop, for the pose fit
    depth, depth_src = None, None
    if depth_model is not None and len(pts) == 68:
        got = depth_model.points(res.image)
        if got is not None:
            depth, depth_src = got[1], depth_model.model
    fit = fit_camera(pts, output_size, depth=depth)
    visible = None if face.confidence68 is None else int((face.confidence68 >= VISIBLE_CONFIDENCE).sum())
    info = {"score": float(face.score), "box": [float(v) for v in face.box], "faces_found": len(faces),
            "padded_fraction": float(res.padded_fraction), "pose_rms_px": float(fit.rms_px),
            "camera": "estimated", "pose": {"landmark_model": face.model, "depth_model": depth_src,
                                            **fit.quality(output_size, visible)},
            "landmarks_crop": pts.round(2).tolist()}
    return res.image, fit.label.astype(np.float32), info, pts


def collect_files(inputs, exclude: str | Path | None = None) -> list[Path]:
    """Files named, and every file under folders named (hidden ones and anything inside `exclude`,
    e.g. our own output folder, left out); non-images stay in so they get a reason."""
    ex = Path(exclude).resolve() if exclude is not None else None
    files: list[Path] = []
    for src in inputs:
        p = Path(src)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                            and (ex is None or ex not in f.resolve().parents))
        else:
            files.append(p)
    return files


def prepare_photos(files, dst: str | Path, *, detector: str = "auto", output_size: int = 512,
                   min_face_px: int = 32, flip: bool = False, roll_align: bool = False, device="cpu",
                   root: str | Path | None = None, det=None, progress: bool = True, fan_weights: str | None = None,
                   dataset_name: str = "dataset.json", pose_depth: str = "facemesh") -> dict:
    """Process every file; write `<stem>.png` crops + dataset.json (with per-image pose provenance)
    into dst. Returns {name: outcome}."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    report: dict[str, dict] = {}
    labels: list[tuple[str, list[float]]] = []
    provenance: dict[str, dict] = {}
    det = det or build_detector(detector, device, fan_weights)
    # depth is only used with 68 points: a 5-point detector needs no FaceMesh
    depth_model = build_depth_model(pose_depth) if isinstance(det, BoxLandmarker) else None
    for f in tqdm(list(files), desc=f"photos/{dst.name}", disable=not progress, unit="img"):
        f = Path(f)
        key = str(f.relative_to(root)) if root else f.name
        if key in report:  # same file name from two folders: keep both outcomes
            key = str(f)
        try:
            img = read_image(f)
            crop, label, info, pts = crop_and_pose(img, det, output_size, min_face_px, roll_align, depth_model)
        except ImageError as e:
            report[key] = {"status": "skipped", "reason": e.reason, "detail": str(e)}
            continue
        except FaceError as e:
            report[key] = {"status": "skipped", "reason": e.reason, "detail": e.message}
            continue
        except Exception as e:  # a failure we did not foresee still must not stop the others
            report[key] = {"status": "skipped", "reason": "error", "detail": f"{type(e).__name__}: {e}"}
            continue
        stem = Path(key).with_suffix('').as_posix().replace('/', '__')
        name, k = f"{stem}.png", 1
        while any(n == name for n, _ in labels):  # a.jpg and a.png must not share one crop
            name, k = f"{stem}_{k}.png", k + 1
        write_png_atomic(dst / name, crop)
        labels.append((name, label.tolist()))
        provenance[name] = {"camera": "estimated", **info["pose"]}
        ypr = [float(np.degrees(a)) for a in yaw_pitch_roll(label)]
        report[key] = {"status": "ok", "output": name, "yaw_pitch_roll_deg": ypr, **info}
        if flip:  # EG3D ships mirrored copies with flip_yaw labels
            mname = name.replace(".png", "_mirror.png")
            write_png_atomic(dst / mname, np.ascontiguousarray(crop[:, ::-1]))
            labels.append((mname, flip_yaw(label).tolist()))
            provenance[mname] = {**provenance[name], "mirror_of": name,
                                 "yaw_pitch_roll_deg": [float(np.degrees(a)) for a in yaw_pitch_roll(labels[-1][1])]}
    write_dataset_json(dst, labels, provenance, dataset_name)
    return report


def pose_photos(inputs, out_json: str | Path, *, detector: str = "auto", output_size: int = 512,
                min_face_px: int = 32, device="cpu", fan_weights: str | None = None, progress: bool = True,
                pose_depth: str = "facemesh") -> dict:
    """`goae pose`: crop + camera only (no inversion). Writes the crops beside `out_json` (an EG3D
    dataset.json with per-image provenance) and report.json; returns {"summary", "files"}."""
    import time
    out_json = Path(out_json)
    dst = out_json.parent
    files = collect_files(inputs, exclude=dst if dst.resolve() != Path.cwd().resolve() else None)
    if not files:
        raise FileNotFoundError("no input files")
    t0 = time.perf_counter()
    det = build_detector(detector, device, fan_weights)
    t1 = time.perf_counter()
    report = prepare_photos(files, dst, output_size=output_size, min_face_px=min_face_px, device=device,
                            det=det, progress=progress, dataset_name=out_json.name, pose_depth=pose_depth)
    dt = time.perf_counter() - t1
    ok = sum(r["status"] == "ok" for r in report.values())
    summary = {"ok": ok, "failed": len(report) - ok, "detector": type(det).__name__,
               "unreliable": sum(1 for r in report.values() if r["status"] == "ok" and not r["pose"]["reliable"]),
               "load_s": round(t1 - t0, 2), "images_per_s": round(len(files) / dt, 2) if dt > 0 else None}
    result = {"summary": summary, "files": report}
    write_json_atomic(dst / "report.json", result)
    return result
