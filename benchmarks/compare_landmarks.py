#!/usr/bin/env python
"""YuNet's landmarks alone or averaged with MTCNN's (``fuse_landmarks``), scored on validation identities only.

    python benchmarks/compare_landmarks.py --model h_model/bundled/faces_default --threads 2 --fuse-min-face 0,0.7

A five-point crop is only as good as its five landmarks. YuNet and MTCNN each place them with an
error of their own; with ``FaceDetector(fuse_landmarks=True)`` every face YuNet keeps is aligned
on the mean of its landmarks and MTCNN's for the same face (the box that overlaps it most, IoU at
least 0.3), at the cost of running MTCNN on every photo. ``fuse_min_face`` (``--fuse-min-face``,
one variant per value; 0 is the full pass) makes MTCNN look only for faces of at least that fraction
of YuNet's face, which cuts its cost.

The validation photos of :func:`h_model.data.faces_splits` are cut with the model's own detector
settings and embedded; then every one of them is detected again with ``fuse_landmarks`` on (each
``fuse_min_face``) and re-embedded. Both are scored on the same 3,000 validation pairs as ``bench_faces.py`` builds them
(10 identity-disjoint folds, all sets and in the wild) and on every pair of validation crops
(TAR at FAR 1e-3). Also timed first, before the bulk embedding: detect + align + embed of one
640x480 photo, every way. Writes
``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_faces as bf  # noqa: E402
from compare_yunet_sure import scored, yunet_validation  # noqa: E402
from h_model.checkpoint import write_json  # noqa: E402
from h_model.detect import FaceDetector  # noqa: E402


def summary(r: dict[str, Any]) -> str:
    return (f"all {100 * r['all']['accuracy_mean']:.2f}% (AUC {r['all']['auc']:.4f}, TAR@1e-3 "
            f"{100 * r['all']['tar_at_far']['0.001']['tar']:.2f}%), wild {100 * r['wild']['accuracy_mean']:.2f}% "
            f"(TAR@1e-3 {100 * r['wild']['tar_at_far']['0.001']['tar']:.2f}%), every pair TAR@1e-3 "
            f"{100 * r['every_pair']['tar_at_far']['0.001']['tar']:.2f}%")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a face checkpoint used with YuNet")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--pairs", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--fuse-min-face", default="0", help="fuse_min_face values to compare (comma-separated; 0: full pass)")
    ap.add_argument("--latency-runs", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/faces_landmarks.json")
    a = ap.parse_args(argv)
    min_faces = [float(x) for x in a.fuse_min_face.split(",")]
    if any(not 0.0 <= m <= 1.0 for m in min_faces):
        raise SystemExit("--fuse-min-face takes fractions in [0, 1]")
    if a.threads:
        torch.set_num_threads(a.threads)
    e = bf.model_embedder(a.model, Path(a.model).name)
    s, val, members, pairs = yunet_validation(e, a.data_root, a.seed, ("fuse_landmarks", "fuse_min_face"), a.pairs)
    labels = val.labels.numpy()
    assert val.sources is not None
    print(f"{len(val)} validation photos of {len(members)} identities: embedding ...", flush=True)
    report: dict[str, Any] = {"model": a.model, "align": s, "val_photos": len(val), "val_identities": len(members),
                              "results": {}}
    fused = {"fused" if m == 0 else f"fused_min_face_{m:g}": FaceDetector(**s, fuse_landmarks=True, fuse_min_face=m)
             for m in min_faces}
    jpeg = bf.photo_640x480(val.sources[0])
    report["photo_640x480_detect_align_embed_ms"] = timings = {
        name: bf.timed(lambda: e.verifier.embed_crops([det.largest([jpeg])[0].crop]), a.latency_runs)
        for name, det in {"yunet": FaceDetector(**s), **fused}.items()}
    for k, t in timings.items():
        print(f"640x480 photo, {k}: {t['median_ms']:.1f} ms (median of {t['runs']})", flush=True)
    report["results"]["yunet"] = scored(e.embed(val.images), labels, pairs, members)
    print(f"YuNet landmarks: {summary(report['results']['yunet'])}", flush=True)
    for name, det in fused.items():
        crops, refound = [], 0
        for row, src in enumerate(tqdm(val.sources, desc=f"detecting again ({name})", unit="photo")):
            faces = det.detect_many([src])[0]
            refound += bool(faces)
            crops.append(torch.from_numpy(np.array(faces[0].crop)).permute(2, 0, 1) if faces else val.images[row])
        r = scored(e.embed(torch.stack(crops).contiguous()), labels, pairs, members)
        report["results"][name] = {**r, "fuse_min_face": det.fuse_min_face, "photos_found_again": refound}
        print(f"{name}: {summary(r)}", flush=True)
    report["machine"] = {"cpu": bf.cpu_model(), "torch_threads": torch.get_num_threads()}
    write_json(a.out, report)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
