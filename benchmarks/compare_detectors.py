#!/usr/bin/env python
"""MTCNN against YuNet as the detector of a face model, on validation identities only.

    python benchmarks/compare_detectors.py --model h_model/bundled/faces_default \\
        --yunet ../shared/models/opencv_zoo/face_detection_yunet_2023mar_int8bq.onnx

The validation photos are those :func:`h_model.data.faces_splits` keeps (MTCNN found a face);
YuNet detects each of them again and the model's own alignment cuts the crop. Pairs (as
``bench_faces.py`` builds them: 10 identity-disjoint folds) are drawn over the photos both
detectors found, so both are scored on the same pairs; photos YuNet misses are counted. Also
times detection alone per photo. Writes ``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_faces as bf  # noqa: E402
from h_model.data.faces import faces_splits  # noqa: E402
from h_model.data.imageset import ImageSet  # noqa: E402
from h_model.faces import FaceDetector  # noqa: E402
from h_model.faces.verifier import l2_normalize  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--yunet", required=True, help="YuNet ONNX file")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--pairs", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/faces_detectors.json")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    e = bf.model_embedder(a.model, Path(a.model).name)
    s = bf.align_of(e)
    root = Path(a.data_root).expanduser().resolve() if a.data_root else bf.default_data_root()
    _, val, _ = faces_splits(root, image_size=int(s["crop_size"]), margin=float(s["margin"]), seed=a.seed,
                             alignment=s.get("alignment", "eyes"))
    yunet = FaceDetector(crop_size=int(s["crop_size"]), margin=float(s["margin"]),
                         alignment=s.get("alignment", "eyes"), yunet_model=a.yunet)
    crops, found, t0 = [], [], time.perf_counter()
    for i, src in enumerate(val.sources):
        faces = yunet.detect_many([src])[0]
        if faces:
            crops.append(torch.from_numpy(np.array(faces[0].crop)).permute(2, 0, 1))
            found.append(i)
    ms = 1e3 * (time.perf_counter() - t0) / len(val)
    keep = torch.as_tensor(found)
    both = {"mtcnn": val.images[keep], "yunet": torch.stack(crops)}
    labels = val.labels[keep]
    report = {"model": a.model, "align": s, "val_photos": len(val), "yunet_found": len(found),
              "yunet_ms_per_photo_detect_align": ms, "results": {}}
    for name, imgs in both.items():
        part = ImageSet(imgs.contiguous(), labels, val.class_names, val.preprocess, [val.sources[i] for i in found])
        members = bf.members_of(part)
        z = l2_normalize(e.embed(part.images))
        report["results"][name] = {k: bf.verification(z, bf.build_pairs(members, a.pairs, 10, a.seed, sets), members)
                                   for k, sets in (("all", None), ("wild", bf.WILD_SETS))}
        r = report["results"][name]
        print(f"{name}: all {100 * r['all']['accuracy_mean']:.2f}% (AUC {r['all']['auc']:.4f}, TAR@1e-3 "
              f"{100 * r['all']['tar_at_far']['0.001']['tar']:.1f}%), wild {100 * r['wild']['accuracy_mean']:.2f}%",
              flush=True)
    report["machine"] = {"cpu": bf.cpu_model(), "torch_threads": torch.get_num_threads()}
    print(f"YuNet found {len(found)} of {len(val)} validation photos; {ms:.1f} ms per photo (detect + align)")
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
