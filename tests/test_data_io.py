import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from goae.data.io import ImageError, iter_images, read_image, write_png_atomic


def _rgb(h=80, w=96, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _reason(path, **kw):
    with pytest.raises(ImageError) as e:
        read_image(path, **kw)
    return e.value.reason


def _png_header_only(path, w, h):
    """A valid 1-bit grayscale PNG of w x h written row by row (never allocates w*h)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    comp, row, parts = zlib.compressobj(9), b"\x00" * (1 + (w + 7) // 8), []
    for _ in range(h):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def test_plain_rgb_roundtrip(tmp_path):
    a = _rgb()
    Image.fromarray(a).save(tmp_path / "a.png")
    x = read_image(tmp_path / "a.png")
    assert x.dtype == np.uint8 and x.shape == (80, 96, 3)
    np.testing.assert_array_equal(x, a)


def test_missing_and_non_image(tmp_path):
    assert _reason(tmp_path / "nope.png") == "not_found"
    (tmp_path / "notes.jpg").write_text("this is not a picture\n" * 10)
    assert _reason(tmp_path / "notes.jpg") == "not_an_image"
    (tmp_path / "empty.png").write_bytes(b"")
    assert _reason(tmp_path / "empty.png") == "not_an_image"
    assert _reason(tmp_path) == "not_found"  # a directory is not a photo


def test_corrupt(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    b = bytearray((tmp_path / "a.png").read_bytes())
    b[100:300] = bytes(200)  # clobber the compressed stream
    (tmp_path / "broken.png").write_bytes(bytes(b))
    assert _reason(tmp_path / "broken.png") == "corrupt"
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    assert _reason(tmp_path / "garbage.png") == "corrupt"


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_truncated(tmp_path, ext):
    Image.fromarray(_rgb()).save(tmp_path / f"a.{ext}")
    b = (tmp_path / f"a.{ext}").read_bytes()
    (tmp_path / f"cut.{ext}").write_bytes(b[: len(b) // 2])
    assert _reason(tmp_path / f"cut.{ext}") == "truncated"


def test_cmyk_converted(tmp_path):
    a = _rgb()
    Image.fromarray(a).convert("CMYK").save(tmp_path / "c.tif")  # lossless; PIL's CMYK has K = 0
    assert Image.open(tmp_path / "c.tif").mode == "CMYK"
    np.testing.assert_array_equal(read_image(tmp_path / "c.tif"), a)
    Image.fromarray(a).convert("CMYK").save(tmp_path / "c.jpg", quality=98)
    assert np.abs(read_image(tmp_path / "c.jpg").astype(int) - a).mean() < 8


def test_16bit_converted(tmp_path):
    rng = np.random.default_rng(3)
    g16 = (rng.random((70, 90)) * 65535).astype(np.uint16)
    rgb16 = (rng.random((70, 90, 3)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    cv2.imwrite(str(tmp_path / "rgb48.png"), rgb16)  # BGR order on disk
    x = read_image(tmp_path / "g16.png")
    assert x.shape == (70, 90, 3) and (x[..., 0] == x[..., 2]).all()
    assert np.abs(x[..., 0].astype(int) - np.round(g16 / 257)).max() <= 1
    y = read_image(tmp_path / "rgb48.png")
    assert np.abs(y.astype(int) - np.round(rgb16[..., ::-1] / 257)).max() <= 1


def test_alpha_composited_on_white(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 255                        # pure red
    rgba[:, :16, 3], rgba[:, 16:32, 3], rgba[:, 32:, 3] = 0, 255, 128
    Image.fromarray(rgba).save(tmp_path / "a.png")
    x = read_image(tmp_path / "a.png").astype(int)
    assert (x[:, :16] == 255).all()                                 # transparent -> white
    assert (x[:, 16:32] == [255, 0, 0]).all()                       # opaque -> red
    assert (x[:, 32:, 0] == 255).all() and (np.abs(x[:, 32:, 1:] - 127) <= 1).all()
    la = Image.fromarray(np.stack([np.full((64, 64), 0, np.uint8), np.full((64, 64), 0, np.uint8)], -1), "LA")
    la.save(tmp_path / "la.png")
    assert (read_image(tmp_path / "la.png") == 255).all()
    p = Image.fromarray(np.zeros((64, 64), np.uint8), "P")
    p.putpalette([0, 0, 0] * 256)
    p.save(tmp_path / "p.png", transparency=0)
    assert (read_image(tmp_path / "p.png") == 255).all()


def test_grayscale_to_rgb(tmp_path):
    g = _rgb()[..., 0]
    Image.fromarray(g).save(tmp_path / "g.png")
    x = read_image(tmp_path / "g.png")
    assert x.shape == (80, 96, 3)
    for c in range(3):
        np.testing.assert_array_equal(x[..., c], g)


def test_exif_orientation_applied(tmp_path):
    a = _rgb(70, 100)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(a).save(tmp_path / "r.png", exif=exif)
    x = read_image(tmp_path / "r.png")
    assert x.shape == (100, 70, 3)
    np.testing.assert_array_equal(x, np.rot90(a, k=-1))


def test_too_small_and_too_large(tmp_path):
    Image.fromarray(_rgb(16, 16)).save(tmp_path / "tiny.png")
    assert _reason(tmp_path / "tiny.png") == "too_small"
    assert read_image(tmp_path / "tiny.png", min_side=8).shape == (16, 16, 3)
    _png_header_only(tmp_path / "big.png", 12000, 12000)      # 144 MP: above our 50 MP limit
    assert (tmp_path / "big.png").stat().st_size < 200_000
    assert _reason(tmp_path / "big.png") == "too_large"
    _png_header_only(tmp_path / "bomb.png", 15000, 15000)     # 225 MP: PIL's own bomb guard fires
    assert _reason(tmp_path / "bomb.png", max_pixels=10 ** 12) == "too_large"
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    assert _reason(tmp_path / "a.png", max_pixels=5000) == "too_large"


def test_unsupported_mode(tmp_path):
    Image.fromarray(np.random.default_rng(0).random((70, 70)).astype(np.float32)).save(tmp_path / "f.tif")
    assert _reason(tmp_path / "f.tif") == "unsupported_mode"


def test_iter_images_expands_dirs(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    Image.fromarray(_rgb()).save(d / "b.png")
    Image.fromarray(_rgb(seed=1)).save(d / "a.jpg")
    (d / "readme.txt").write_text("x")
    (d / "c.png").write_bytes(b"not an image")
    out = list(iter_images([d, tmp_path / "missing.png"]))
    assert [p.name for p, _ in out] == ["a.jpg", "b.png", "c.png", "missing.png"]
    assert isinstance(out[0][1], np.ndarray) and isinstance(out[1][1], np.ndarray)
    assert [e.reason for _, e in out[2:]] == ["not_an_image", "not_found"]


def test_write_png_atomic(tmp_path):
    a = _rgb()
    write_png_atomic(tmp_path / "sub" / "o.png", a)
    np.testing.assert_array_equal(read_image(tmp_path / "sub" / "o.png"), a)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["o.png"]  # no temp file left
    with pytest.raises(ValueError):
        write_png_atomic(tmp_path / "bad.png", a.astype(np.float32))
    assert not (tmp_path / "bad.png").exists()
