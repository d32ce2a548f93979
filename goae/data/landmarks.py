"""Face detection + landmarks behind one interface.

`LandmarkDetector.detect(images) -> list[list[Face]]`, images uint8 RGB HxWx3. Points are in pixel
coordinates, 5 points in EG3D/MTCNN order: left eye, right eye (image left/right), nose tip,
mouth left, mouth right. Backends:
- MTCNNDetector: facenet-pytorch 2.6.0 MTCNN (weights inside the wheel, works offline). Same
  cascade parameters as the ipazc MTCNN in EG3D's batch_mtcnn.py (min face 20, thresholds
  0.6/0.7/0.7, scale factor 0.709).
- FANDetector: optional `face-alignment` package (68 points; downloads its weights on first use).
`select_face` keeps the largest box among faces with score >= 0.9 (EG3D keeps the largest face and
drops it when its confidence is <= 0.9; we filter first, so a small confident face still counts).
"""
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from goae.data.face_template import five_from_68


@dataclass
class Face:
    box: np.ndarray                     # [4] float32 x0, y0, x1, y1
    score: float
    points5: np.ndarray                 # [5, 2] float32
    points68: np.ndarray | None = None  # [68, 2] float32 (iBUG order) when the backend has them

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0))


class FaceError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


def select_face(faces: list[Face], threshold: float = 0.9, min_size: float = 64.0) -> Face:
    """Largest face (box area) with score >= threshold; FaceError no_face / face_too_small."""
    ok = [f for f in faces if f.score >= threshold]
    if not ok:
        raise FaceError("no_face", f"no face with score >= {threshold} ({len(faces)} below it)")
    best = max(ok, key=lambda f: f.area)
    side = float(min(best.box[2] - best.box[0], best.box[3] - best.box[1]))
    if side < min_size:
        raise FaceError("face_too_small", f"largest face box is {side:.0f} px, below {min_size:.0f} px")
    return best


def _as_rgb(img: np.ndarray) -> np.ndarray:
    x = np.asarray(img)
    if x.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {x.dtype}")
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=2)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"expected HxWx3 RGB images, got shape {x.shape}")
    return x


class LandmarkDetector(ABC):
    @abstractmethod
    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        """All faces of every image (any order)."""


class MTCNNDetector(LandmarkDetector):
    def __init__(self, device: str | torch.device, min_face_size: int = 20,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), factor: float = 0.709,
                 batch_size: int = 8):
        from facenet_pytorch import MTCNN  # imported lazily: heavy, and optional for most of goae
        self.mtcnn = MTCNN(min_face_size=min_face_size, thresholds=list(thresholds), factor=factor,
                           keep_all=True, post_process=False, device=torch.device(device))
        self.batch_size = batch_size

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        imgs = [_as_rgb(x) for x in images]
        out: list[list[Face]] = [[] for _ in imgs]
        groups: dict[tuple, list[int]] = {}
        for i, x in enumerate(imgs):  # facenet-pytorch batches only equal-size images
            groups.setdefault(x.shape, []).append(i)
        for idx in groups.values():
            for j in range(0, len(idx), self.batch_size):
                chunk = idx[j:j + self.batch_size]
                with torch.inference_mode():
                    boxes, probs, points = self.mtcnn.detect(np.stack([imgs[i] for i in chunk]), landmarks=True)
                for i, b, p, lm in zip(chunk, boxes, probs, points):
                    if b is None:
                        continue
                    # with numpy 2 facenet-pytorch returns object-dtype arrays
                    b = np.asarray(b).astype(np.float32).reshape(-1, 4)
                    p = np.asarray(p).astype(np.float32).reshape(-1)
                    lm = np.asarray(lm).astype(np.float32).reshape(-1, 5, 2)
                    out[i] = [Face(b[k], float(p[k]), lm[k]) for k in range(len(b))]
        return out


FAN_WEIGHTS = ("https://www.adrianbulat.com/downloads/python-fan/2DFAN4-cd938726ad.zip",
               "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth")


class FANDetector(LandmarkDetector):
    """68-point FAN (face-alignment, BSD-3) with its S3FD detector. Not installed by default."""

    def __init__(self, device: str | torch.device, face_detector: str = "sfd"):
        try:
            import face_alignment
        except ImportError:
            raise RuntimeError(
                "FANDetector needs the optional 'face-alignment' package: pip install face-alignment --no-deps "
                "numba (--no-deps keeps pip from pulling a second OpenCV; its other requirements are goae "
                "dependencies). Or use build_detector('mtcnn', device), which works offline.") from None
        lt = getattr(face_alignment.LandmarksType, "TWO_D", None) or face_alignment.LandmarksType._2D
        try:
            self.fa = face_alignment.FaceAlignment(lt, device=str(torch.device(device)), face_detector=face_detector)
        except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
            where = f"{torch.hub.get_dir()}/checkpoints/"
            raise RuntimeError(
                f"face-alignment could not load its weights ({type(e).__name__}: {e}). It downloads "
                f"{' and '.join(FAN_WEIGHTS)}; offline, copy those two files into {where}") from e

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        out = []
        for x in map(_as_rgb, images):
            lms, scores, boxes = self.fa.get_landmarks_from_image(x, return_bboxes=True, return_landmark_score=True)
            faces = []
            for lm, b in zip(lms or [], boxes or []):
                lm = np.asarray(lm, dtype=np.float32)[:, :2]
                b = np.asarray(b, dtype=np.float32)
                faces.append(Face(b[:4], float(b[4]) if len(b) > 4 else 1.0,
                                  five_from_68(lm).astype(np.float32), lm))
            out.append(faces)
        return out


def build_detector(name: str, device: str | torch.device) -> LandmarkDetector:
    """'mtcnn' (offline) or 'fan' (needs face-alignment + its downloaded weights)."""
    builders = {"mtcnn": MTCNNDetector, "fan": FANDetector}
    if name not in builders:
        raise ValueError(f"unknown detector {name!r}; choose from {sorted(builders)}")
    return builders[name](device)
