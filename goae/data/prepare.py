"""`prepare`: EG3D-convention crops and camera labels per split, with a per-file report.

Images that come with cameras (the embedded world, or a folder holding an official `dataset.json`)
pass through, resized to `prepare.output_size` if needed. Photos without labels go through
landmarks → EG3D crop → pose fit (goae.data.photos). Every readable good file is processed even when
others are bad; `report.json` says ok or the reason for each file.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from goae.config import Params
from goae.data.dataset import IMAGE_EXTS, read_dataset_json, write_dataset_json, write_json_atomic
from goae.params_view import depends_on


def passthrough_split(src: Path, dst: Path, size: int) -> dict:
    """Copy a labelled split (images + dataset.json + depth maps), resizing images to `size`."""
    dst.mkdir(parents=True, exist_ok=True)
    labels = read_dataset_json(src)
    report, kept = {}, []
    for name, lab in tqdm(labels, desc=f"prepare/{dst.name}", leave=False, unit="img"):
        f = src / name
        if not f.is_file() and f.with_suffix(".jpg").is_file():
            f = f.with_suffix(".jpg")  # GOAE's label.json names .png files stored as .jpg
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.LANCZOS)
                out = dst / Path(name).with_suffix(".png")   # keeps subfolders (a MEAD layout's stems repeat)
                out.parent.mkdir(parents=True, exist_ok=True)
                im.save(out)
        except (OSError, ValueError) as e:
            report[name] = {"status": "skipped", "reason": "unreadable", "detail": str(e)}
            continue
        kept.append((Path(name).with_suffix(".png").as_posix(), lab))
        report[name] = {"status": "ok", "output": kept[-1][0], "camera": "official"}  # the dataset's label, unchanged
    write_dataset_json(dst, kept)
    for extra in ("depth",):
        if (src / extra).is_dir():
            shutil.copytree(src / extra, dst / extra, dirs_exist_ok=True)
    for extra in ("meta.json", "latents.safetensors"):
        if (src / extra).is_file():
            shutil.copyfile(src / extra, dst / extra)
    return report


def _summarise(report: dict) -> dict:
    ok = sum(1 for r in report.values() if r["status"] == "ok")
    return {"ok": ok, "skipped": len(report) - ok}


def prepare_split(src: Path, dst: Path, p: Params, device, log=print) -> dict:
    depends_on(p, "prepare.mead_yaw")  # used only by a real MEAD folder
    has_labels = (src / "dataset.json").is_file() or (src / "label.json").is_file()
    if has_labels:
        report = passthrough_split(src, dst, p.prepare.output_size)
    else:
        from goae.data.photos import prepare_photos
        # depth/ holds pseudo-GT depth maps, not photos; they only fit images that are already cropped
        # (a labelled split), never the crops made here, so they are reported and left out
        files = sorted(f for f in src.rglob("*") if f.is_file() and f.relative_to(src).parts[0] != "depth")
        if (src / "depth").is_dir():
            log(f"{src}/depth: ignored: depth maps must match the prepared crops (supply a labelled split)")
        report = prepare_photos(files, dst, detector=p.prepare.detector, output_size=p.prepare.output_size,
                                min_face_px=p.prepare.min_face_px, flip=p.prepare.flip,
                                roll_align=p.prepare.roll_align, device=device, root=src,
                                fan_weights=p.prepare.fan_weights, pose_depth=p.prepare.pose_depth)
    summary = _summarise(report)
    if dst.name == "mead" and not (dst / "meta.json").is_file():  # a real MEAD folder: build the protocol
        from goae.data.mead import build_mead_meta
        outputs = {Path(k).as_posix(): r["output"] for k, r in report.items() if r["status"] == "ok"}
        meta = build_mead_meta(outputs, dict(read_dataset_json(dst)), p.prepare.mead_yaw)
        write_json_atomic(dst / "meta.json", meta)
        summary["mead_identities"] = len(meta["identities"])
        log(f"mead: {len(meta['identities'])} identities x yaws {meta['yaws_deg']} (yaw from {meta['yaw_source']}); "
            f"{len(meta['incomplete'])} incomplete, {len(meta['ignored'])} images ignored")
    write_json_atomic(dst / "report.json", {"summary": summary, "files": report})
    return summary


def prepare_all(p: Params, raw: str | Path, out: str | Path, device, log=print) -> dict:
    raw, out = Path(raw), Path(out)
    results = {}
    manifest = raw / "manifest.json"
    if manifest.is_file():  # user folders, indexed by `ingest`
        for split, entry in json.loads(manifest.read_text()).items():
            results[split] = prepare_split(Path(entry["root"]), out / split, p, device, log)
    else:
        for src in sorted(d for d in raw.iterdir() if d.is_dir()):
            results[src.name] = prepare_split(src, out / src.name, p, device, log)
    return results
