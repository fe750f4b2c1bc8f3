"""LFW View-2 style evaluation of a face checkpoint on a pair list.

    python -m h_model.faces.evaluate_pairs --pairs pairs.txt --root LFW_DIR --model RUN_DIR
    python -m h_model.faces.evaluate_pairs --pairs pairs.txt --index index.json --model RUN_DIR --out report/

Reports 10-fold accuracy (each fold's threshold chosen on the other nine), ROC AUC, TAR at FAR
1e-3 and 1e-2, writes a ROC curve PNG, and counts images without a detectable face:
``--no-face center`` embeds the central square of such an image instead (LFW images are centred
on the face), ``--no-face skip`` drops their pairs. Undecodable images always drop their pairs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import write_json
from ..preprocess import ImageDecodeError
from .detect import center_crop, load_rgb
from .pairs import ImageIndex, PairList, pair_metrics, plot_roc, read_pairs
from .scores import calibrate_threshold, cosine
from .verifier import FaceVerifier, save_threshold

__all__ = ["evaluate_pairs", "embed_pair_images", "main"]


def embed_pair_images(verifier: FaceVerifier, pl: PairList, index: ImageIndex, no_face: str = "center",
                      batch: int = 32) -> tuple[dict[tuple[str, int], np.ndarray], dict[str, list[str]]]:
    """Normalised embeddings of every image the pairs use; and the images with no face / undecodable."""
    if no_face not in ("center", "skip"):
        raise ValueError("no_face must be 'center' or 'skip'")
    keys = list(dict.fromkeys([(p.name1, p.i1) for p in pl.pairs] + [(p.name2, p.i2) for p in pl.pairs]))
    emb: dict[tuple[str, int], np.ndarray] = {}
    problems: dict[str, list[str]] = {"no_face": [], "undecodable": []}
    for start in range(0, len(keys), batch):
        part = keys[start:start + batch]
        paths = [index.path(n, i) for n, i in part]
        z, reasons = verifier.embed_each(paths)
        rows = iter(z)
        fallback = []
        for key, path, why in zip(part, paths, reasons):
            if why is None:
                emb[key] = next(rows)
            elif why.startswith("ImageDecodeError"):
                problems["undecodable"].append(f"{path}: {why}")
            else:
                problems["no_face"].append(str(path))
                if no_face == "center":
                    fallback.append((key, path))
        if fallback:
            crops = [center_crop(load_rgb(path), verifier.detector.crop_size) for _, path in fallback]
            for (key, _), v in zip(fallback, verifier.embed_crops(crops)):
                emb[key] = v
    return emb, problems


def evaluate_pairs(verifier: FaceVerifier, pairs: str | Path | PairList, index: ImageIndex,
                   no_face: str = "center", out_dir: str | Path | None = None
                   ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Run the protocol: (report, scores and same-person flags of the pairs used). With
    ``out_dir``, also write report.json, scores.tsv and roc.png there."""
    pl = pairs if isinstance(pairs, PairList) else read_pairs(pairs)
    emb, problems = embed_pair_images(verifier, pl, index, no_face)
    folds = pl.fold_of()
    keep = [k for k, p in enumerate(pl.pairs) if (p.name1, p.i1) in emb and (p.name2, p.i2) in emb]
    scores = np.array([cosine(emb[(pl.pairs[k].name1, pl.pairs[k].i1)], emb[(pl.pairs[k].name2, pl.pairs[k].i2)])
                       for k in keep])
    same = pl.same()[keep]
    report: dict[str, Any] = {
        "pairs": len(pl.pairs), "pairs_used": len(keep), "folds": pl.folds, "model_id": verifier.model_id,
        **pair_metrics(scores, same, folds[keep]),
        "no_face": {"images": len(problems["no_face"]), "policy": no_face,
                    "action": "embedded the central square of the whole image" if no_face == "center"
                    else "dropped every pair using the image",
                    "examples": problems["no_face"][:20]},
        "undecodable": {"images": len(problems["undecodable"]), "action": "dropped every pair using the image",
                        "examples": problems["undecodable"][:20]},
        "pairs_dropped": len(pl.pairs) - len(keep)}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report["roc_png"] = str(plot_roc(scores, same, out / "roc.png", title="face verification ROC"))
        lines = "".join(f"{pl.pairs[k].line()}\t{s:.6f}\n" for k, s in zip(keep, scores))
        (out / "scores.tsv").write_text(lines)
        write_json(out / "report.json", report)
    return report, scores, same


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m h_model.faces.evaluate_pairs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", required=True, help="LFW-style pairs.txt")
    ap.add_argument("--root", help="image root (<root>/<name>/<name>_<i:04d>.jpg unless --index)")
    ap.add_argument("--index", help="index JSON mapping names to files (from make-pairs)")
    ap.add_argument("--model", required=True, help="face checkpoint (h_model run directory)")
    ap.add_argument("--no-face", choices=("center", "skip"), default="center")
    ap.add_argument("--out", help="folder for report.json, scores.tsv and roc.png (default: beside --pairs)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--save-threshold", type=float, metavar="FAR",
                    help="calibrate at this FAR on these pairs and store it in the checkpoint "
                         "(use a validation pair list, never the test one)")
    a = ap.parse_args(argv)
    if a.index:
        index = ImageIndex.load(a.index, a.root)
    elif a.root:
        index = ImageIndex(a.root)
    else:
        ap.error("give --root or --index")
    verifier = FaceVerifier.load(a.model, device=a.device)
    out = Path(a.out) if a.out else Path(a.pairs).parent / f"{Path(a.pairs).stem}_eval"
    try:
        report, scores, same = evaluate_pairs(verifier, a.pairs, index, a.no_face, out)
    except (ValueError, KeyError, ImageDecodeError) as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 2
    if a.save_threshold is not None:
        t = calibrate_threshold(scores, same, a.save_threshold)
        save_threshold(a.model, t, a.save_threshold, calibrated_on=str(a.pairs))
        report["saved_threshold"] = {"threshold": t, "far": a.save_threshold}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
