#!/usr/bin/env python
"""Which detector and test-time flip a face model should use, chosen on validation identities only.

    python benchmarks/compare_detectors.py --model h_model/bundled/faces_default --threads 2

For each detector (MTCNN, YuNet) and each flip setting (the embedding of a crop alone, or the mean
of it and its mirror image, ``FewShotModel.flip_embed``), the validation photos of
:func:`h_model.data.faces_splits` (the photos MTCNN finds a face in; YuNet re-crops the same
photos, falling back to MTCNN where it finds none) are cut by the model's own alignment and
scored on the same 3,000 validation pairs (10 identity-disjoint folds, as ``bench_faces.py``
builds them), over all sets and in the wild. The rule: the highest all-sets 10-fold accuracy, then
AUC. The chosen setting's threshold at FAR 1e-3 on those pairs is reported too. Also times
detection + alignment of a 640x480 photo per detector. Writes ``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_faces as bf  # noqa: E402
from h_model.checkpoint import write_json  # noqa: E402
from h_model.data.faces import faces_splits  # noqa: E402
from h_model.faces import FaceDetector  # noqa: E402
from h_model.faces.verifier import calibrate_threshold, l2_normalize  # noqa: E402

DETECTORS = ("mtcnn", "yunet")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--pairs", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/faces_detectors.json")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    e = bf.model_embedder(a.model, Path(a.model).name)
    model = e.verifier.learner.model
    s = {k: v for k, v in bf.align_of(e).items() if k != "detector"}
    root = Path(a.data_root).expanduser().resolve() if a.data_root else bf.default_data_root()
    report: dict[str, Any] = {"model": a.model, "align": s, "rule": "highest all-sets accuracy, then AUC",
                              "results": {}, "detect_align_640x480": {}}
    sources, pairs = None, None
    for det in DETECTORS:
        _, val, test = faces_splits(root, image_size=int(s["crop_size"]), margin=float(s["margin"]), seed=a.seed,
                                    alignment=s.get("alignment", "eyes"), detector=det)
        if sources is None:
            sources = val.sources
            members = bf.members_of(val)
            pairs = {k: bf.build_pairs(members, a.pairs, 10, a.seed, sets) for k, sets in (("all", None),
                                                                                              ("wild", bf.WILD_SETS))}
            report["val_photos"], report["val_identities"] = len(val), len(members)
        elif val.sources != sources:
            raise SystemExit(f"the {det} crops come from other photos than the {DETECTORS[0]} ones")
        for flip in (False, True):
            model.flip_embed = flip
            z = l2_normalize(e.embed(val.images))
            r = {k: bf.verification(z, pl, members) for k, pl in pairs.items()}
            r["threshold_far_1e-3"] = calibrate_threshold(bf.pair_scores(z, pairs["all"], members),
                                                          pairs["all"].same(), 1e-3)
            name = f"{det}{'+flip' if flip else ''}"
            report["results"][name] = r
            print(f"{name}: all {100 * r['all']['accuracy_mean']:.2f}% (AUC {r['all']['auc']:.4f}, TAR@1e-3 "
                  f"{100 * r['all']['tar_at_far']['0.001']['tar']:.2f}%), wild {100 * r['wild']['accuracy_mean']:.2f}% "
                  f"(TAR@1e-3 {100 * r['wild']['tar_at_far']['0.001']['tar']:.2f}%)", flush=True)
        wild_rows = [i for i, src in enumerate(test.sources) if Path(src).parts[-3] == "celeba_subset"]
        jpeg = bf.photo_640x480(test.sources[wild_rows[0]])
        detector = FaceDetector(**s, detector=det)
        report["detect_align_640x480"][det] = bf.timed(lambda: detector.largest([jpeg]), a.latency_runs)
        print(f"{det}: detect + align {report['detect_align_640x480'][det]['median_ms']:.1f} ms median", flush=True)
    key = lambda n: (report["results"][n]["all"]["accuracy_mean"], report["results"][n]["all"]["auc"])  # noqa: E731
    report["chosen"] = max(report["results"], key=key)
    report["machine"] = {"cpu": bf.cpu_model(), "torch_threads": torch.get_num_threads()}
    print(f"chosen on validation pairs: {report['chosen']}")
    write_json(a.out, report)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
