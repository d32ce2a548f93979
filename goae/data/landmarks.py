"""Face detection + landmarks behind one interface.

`LandmarkDetector.detect(images) -> list[list[Face]]`, images uint8 RGB HxWx3. Points are in pixel
coordinates, 5 points in EG3D/MTCNN order: left eye, right eye (image left/right), nose tip,
mouth left, mouth right. Backends:
- MTCNNDetector: facenet-pytorch 2.6.0 MTCNN (weights inside the wheel, works offline). Same
  cascade parameters as the ipazc MTCNN in EG3D's batch_mtcnn.py (min face 20, thresholds
  0.6/0.7/0.7, scale factor 0.709).
- FANDetector: `face-alignment`'s 2DFAN-4 (68 points) on MTCNN boxes; its weights are a download, so
  they are loaded from a path / face-alignment's cache when present.
- Dlib68Detector: dlib's 68-point predictor shipped in `face_recognition_models` (offline).
`build_detector('auto')` takes FAN when its weights are there, else dlib 68, else MTCNN alone.
`select_face` keeps the largest box among faces with score >= 0.9 (EG3D keeps the largest face and
drops it when its confidence is <= 0.9; we filter first, so a small confident face still counts).
"""
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch



@dataclass
class Face:
    box: np.ndarray                     # [4] float32 x0, y0, x1, y1
    score: float
    points5: np.ndarray                 # [5, 2] float32
    points68: np.ndarray | None = None  # [68, 2] float32 (iBUG order) when the backend has them
    confidence68: np.ndarray | None = None  # [68] per-point confidence (FAN heat-map peaks), else None
    model: str = "mtcnn5"               # the landmark model that produced the points (provenance)

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


class BoxLandmarker(LandmarkDetector):
    """68-point landmarks on the faces MTCNN finds (EG3D's own detector gives boxes, scores and the
    5 points the crop uses); subclasses add `points68` (iBUG order) and `visible68` per face."""
    model = "?"

    def __init__(self, device: str | torch.device):
        self.boxes = MTCNNDetector(device)

    @abstractmethod
    def landmarks68(self, image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """[68, 2] points and [68] confidences (None when the model has none) for one face box."""

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        imgs = [_as_rgb(x) for x in images]
        out = self.boxes.detect(imgs)
        for img, faces in zip(imgs, out):
            for f in faces:
                if f.score < 0.9:  # never selected (select_face); spare the 68-point model
                    continue
                try:
                    f.points68, f.confidence68 = self.landmarks68(img, f.box)
                    f.model = self.model
                except FaceError:  # the 68-point model missed this face: it keeps MTCNN's 5 points
                    continue
        return out


def _package_file(package: str, *parts: str) -> str | None:
    """Path of a data file inside an installed package, without importing it (face_recognition_models'
    __init__ needs pkg_resources, gone with setuptools >= 81)."""
    import importlib.util
    import os
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], *parts)
    return path if os.path.isfile(path) else None


DLIB68_FILE = ("face_recognition_models", "models", "shape_predictor_68_face_landmarks.dat")


class Dlib68Detector(BoxLandmarker):
    """dlib's 68-point shape predictor (iBUG 300-W, the file FFHQ/pSp alignment uses) shipped in
    `face_recognition_models`: works offline. dlib's regression trees were trained on dlib HOG boxes, so
    the HOG box that overlaps the MTCNN face is used when HOG finds one; otherwise a HOG-like square is
    derived from the MTCNN box (HOG boxes are square, about the MTCNN width, shifted down ~8%)."""
    model = "dlib68"

    def __init__(self, device: str | torch.device, predictor: str | None = None):
        try:
            import dlib
        except ImportError:
            raise RuntimeError("Dlib68Detector needs dlib: pip install dlib-bin face_recognition_models") from None
        path = predictor or _package_file(*DLIB68_FILE)
        if path is None:
            raise RuntimeError("shape_predictor_68_face_landmarks.dat not found: pip install face_recognition_models")
        super().__init__(device)
        self._dlib = dlib
        self.predictor = dlib.shape_predictor(path)
        self.hog = dlib.get_frontal_face_detector()
        self._hog_cache: tuple[int, list] | None = None

    def _hog_boxes(self, image: np.ndarray) -> list:
        if self._hog_cache is None or self._hog_cache[0] != id(image):
            self._hog_cache = (id(image), list(self.hog(image, 0)))
        return self._hog_cache[1]

    def landmarks68(self, image, box):
        x0, y0, x1, y1 = (float(v) for v in box)
        best, best_iou = None, 0.3
        for r in self._hog_boxes(image):
            ix = max(0.0, min(x1, r.right()) - max(x0, r.left()))
            iy = max(0.0, min(y1, r.bottom()) - max(y0, r.top()))
            inter = ix * iy
            iou = inter / ((x1 - x0) * (y1 - y0) + r.width() * r.height() - inter)
            if iou > best_iou:
                best, best_iou = r, iou
        if best is None:
            side, cx, cy = x1 - x0, (x0 + x1) / 2, (y0 + y1) / 2 + 0.08 * (y1 - y0)
            best = self._dlib.rectangle(int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))
        sh = self.predictor(image, best)
        return np.array([[sh.part(i).x, sh.part(i).y] for i in range(68)], np.float32), None


