"""EG3D-format datasets: `dataset.json` labels beside PNG images (+ optional exact depth maps).

Layout of one split folder:
    dataset.json          {"labels": [[relative_path, [25 floats]], ...]}   (EG3D format)
    <name>.png            RGB uint8 at the split's resolution
    depth/<stem>.npy      optional float32 [H, W] ray-distance depth (embedded world: exact)
    meta.json             optional free-form provenance
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from goae.fileio import write_json_atomic  # noqa: F401  (re-exported)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def write_dataset_json(folder: str | Path, labels: list[tuple[str, list[float]]], provenance: dict | None = None,
                       filename: str = "dataset.json") -> None:
    """EG3D `dataset.json`; `provenance` ({name: how its camera was made}) is an extra key that EG3D's
    loader (which reads only "labels") ignores."""
    data = {"labels": [[name, [float(v) for v in lab]] for name, lab in labels]}
    if provenance is not None:
        data["provenance"] = provenance
    write_json_atomic(Path(folder) / filename, data)


def read_dataset_json(folder: str | Path) -> list[tuple[str, list[float]]]:
    """Labels of a split. Accepts EG3D `dataset.json` and GOAE's `label.json` (same structure)."""
    folder = Path(folder)
    for fname in ("dataset.json", "label.json"):
        p = folder / fname
        if p.is_file():
            data = json.loads(p.read_text())
            labels = data.get("labels") if isinstance(data, dict) else None
            if not isinstance(labels, list):
                raise ValueError(f"{p}: expected {{'labels': [[name, [25 floats]], ...]}}")
            out = []
            for i, entry in enumerate(labels):
                if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and len(entry[1]) == 25):
                    raise ValueError(f"{p}: entry {i} is not [name, [25 floats]]")
                out.append((str(entry[0]), [float(v) for v in entry[1]]))
            return out
    raise FileNotFoundError(f"no dataset.json (or label.json) in {folder}")


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 → [3,H,W] float in [-1, 1]."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def tensor_to_image(x: torch.Tensor) -> np.ndarray:
    """[3,H,W] in [-1,1] → HxWx3 uint8 (round half up, clamped)."""
    x = (x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5
    return x.add(0.5).floor().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def save_png(path: str | Path, x: torch.Tensor | np.ndarray) -> None:
    arr = tensor_to_image(x) if isinstance(x, torch.Tensor) else x
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


class LabeledImages(torch.utils.data.Dataset):
    """A split folder as (image [-1,1] [3,H,W], label [25], index); depth when present."""

    def __init__(self, folder: str | Path, resolution: int | None = None, with_depth: bool = False):
        self.folder = Path(folder)
        self.items = read_dataset_json(self.folder)
        self.resolution = resolution
        self.with_depth = with_depth

    def __len__(self) -> int:
        return len(self.items)

    def name(self, i: int) -> str:
        return self.items[i][0]

    def load_image(self, i: int) -> torch.Tensor:
        name = self.items[i][0]
        path = self.folder / name
        if not path.is_file():  # GOAE's label.json names .png files that are stored as .jpg
            alt = path.with_suffix(".jpg")
            path = alt if alt.is_file() else path
        with Image.open(path) as im:
            im = im.convert("RGB")
            if self.resolution and im.size != (self.resolution, self.resolution):
                im = im.resize((self.resolution, self.resolution), Image.LANCZOS)
            return image_to_tensor(np.asarray(im))

    def load_depth(self, i: int) -> torch.Tensor | None:
        p = self.folder / "depth" / (Path(self.items[i][0]).stem + ".npy")
        return torch.from_numpy(np.load(p)).float()[None] if p.is_file() else None

    def __getitem__(self, i: int):
        item = {"image": self.load_image(i), "label": torch.tensor(self.items[i][1], dtype=torch.float32),
                "index": i}
        if self.with_depth:
            d = self.load_depth(i)
            if d is not None:
                item["depth"] = d
        return item

    def batch(self, indices) -> dict:
        items = [self[int(i)] for i in indices]
        out = {"image": torch.stack([it["image"] for it in items]),
               "label": torch.stack([it["label"] for it in items]),
               "index": torch.tensor([it["index"] for it in items])}
        if self.with_depth and all("depth" in it for it in items):
            out["depth"] = torch.stack([it["depth"] for it in items])
        return out
