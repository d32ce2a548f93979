"""`ingest`: the generator the pipeline uses, and the raw data (embedded world or indexed user folders)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tqdm import tqdm

from goae.config import Params
from goae.data.dataset import IMAGE_EXTS, write_json_atomic
from goae.data.world import build_embedded_generator, render_world
from goae.assets import sha256_file
from goae.model.io import asset, load_generator, save_module
from goae.params_view import whole_section


def write_generator(p: Params, folder: Path, device):
    """Embedded: build + save the tiny EG3D. Real: validate the converted checkpoint and point to it
    (no 120 MB copy; its sha256 pins it, so a different file re-runs every downstream stage)."""
    folder = Path(folder)
    prov: dict = {}
    path = asset(p, "generator", prov)
    if path is None:
        G, cfg = build_embedded_generator(whole_section(p, "generator"), device)
        save_module(folder / "generator", G, cfg)
        meta = {"provenance": cfg["provenance"]}
    else:
        prefix = Path(path)
        prefix = prefix.with_suffix("") if prefix.suffix in (".safetensors", ".json") else prefix
        if prefix.suffix == ".pkl" or not prefix.with_suffix(".safetensors").is_file():
            raise FileNotFoundError(
                f"assets.generator: expected a converted checkpoint prefix (X.safetensors + X.json); "
                f"convert NVIDIA's pickle first: goae convert-eg3d ffhqrebalanced512-128.pkl {prefix}")
        sha = sha256_file(prefix.with_suffix(".safetensors"))
        meta = {"pointer": str(prefix.resolve()), "sha256": sha,
                "provenance": {"kind": "file", "file": prefix.name, "sha256": sha}}
    write_json_atomic(folder / "source.json", meta)
    G, _ = load_generator(folder, device)
    return G, meta["provenance"]


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def index_folder(root: str | Path) -> list[dict]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    files = sorted(f for f in root.rglob("*") if f.is_file() and (f.suffix.lower() in IMAGE_EXTS
                                                                   or f.name in ("dataset.json", "label.json")))
    return [{"path": str(f.relative_to(root)), "size": f.stat().st_size, "sha1": _sha1(f)}
            for f in tqdm(files, desc=f"index {root.name}", unit="file", leave=False)]


def ingest(p: Params, G, out: Path, device) -> dict:
    out = Path(out)
    data = whole_section(p, "data")  # the world's settings and the user folders: ingest depends on all
    if data.source == "embedded":
        return render_world(G, data, out, device)
    manifest = {}
    for split, root in (("train", data.ffhq), ("celeba", data.celeba), ("mead", data.mead), ("wild", data.wild)):
        if root:
            manifest[split] = {"root": str(Path(root).resolve()), "files": index_folder(root)}
    write_json_atomic(out / "manifest.json", manifest)
    return {k: len(v["files"]) for k, v in manifest.items()}