# FaceMesh (468-vertex topology) vertex standing for each iBUG-68 landmark, in iBUG order: jaw 0-16,
# brows 17-26, nose 27-35, eyes 36-47, outer lip 48-59, inner lip 60-67. Chosen on the mesh topology
# (contour vertices of the jaw, brow upper edge, nose ridge/tip/base, eyelid and lip vertices); on the
# 512² real-face crops these sit 4-9 px (jaw: 8-13 px, where dlib follows the silhouette) from dlib's points.
FACEMESH_68 = np.array([
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
    78, 82, 13, 312, 308, 317, 14, 87])


class FaceMesh68:
    """mediapipe 0.10.14 FaceMesh (model inside the wheel, offline): 68 iBUG-equivalent points with
    their depth. FaceMesh's z is a per-vertex depth (larger = farther) in the same scale as x (image
    widths), so z * width is depth in pixels: the face's own 3D shape, used by the pose fit."""
    model = "mediapipe-facemesh"

    def __init__(self):
        try:
            import mediapipe as mp
        except ImportError:
            raise RuntimeError("FaceMesh68 needs mediapipe==0.10.14 (pip install --no-deps mediapipe==0.10.14 "
                               "absl-py attrs flatbuffers 'protobuf>=4.25.3,<5')") from None
        self.mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False)

    def points(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """([68, 2] pixel coords, [68] depth in pixels) of the most prominent face, or None."""
        img = np.ascontiguousarray(_as_rgb(image))
        res = self.mesh.process(img)
        if not res.multi_face_landmarks:
            return None
        h, w = img.shape[:2]
        lm = res.multi_face_landmarks[0].landmark
        xyz = np.array([[lm[i].x * w, lm[i].y * h, lm[i].z * w] for i in FACEMESH_68], np.float64)
        return xyz[:, :2].astype(np.float32), xyz[:, 2].astype(np.float32)


class MediaPipe68Detector(BoxLandmarker):
    """68 points from FaceMesh run on a square region around each MTCNN face (offline fallback when
    neither FAN weights nor dlib are available)."""
    model = "mediapipe68"

    def __init__(self, device: str | torch.device):
        self.mesh = FaceMesh68()
        super().__init__(device)

    def landmarks68(self, image, box):
        import cv2
        x0, y0, x1, y1 = (float(v) for v in box)
        side, cx, cy = 1.8 * max(x1 - x0, y1 - y0), (x0 + x1) / 2, (y0 + y1) / 2
        k = 256.0 / side  # FaceMesh works at 192-256 px; a fixed-size square keeps it in range
        aff = np.array([[k, 0, 128 - k * cx], [0, k, 128 - k * cy]])
        region = cv2.warpAffine(image, aff, (256, 256), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        got = self.mesh.points(region)
        if got is None:
            raise FaceError("no_landmarks", "FaceMesh found no face in the detected box")
        return ((got[0] - aff[:, 2]) / k).astype(np.float32), None


FAN_FILE = "2DFAN4-11f355bf06.pth.tar"   # face-alignment 1.5.0 models_urls['2DFAN-4'] (a plain state dict)
S3FD_FILE = "s3fd-619a316812.pth"        # its default box detector (not used: MTCNN gives the boxes)


def fan_weights_path(explicit: str | None = None) -> str | None:
    """The 2DFAN-4 weights: an explicit path, $GOAE_FAN_WEIGHTS, or face-alignment's own download cache
    (<torch hub dir>/checkpoints/2DFAN4-11f355bf06.pth.tar). None when none exists."""
    import os
    cands = [explicit, os.environ.get("GOAE_FAN_WEIGHTS"), os.path.join(torch.hub.get_dir(), "checkpoints", FAN_FILE)]
    for c in cands:
        if c and os.path.isfile(c):
            return c
    if explicit:
        raise FileNotFoundError(f"FAN weights not found: {explicit}")
    return None


class FANDetector(BoxLandmarker):
    """68-point FAN (face-alignment, BSD-3) run on MTCNN boxes, with face-alignment's own network,
    crop and heat-map decoding. Its weights are a download (no network here): pass a path, set
    $GOAE_FAN_WEIGHTS, or put the file in face-alignment's cache. The number of hourglass modules is
    read from the state dict, so any FAN size loads."""
    model = "fan2d"

    def __init__(self, device: str | torch.device, weights: str | None = None):
        try:
            from face_alignment.models import FAN
            from face_alignment import utils as fa_utils
        except ImportError:
            raise RuntimeError("FANDetector needs face-alignment: pip install --no-deps face-alignment numba "
                               "(--no-deps keeps a second OpenCV out)") from None
        path = fan_weights_path(weights)
        if path is None:
            raise RuntimeError(
                f"face-alignment weights not found. Download {FAN_FILE} (face-alignment's 2DFAN-4 URL) and pass "
                f"its path (prepare.fan_weights / --fan-weights / $GOAE_FAN_WEIGHTS) or copy it to "
                f"{torch.hub.get_dir()}/checkpoints/; or use detector 'dlib68' (offline)")
        sd = torch.load(path, map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd)
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        n_mod = len({k.split(".")[0] for k in sd if k.startswith("m") and k.split(".")[0][1:].isdigit()})
        if n_mod == 0:
            raise ValueError(f"{path}: not a FAN state dict (no hourglass modules m0, m1, ...)")
        super().__init__(device)
        self.device = torch.device(device)
        self.net = FAN(n_mod)
        self.net.load_state_dict(sd)
        self.net.to(self.device).eval()
        self.weights, self._u = path, fa_utils

    @torch.inference_mode()
    def landmarks68(self, image, box):
        u = self._u
        x0, y0, x1, y1 = (float(v) for v in box)
        # face-alignment's box -> (centre, scale) rule, written for its S3FD boxes
        center = np.array([(x0 + x1) / 2, (y0 + y1) / 2 - (y1 - y0) * u.CENTER_Y_OFFSET])
        scale = (x1 - x0 + y1 - y0) / u.REFERENCE_SCALE
        inp = torch.from_numpy(u.crop(image, center, scale).transpose(2, 0, 1).astype(np.float32) / 255.0)
        hm = self.net(inp[None].to(self.device))[-1].float().cpu().numpy()
        _, pts, scores = u.get_preds_fromhm(hm, center, scale)
        return np.asarray(pts, np.float32).reshape(68, 2), np.asarray(scores, np.float32).reshape(68)


DETECTORS = ("auto", "fan", "dlib68", "mediapipe68", "mtcnn")


def build_detector(name: str, device: str | torch.device, fan_weights: str | None = None) -> LandmarkDetector:
    """'fan' (face-alignment + its weights), 'dlib68' (offline, face_recognition_models), 'mediapipe68'
    (offline, FaceMesh), 'mtcnn' (5 points only) or 'auto': FAN when its weights are found, else dlib 68,
    else FaceMesh, else MTCNN. The chosen landmark model is each Face's `model`."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose from {list(DETECTORS)}")
    if name == "auto":
        if fan_weights_path(fan_weights) is not None:
            return FANDetector(device, fan_weights)
        for fallback in (Dlib68Detector, MediaPipe68Detector):
            try:
                return fallback(device)
            except RuntimeError:
                continue
        return MTCNNDetector(device)
    if name == "fan":
        return FANDetector(device, fan_weights)
    return {"dlib68": Dlib68Detector, "mediapipe68": MediaPipe68Detector, "mtcnn": MTCNNDetector}[name](device)
