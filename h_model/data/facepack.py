"""Face packs: every set's aligned crops (and a teacher's embeddings of them) in one portable folder.

Aligning ~16k photos with MTCNN and embedding them with a CPU-only teacher (dlib) is slow and needs
the photos; a pack carries the result to another machine (a GPU box without the photos or dlib):

    python -m h_model.faces pack runs/facepack --teacher dlib          # where the photos are
    python training/train_h.py --config training/configs/faces_distill.yaml \\
        --data-kwargs pack=runs/facepack --teacher precomputed --teacher-file runs/facepack/teacher-dlib.pt

A pack folder holds ``index.json`` (per set: class names, labels, the photos' ``set/identity/file``
names, byte offsets), ``crops.bin`` (the crops, WebP-encoded; ``quality`` 100 is lossless) and
optionally ``teacher-<name>.pt`` (a :class:`h_model.faces.teachers.PrecomputedTeacher` file). The
identity splits drawn from a pack equal those drawn from the photos (same sets, same seed).
"""
from __future__ import annotations

import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..preprocess import Preprocess
from .imageset import ImageSet
from .root import not_found

PACK_VERSION = 1


def short_source(source: str) -> str:
    """``.../<set>/<identity>/<file>`` -> ``<set>/<identity>/<file>``: how packs name photos."""
    return "/".join(Path(source).parts[-3:])


def _encode(img: torch.Tensor, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, "WEBP", quality=quality, lossless=quality >= 100)
    return buf.getvalue()


def _decode(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)


def write_facepack(out: str | Path, sets: dict[str, ImageSet], quality: int = 85) -> Path:
    """Write ``{set name: aligned crops}`` as a pack folder ``out``; returns it."""
    if not sets:
        raise ValueError("a face pack needs at least one set")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index: dict = {"version": PACK_VERSION, "format": "webp", "quality": quality, "sets": []}
    offset = 0
    tmp = out / "crops.bin.tmp"
    workers = min(8, (os.cpu_count() or 1) * 2)
    with open(tmp, "wb") as f, ThreadPoolExecutor(workers) as ex:
        for name, s in sets.items():
            if s.sources is None:
                raise ValueError(f"set {name!r} has no sources: a pack names every crop by its photo")
            sizes = []
            for blob in tqdm(ex.map(lambda im: _encode(im, quality), s.images), total=len(s), desc=f"packing {name}",
                             unit="crop", leave=False, disable=len(s) < 2000):
                f.write(blob)
                sizes.append(len(blob))
            index["sets"].append({"name": name, "class_names": list(s.class_names), "labels": s.labels.tolist(),
                                  "sources": [short_source(x) for x in s.sources], "offset": offset, "sizes": sizes,
                                  "preprocess": s.preprocess.to_dict()})
            offset += sum(sizes)
    os.replace(tmp, out / "crops.bin")
    (out / "index.json.tmp").write_text(json.dumps(index))
    os.replace(out / "index.json.tmp", out / "index.json")
    return out


def read_facepack(path: str | Path, sets: Sequence[str] | None = None) -> dict[str, ImageSet]:
    """The pack's sets (all, or ``sets`` in that order) as ImageSets named by ``set/identity/file``."""
    path = Path(path).expanduser()
    if not (path / "index.json").is_file() or not (path / "crops.bin").is_file():
        raise not_found("face pack", [path], "A pack is a folder with index.json and crops.bin "
                        "(python -m h_model.faces pack OUT).")
    index = json.loads((path / "index.json").read_text())
    if index.get("version") != PACK_VERSION:
        raise ValueError(f"{path}: pack version {index.get('version')}, this h_model reads {PACK_VERSION}")
    by_name = {e["name"]: e for e in index["sets"]}
    names = list(sets) if sets else list(by_name)
    missing = [s for s in names if s not in by_name]
    if missing:
        raise ValueError(f"unknown face set(s) {missing}; the pack {path} holds {sorted(by_name)}")
    raw = (path / "crops.bin").read_bytes()
    out: dict[str, ImageSet] = {}
    workers = min(16, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as ex:
        for name in names:
            e = by_name[name]
            ends = np.cumsum([0] + e["sizes"]) + e["offset"]
            if ends[-1] > len(raw):
                raise ValueError(f"{path}: crops.bin is truncated (set {name!r} needs {ends[-1]} bytes, has {len(raw)})")
            crops = list(ex.map(lambda i: _decode(raw[ends[i]:ends[i + 1]]), range(len(e["sizes"]))))
            images = torch.stack(crops).contiguous() if crops else torch.zeros((0, 3, 1, 1), dtype=torch.uint8)
            out[name] = ImageSet(images, torch.as_tensor(e["labels"], dtype=torch.long), list(e["class_names"]),
                                 Preprocess.from_dict(e["preprocess"]), list(e["sources"]))
    return out
