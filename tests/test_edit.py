import numpy as np
import pytest
import torch

from goae.model.edit import apply_edit, edit_features, edit_offset, edit_w_plus, load_direction


def _feature_fn():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(512, 8 * 4 * 4, generator=g) / 30
    return lambda w: torch.tanh(w.mean(1) @ A).reshape(-1, 8, 4, 4)  # nonlinear stand-in for F(·) at 32²


def test_eq9_identities():
    torch.manual_seed(0)
    fn = _feature_fn()
    w = torch.randn(2, 14, 512)
    fstar = torch.randn(2, 8, 4, 4)
    d = torch.randn(1, 14, 512)
    w0, f0 = apply_edit(w, fstar, fn, d, alpha=0.0)
    assert torch.equal(w0, w) and torch.equal(f0, fstar)                     # α = 0 gives back F*
    w_hat, f_hat = apply_edit(w, fstar, fn, d, alpha=1.5)
    torch.testing.assert_close(w_hat, w + 1.5 * d)
    torch.testing.assert_close(f_hat - fstar, fn(w_hat) - fn(w), atol=1e-6, rtol=0)  # F̂* - F* = F(ŵ+) - F(w+)
    assert (f_hat - fstar).abs().max() > 1e-3                               # the edit does something
    torch.testing.assert_close(edit_features(fstar, fn, w, w), fstar)


def test_release_glass_entanglement_rule():
    d, g = torch.randn(1, 14, 512), torch.randn(1, 14, 512)
    torch.testing.assert_close(edit_offset(d, 2.0), 2.0 * d)
    torch.testing.assert_close(edit_offset(d, 2.0, g), 2.0 * d - 0.8 * g)
    w = torch.zeros(3, 14, 512)
    torch.testing.assert_close(edit_w_plus(w, d, -1.0, glass_direction=g), (-d - 0.8 * g).expand(3, 14, 512))


def test_load_direction_numpy_and_torch_zip(tmp_path):
    rng = np.random.default_rng(0)
    full = rng.standard_normal((1, 14, 512)).astype(np.float32)
    np.save(tmp_path / "age.npy", full)
    torch.testing.assert_close(load_direction(tmp_path / "age.npy"), torch.from_numpy(full))
    np.save(tmp_path / "rows.npy", full[0])
    torch.testing.assert_close(load_direction(tmp_path / "rows.npy"), torch.from_numpy(full))
    one = full[0, 0]
    np.save(tmp_path / "one.npy", one)
    got = load_direction(tmp_path / "one.npy")
    assert got.shape == (1, 14, 512) and torch.equal(got[0, 13], torch.from_numpy(one))
    # released cat directions: torch.save zips named .npy, layer-selective rows
    cat = torch.zeros(1, 14, 512)
    cat[0, 4:] = torch.from_numpy(full[0, 4:])
    with open(tmp_path / "cat_black.npy", "wb") as f:
        torch.save(cat, f)
    assert (tmp_path / "cat_black.npy").read_bytes()[:2] == b"PK"  # a zip, not an .npy array
    got = load_direction(tmp_path / "cat_black.npy")
    assert torch.equal(got, cat) and got[0, :4].abs().max() == 0
    torch.save({"direction": cat.double()}, tmp_path / "d.pt")
    assert load_direction(tmp_path / "d.pt").dtype == torch.float32


def test_load_direction_rejects_bad_files(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((3, 512), np.float32))
    with pytest.raises(ValueError):
        load_direction(tmp_path / "bad.npy")
    np.save(tmp_path / "w.npy", np.zeros((14, 256), np.float32))
    with pytest.raises(ValueError):
        load_direction(tmp_path / "w.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        load_direction(tmp_path / "obj.npy")  # pickled object arrays are refused
    (tmp_path / "junk.npy").write_bytes(b"not a direction")
    with pytest.raises(ValueError):
        load_direction(tmp_path / "junk.npy")
