"""Robust reading of user photos -> uint8 RGB HxWx3, with a specific reason when it cannot.

Reasons: not_found, not_an_image, unsupported_format (an image format PIL/OpenCV cannot decode,
e.g. HEIC), corrupt, truncated, too_small, too_large, unsupported_mode.
Handled conversions: EXIF orientation, CMYK, 16-bit, palette/alpha (composited on white), grayscale.
Sizes are checked from the header before any pixel is decoded (decompression-bomb safe); PIL's own
bomb guard (MAX_IMAGE_PIXELS, a global we do not touch) is mapped to too_large as well.
"""
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
_MAGIC = ((b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpeg"), (b"GIF8", "gif"), (b"BM", "bmp"),
          (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"))


class ImageError(Exception):
    def __init__(self, reason: str, message: str, path: str | os.PathLike | None = None):
        super().__init__(f"{reason}: {message}" + (f" ({path})" if path is not None else ""))
        self.reason, self.message, self.path = reason, message, path


def _sniff(head: bytes) -> str | None:
    """Image format from the first bytes, or None."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"avif", b"heim", b"hevc"):
        return "heif"
    return None


def _composite_white(rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    return np.round(rgba[..., :3] * a + 255.0 * (1.0 - a)).astype(np.uint8)


def _to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale (PNG/TIFF): 0..65535 -> 0..255. Mode I from 16-bit files holds the same range.
        x = np.asarray(im).astype(np.float64)
        if x.min() < 0 or x.max() > 65535:
            raise ImageError("unsupported_mode", "32-bit integer image with values outside 0..65535")
        x = np.round(x / 257.0).astype(np.uint8)
        return np.repeat(x[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info) \
            or (mode in ("L", "RGB") and "transparency" in im.info):
        return _composite_white(np.asarray(im.convert("RGBA")))
    if mode in ("RGB", "L", "1", "P", "CMYK", "YCbCr", "RGBX", "LAB", "HSV"):
        try:
            return np.asarray(im.convert("RGB"))
        except ValueError as e:
            raise ImageError("unsupported_mode", f"PIL cannot convert {mode!r} to RGB: {e}") from None
    raise ImageError("unsupported_mode", f"PIL mode {mode!r} has no unambiguous RGB conversion")


def _read_cv2(path: Path) -> np.ndarray | None:
    """OpenCV fallback for files PIL cannot decode (e.g. some 16-bit RGB TIFFs)."""
    x = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if x is None:
        return None
    if x.dtype == np.uint16:
        x = np.round(x / 257.0).astype(np.uint8)
    elif x.dtype != np.uint8:
        raise ImageError("unsupported_mode", f"OpenCV decoded dtype {x.dtype}", path)
    if x.ndim == 2:
        return np.repeat(x[..., None], 3, axis=2)
    if x.shape[2] == 4:
        return _composite_white(cv2.cvtColor(x, cv2.COLOR_BGRA2RGBA))
    return cv2.cvtColor(x, cv2.COLOR_BGR2RGB)


def _check_size(w: int, h: int, min_side: int, max_pixels: int, path) -> None:
    if w * h > max_pixels:
        raise ImageError("too_large", f"{w}x{h} = {w * h / 1e6:.1f} MP exceeds {max_pixels / 1e6:.1f} MP", path)
    if min(w, h) < min_side:
        raise ImageError("too_small", f"{w}x{h}: shorter side below {min_side} px", path)


def read_image(path: str | os.PathLike, min_side: int = 64, max_pixels: int = 50_000_000) -> np.ndarray:
    """Read a photo as uint8 RGB [H, W, 3] (EXIF orientation applied) or raise ImageError."""
    path = Path(path)
    if not path.is_file():
        raise ImageError("not_found", "no such file", path)
    with open(path, "rb") as f:
        head = f.read(16)
    kind = _sniff(head)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the size ourselves
            im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ImageError("too_large", str(e), path) from None
    except UnidentifiedImageError:
        if kind is None:
            raise ImageError("not_an_image", "not a recognised image file", path) from None
        if kind == "heif":
            raise ImageError("unsupported_format", "HEIF/AVIF needs a PIL plugin (pillow-heif)", path) from None
        try:
            x = _read_cv2(path)
        except cv2.error:
            x = None
        if x is None:
            raise ImageError("corrupt", f"{kind} signature but undecodable header", path) from None
        _check_size(x.shape[1], x.shape[0], min_side, max_pixels, path)
        return x
    except OSError as e:
        raise ImageError("corrupt", str(e), path) from None
    with im:
        _check_size(im.width, im.height, min_side, max_pixels, path)  # header only, nothing decoded yet
        try:
            im.load()
        except OSError as e:
            reason = "truncated" if "truncated" in str(e).lower() else "corrupt"
            raise ImageError(reason, str(e), path) from None
        except (SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
            raise ImageError("corrupt", f"{type(e).__name__}: {e}", path) from None
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # malformed EXIF must not lose the photo; keep stored orientation
            pass
        try:
            x = _to_rgb(im)
        except ImageError as e:
            raise ImageError(e.reason, e.message, path) from None
    if x.shape[2] != 3 or x.dtype != np.uint8:
        raise ImageError("unsupported_mode", f"conversion gave {x.dtype} {x.shape}", path)
    return np.ascontiguousarray(x)


def _expand(paths_or_dirs: Iterable[str | os.PathLike] | str | os.PathLike) -> Iterator[Path]:
    if isinstance(paths_or_dirs, (str, os.PathLike)):
        paths_or_dirs = [paths_or_dirs]
    for p in map(Path, paths_or_dirs):
        if p.is_dir():
            yield from sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            yield p


def iter_images(paths_or_dirs, min_side: int = 64, max_pixels: int = 50_000_000
                ) -> Iterator[tuple[Path, np.ndarray | ImageError]]:
    """Yield (path, image or ImageError) for files and for image files in directories (sorted)."""
    for p in _expand(paths_or_dirs):
        try:
            yield p, read_image(p, min_side, max_pixels)
        except ImageError as e:
            yield p, e


def write_png_atomic(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write uint8 HxW, HxWx3 or HxWx4 as PNG via a temp file in the same folder + os.replace,
    so readers never see a half-written file."""
    path = Path(path)
    x = np.asarray(image)
    if x.dtype != np.uint8 or x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected uint8 HxW[x1|3|4], got {x.dtype} {x.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(x[..., 0] if x.ndim == 3 and x.shape[2] == 1 else x).save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
