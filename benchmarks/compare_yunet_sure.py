#!/usr/bin/env python
"""Which photos a face model should hand from YuNet to MTCNN (``yunet_sure``), chosen on validation identities only.

    python benchmarks/compare_yunet_sure.py --model h_model/bundled/faces_default --threads 2

With ``FaceDetector(detector="yunet", yunet_sure=T)`` a photo in which YuNet finds any face it
scores under ``T`` is detected by MTCNN instead (YuNet's faces stay where MTCNN finds none).
YuNet's unsure detections are where it errs: a hand or a skate taken for the largest face,
landmarks scattered by hard side light. A high ``T`` sends more photos to MTCNN.

The validation photos of :func:`h_model.data.faces_splits` are cut by YuNet alone (no
``yunet_sure``) and embedded once. For each ``T`` of ``--sure``, every photo with a YuNet face
scored under ``T`` is detected again by a ``FaceDetector(yunet_sure=T)`` (exactly what that
setting does to it; the others keep their crop) and re-embedded. Each setting is scored on the same 3,000 validation pairs as
``bench_faces.py`` builds them (10 identity-disjoint folds, all sets and in the wild) and on
every pair of validation crops (TAR at FAR 1e-3). The rule: the highest all-sets 10-fold
accuracy, then AUC. Writes ``--out`` (JSON) and, beside it, a PNG of the photos the chosen
setting re-cuts (before | after).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_faces as bf  # noqa: E402
from h_model.checkpoint import write_json  # noqa: E402
from h_model.data.faces import crop_kwargs, faces_splits  # noqa: E402
from h_model.detect import FaceDetector, load_rgb  # noqa: E402
from h_model.faces.pairs import all_pairs_tar_at_far  # noqa: E402
from h_model.faces.verifier import l2_normalize  # noqa: E402


def scored(z_raw: np.ndarray, labels: np.ndarray, pairs: dict[str, Any], members: dict[str, list[int]]
           ) -> dict[str, Any]:
    """Pair-list figures (all sets, in the wild) and TAR at FAR 1e-3 over every pair of crops."""
    z = l2_normalize(z_raw)
    r: dict[str, Any] = {k: bf.verification(z, pl, members) for k, pl in pairs.items()}
    r["every_pair"] = all_pairs_tar_at_far(z, labels, (1e-3,))
    return r


def yunet_validation(e: bf.Embedder, data_root: str | None, seed: int, drop: tuple[str, ...], n_pairs: int = 3000
                     ) -> tuple[dict[str, Any], Any, dict[str, list[int]], dict[str, Any]]:
    """For a model used with YuNet: its crop settings less ``drop``, the validation crops cut with
    them, their rows by identity and the validation pair lists (all sets, in the wild; 10 folds)."""
    s = {k: v for k, v in bf.align_of(e).items() if k not in drop}
    if s.get("detector") != "yunet":
        raise SystemExit(f"{e.info['path'] if e.info else e.name} is not used with YuNet (its crop settings: {s})")
    root = Path(data_root).expanduser().resolve() if data_root else bf.default_data_root()
    _, val, _ = faces_splits(root, seed=seed, **crop_kwargs(s))
    members = bf.members_of(val)
    pairs = {k: bf.build_pairs(members, n_pairs, 10, seed, sets) for k, sets in (("all", None), ("wild", bf.WILD_SETS))}
    return s, val, members, pairs


def yunet_least(det: FaceDetector, src: str) -> float:
    """The lowest score among YuNet's faces in a photo, as ``det`` runs YuNet (downscale, padded
    retry); 1.0 where YuNet finds none (such a photo goes to MTCNN whatever ``yunet_sure`` is)."""
    small, _ = det._downscale(load_rgb(src))
    found = det._find([small], "yunet")[0]
    return 1.0 if found is None else float(found[1].min())


def contact_sheet(before: list[np.ndarray], after: list[np.ndarray], path: Path, per_row: int = 6) -> Path:
    """Pairs of crops side by side (before | after), ``per_row`` pairs to a row."""
    side = before[0].shape[0]
    rows = max(1, -(-len(before) // per_row))
    sheet = Image.new("RGB", (per_row * (2 * side + 8), rows * (side + 8)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (b, a) in enumerate(zip(before, after)):
        x, y = (k % per_row) * (2 * side + 8), (k // per_row) * (side + 8)
        sheet.paste(Image.fromarray(b), (x, y))
        sheet.paste(Image.fromarray(a), (x + side, y))
        draw.line([(x + side, y), (x + side, y + side - 1)], fill="white", width=1)
    sheet.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a face checkpoint used with YuNet")
    ap.add_argument("--sure", default="0.7,0.8,0.85,0.9,0.95", help="yunet_sure values to compare (comma-separated)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--pairs", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sheet-limit", type=int, default=48, help="photos shown in the PNG")
    ap.add_argument("--out", default="benchmarks/results/faces_yunet_sure.json")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    sure = sorted({float(x) for x in a.sure.split(",")})
    if any(not 0.0 <= t <= 1.0 for t in sure):
        raise SystemExit("--sure takes scores in [0, 1]")
    e = bf.model_embedder(a.model, Path(a.model).name)
    s, val, members, pairs = yunet_validation(e, a.data_root, a.seed, ("yunet_sure",), a.pairs)
    labels = val.labels.numpy()
    assert val.sources is not None
    print(f"{len(val)} validation photos of {len(members)} identities: embedding ...", flush=True)
    z_base = e.embed(val.images)
    base = FaceDetector(**s)
    least = np.array([yunet_least(base, src) for src in val.sources], np.float64)
    report: dict[str, Any] = {"model": a.model, "align": s, "rule": "highest all-sets accuracy, then AUC",
                              "val_photos": len(val), "val_identities": len(members), "results": {}}
    report["results"]["none"] = {**scored(z_base, labels, pairs, members), "recut": 0}
    print(f"yunet_sure none: all {100 * report['results']['none']['all']['accuracy_mean']:.2f}%", flush=True)
    crops_at: dict[float, dict[int, np.ndarray]] = {}
    for t in sure:
        z = z_base.copy()
        rows = np.flatnonzero(least < t)
        det = FaceDetector(**s, yunet_sure=t)
        redone: dict[int, np.ndarray] = {}
        for r in rows:
            faces = det.detect_many([val.sources[r]])[0]
            if faces:
                redone[int(r)] = np.asarray(faces[0].crop)
        if redone:
            z[np.array(list(redone))] = e.verifier.embed_crops([Image.fromarray(c) for c in redone.values()],
                                                               normalize=False)
        crops_at[t] = redone
        r = scored(z, labels, pairs, members)
        r.update(recut=len(redone), no_face=int(len(rows) - len(redone)))
        report["results"][f"{t:g}"] = r
        print(f"yunet_sure {t:g}: {len(redone)} photos re-cut, {r['no_face']} without a face; all "
              f"{100 * r['all']['accuracy_mean']:.2f}% (AUC {r['all']['auc']:.4f}, TAR@1e-3 "
              f"{100 * r['all']['tar_at_far']['0.001']['tar']:.2f}%), wild {100 * r['wild']['accuracy_mean']:.2f}%, "
              f"every pair TAR@1e-3 {100 * r['every_pair']['tar_at_far']['0.001']['tar']:.2f}%", flush=True)
    key = lambda n: (report["results"][n]["all"]["accuracy_mean"], report["results"][n]["all"]["auc"])  # noqa: E731
    report["chosen"] = max(report["results"], key=key)
    redone = crops_at.get(float(report["chosen"]), {}) if report["chosen"] != "none" else {}
    if redone:
        shown = sorted(redone, key=lambda r: least[r])[:a.sheet_limit]
        sheet = contact_sheet([val.images[r].permute(1, 2, 0).numpy() for r in shown], [redone[r] for r in shown],
                              Path(a.out).with_suffix(".png"))
        report["sheet"] = {"file": sheet.name, "photos": len(shown),
                           "order": "lowest YuNet face score first"}
    report["machine"] = {"cpu": bf.cpu_model(), "torch_threads": torch.get_num_threads()}
    print(f"chosen on validation pairs: yunet_sure {report['chosen']}")
    write_json(a.out, report)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
