"""Photos → EG3D crops + camera labels: read (robustly) → landmarks → EG3D crop → pose fit.

Used by the `prepare` stage for unlabelled folders and by `goae invert`. Every file gets an outcome
(ok, or a specific reason); one bad file never stops the others.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from goae.data.crop import CropConfig, apply_affine, eg3d_crop
from goae.data.dataset import write_dataset_json
from goae.data.io import ImageError, read_image, write_png_atomic
from goae.data.landmarks import FaceError, build_detector, select_face
from goae.data.pose import fit_camera, flip_yaw, yaw_pitch_roll


def crop_and_pose(image: np.ndarray, detector, output_size: int, min_face_px: int, roll_align: bool):
    """One photo → (crop uint8 [S,S,3], label [25], info); raises FaceError with a reason."""
    faces = detector.detect([image])[0]
    face = select_face(faces, threshold=0.9, min_size=min_face_px)
    res = eg3d_crop(image, face.points5, CropConfig(output_size=output_size, align_roll=roll_align))
    pts = apply_affine(res.affine, face.points5)  # landmarks in the crop, for the pose fit
    fit = fit_camera(pts, output_size)
    info = {"score": float(face.score), "box": [float(v) for v in face.box], "faces_found": len(faces),
            "padded_fraction": float(res.padded_fraction), "pose_rms_px": float(fit.rms_px),
            "landmarks_crop": pts.round(2).tolist()}
    return res.image, fit.label.astype(np.float32), info, pts


def prepare_photos(files, dst: str | Path, *, detector: str = "mtcnn", output_size: int = 512,
                   min_face_px: int = 32, flip: bool = False, roll_align: bool = False, device="cpu",
                   root: str | Path | None = None, det=None, progress: bool = True) -> dict:
    """Process every file; write `<stem>.png` crops + dataset.json into dst. Returns {name: outcome}."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    report: dict[str, dict] = {}
    labels: list[tuple[str, list[float]]] = []
    det = det or build_detector(detector, device)
    for f in tqdm(list(files), desc=f"photos/{dst.name}", disable=not progress, unit="img"):
        f = Path(f)
        key = str(f.relative_to(root)) if root else f.name
        if key in report:  # same file name from two folders: keep both outcomes
            key = str(f)
        try:
            img = read_image(f)
            crop, label, info, pts = crop_and_pose(img, det, output_size, min_face_px, roll_align)
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
        ypr = [float(np.degrees(a)) for a in yaw_pitch_roll(label)]
        report[key] = {"status": "ok", "output": name, "yaw_pitch_roll_deg": ypr, **info}
        if flip:  # EG3D ships mirrored copies with flip_yaw labels
            mname = name.replace(".png", "_mirror.png")
            write_png_atomic(dst / mname, np.ascontiguousarray(crop[:, ::-1]))
            labels.append((mname, flip_yaw(label).tolist()))
    write_dataset_json(dst, labels)
    return report
