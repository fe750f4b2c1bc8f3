"""Command line: ``python -m h_model.faces <command>``; every command prints JSON.

    verify A.jpg B.jpg --model RUN_DIR [--threshold T]
    enroll-dir DIR --gallery G --model RUN_DIR        (DIR/<person>/<photos>)
    identify PHOTO --gallery G --model RUN_DIR [-k 5]
    list|remove NAME|rename OLD NEW|export FILE|import FILE --gallery G
    make-pairs ROOT [ROOT...] --out pairs.txt --index index.json [--folds 10 --per-fold 300]
    pack OUT [--data-root DIR] [--sets A B] [--teacher dlib]   (aligned crops + teacher embeddings, portable)
    convert-sface SFACE.onnx --out DIR [--float16]            (OpenCV Zoo's SFace -> an h_model checkpoint)
    convert-dlib MODEL.dat --out DIR [--float16] [--like CKPT] (dlib's face ResNet -> an h_model checkpoint)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..data.folder import list_class_folders
from ..preprocess import ImageDecodeError
from .detect import NoFaceError
from .folders import enroll_folder
from .gallery import Gallery, ModelMismatchError
from .pairs import make_pairs, split_names, write_pairs
from .verifier import FaceVerifier, NoModelError


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _verify(a: argparse.Namespace) -> int:
    v = FaceVerifier.load(a.model, device=a.device)
    t = a.threshold if a.threshold is not None else v.threshold
    if t is None:
        _print({"same": None, "score": v.score(a.a, a.b), "threshold": None,
                "note": "the checkpoint has no calibrated threshold: pass --threshold or calibrate one "
                        "(python -m h_model.faces.evaluate_pairs ... --save-threshold FAR)"})
    else:
        _print(v.verify(a.a, a.b, t).to_dict())
    return 0


def _enroll_dir(a: argparse.Namespace) -> int:
    v = FaceVerifier.load(a.model, device=a.device)
    with Gallery(a.gallery, verifier=v) as g:
        summary = enroll_folder(g, a.dir)
        g.flush()
    _print(summary)
    return 0


def _identify(a: argparse.Namespace) -> int:
    v = FaceVerifier.load(a.model, device=a.device)
    with Gallery(a.gallery, verifier=v) as g:
        _print(g.identify(a.photo, k=a.k).to_dict())
    return 0


def _gallery_op(a: argparse.Namespace) -> int:
    with Gallery(a.gallery) as g:
        if a.cmd == "list":
            _print([p.__dict__ for p in g.list()])
        elif a.cmd == "remove":
            _print({"removed": g.remove(a.name)})
        elif a.cmd == "rename":
            g.rename(a.old, a.new)
            _print({"renamed": [a.old, a.new]})
        elif a.cmd == "export":
            _print({"exported": str(g.export(a.file))})
        else:
            _print(g.import_from(a.file))
    return 0


def _make_pairs(a: argparse.Namespace) -> int:
    exclude: set[str] = set()
    if a.exclude:
        exclude = {ln.strip() for ln in Path(a.exclude).read_text().splitlines() if ln.strip()}
    only = None
    if a.split_seed is not None:
        names = list_class_folders(a.roots)[2]
        fr = tuple(float(x) for x in a.fractions.split(","))
        train, val, test = split_names(names, fr, a.split_seed)  # type: ignore[arg-type]
        only = {"val": val, "test": test}[a.part]
    pl, index = make_pairs(a.roots, a.folds, a.per_fold, a.seed, exclude, only)
    write_pairs(a.out, pl)
    index.save(a.index)
    _print({"pairs": str(a.out), "index": str(a.index), "folds": pl.folds, "per_fold": pl.per_fold,
            "identities": len({p.name1 for p in pl.pairs} | {p.name2 for p in pl.pairs})})
    return 0


def _pack(a: argparse.Namespace) -> int:
    from ..data.facepack import write_facepack
    from ..data.faces import aligned_sets, faces_splits

    sets = aligned_sets(a.data_root, a.image_size, a.margin, a.sets)
    out = write_facepack(a.out, sets, a.quality)
    summary: dict[str, Any] = {"pack": str(out), "sets": {k: len(v) for k, v in sets.items()},
                               "crops_mb": round((out / "crops.bin").stat().st_size / 2**20, 1)}
    if a.teacher:
        from .teachers import load_teacher, save_precomputed, teacher_embeddings

        kwargs: dict[str, Any] = {"margin": a.margin, **({"weights": a.teacher_weights} if a.teacher_weights else {})}
        teacher = load_teacher(a.teacher, **kwargs)
        split = tuple(float(x) for x in a.split.split(","))
        train = faces_splits(a.data_root, a.image_size, a.margin, a.seed, a.sets, split)[0]  # type: ignore[arg-type]
        z = teacher_embeddings(teacher, train.images)
        summary["teacher"] = str(save_precomputed(out / f"teacher-{teacher.name}.pt", teacher, z, train.sources or []))
        summary["teacher_crops"] = len(z)
    _print(summary)
    return 0


def _fit_chip_affine(like: str, data_root: str | None, limit: int) -> list[list[float]]:
    """The crop-to-dlib-chip map, fitted on the validation crops of ``like``'s own alignment."""
    from ..checkpoint import read_config
    from ..data.faces import faces_splits
    from .chip_map import fit_chip_affine

    face = read_config(like).get("face") or {}
    if "crop_size" not in face:
        raise ValueError(f"{like} is not a face checkpoint (its config has no face crop settings)")
    _, val, _ = faces_splits(data_root, image_size=int(face["crop_size"]), margin=float(face.get("margin", 0.0)),
                             alignment=face.get("alignment", "eyes"), detector=face.get("detector", "mtcnn"),
                             yunet_sure=face.get("yunet_sure"), fuse_landmarks=bool(face.get("fuse_landmarks")),
                             fuse_min_face=float(face.get("fuse_min_face") or 0.0))
    chip_affine, spread = fit_chip_affine(val.images, limit)
    print(f"dlib chip map from {spread['crops']} validation crops: {chip_affine} (interquartile range: scale "
          f"{spread['iqr_scale']:.4f}, shift {spread['iqr_shift_px']:.2f} px)", file=sys.stderr)
    return chip_affine


def _convert(a: argparse.Namespace) -> int:
    from .convert import convert_dlib, convert_sface

    if a.cmd == "convert-sface":
        cfg = convert_sface(a.file, a.out, float16=a.float16)
    elif a.like is None:
        cfg = convert_dlib(a.file, a.out, float16=a.float16)
    else:
        cfg = convert_dlib(a.file, a.out, float16=a.float16, like=a.like,
                           chip_affine=_fit_chip_affine(a.like, a.data_root, a.fit_crops))
    _print({"checkpoint": str(a.out), "source": cfg["source"], "preprocess": cfg["preprocess"], "face": cfg["face"],
            "note": "no threshold yet: calibrate one on validation pairs (python -m h_model.faces.evaluate_pairs "
                    "--pairs VAL_PAIRS ... --save-threshold 0.001)"})
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m h_model.faces", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="face checkpoint (h_model run directory)")
        p.add_argument("--device", default="auto")

    p = sub.add_parser("verify", help="are two photos the same person?")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--threshold", type=float)
    model_args(p)
    p.set_defaults(run=_verify)
    p = sub.add_parser("enroll-dir", help="enroll DIR/<person>/<photos> into a gallery")
    p.add_argument("dir")
    p.add_argument("--gallery", required=True)
    model_args(p)
    p.set_defaults(run=_enroll_dir)
    p = sub.add_parser("identify", help="who is this? (top-k gallery persons)")
    p.add_argument("photo")
    p.add_argument("--gallery", required=True)
    p.add_argument("-k", type=int, default=5)
    model_args(p)
    p.set_defaults(run=_identify)
    for name, args in (("list", []), ("remove", ["name"]), ("rename", ["old", "new"]), ("export", ["file"]),
                       ("import", ["file"])):
        p = sub.add_parser(name, help=f"{name} gallery persons")
        for x in args:
            p.add_argument(x)
        p.add_argument("--gallery", required=True)
        p.set_defaults(run=_gallery_op)
    p = sub.add_parser("make-pairs", help="write an LFW-style pair list + index for class folders")
    p.add_argument("roots", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--index", required=True)
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--per-fold", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exclude", help="file with training identities to leave out (one per line)")
    p.add_argument("--split-seed", type=int, help="use only one part of split_classes(seed) identities")
    p.add_argument("--fractions", default="0.7,0.15,0.15")
    p.add_argument("--part", choices=("val", "test"), default="test")
    p.set_defaults(run=_make_pairs)
    p = sub.add_parser("pack", help="write every set's aligned crops (+ a teacher's embeddings) to a portable folder")
    p.add_argument("out")
    p.add_argument("--data-root", help="face sets (default: $H_DATA_ROOT/faces)")
    p.add_argument("--sets", nargs="+", help="only these sets")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--margin", type=float, default=0.2)
    p.add_argument("--quality", type=int, default=85, help="WebP quality of the crops (100: lossless)")
    p.add_argument("--teacher", help="also store this teacher's embeddings of the training split (dlib, facenet-vggface2)")
    p.add_argument("--teacher-weights", help="local weights file of the teacher")
    p.add_argument("--seed", type=int, default=0, help="the split seed of the training run")
    p.add_argument("--split", default="0.7,0.15,0.15", help="the training run's train,validation,test fractions")
    p.set_defaults(run=_pack)
    for name, what in (("convert-sface", "an SFace ONNX file (float32, int8 or int8 blocks)"),
                       ("convert-dlib", "dlib's face recognition ResNet (dlib_face_recognition_resnet_model_v1.dat)")):
        p = sub.add_parser(name, help=f"convert {what} to a checkpoint")
        p.add_argument("file")
        p.add_argument("--out", required=True, help="checkpoint folder to write")
        p.add_argument("--float16", action="store_true", help="store the weights in half precision")
        if name == "convert-dlib":
            p.add_argument("--like", help="a face checkpoint whose crops, preprocessing, detector and head the model "
                                          "takes (resampled into dlib's chip by a map fitted on its validation "
                                          "crops; needs dlib): an ensemble member beside that model")
            p.add_argument("--data-root", help="face data for fitting the map (default: H_DATA_ROOT)")
            p.add_argument("--fit-crops", type=int, default=400, help="validation crops the map is fitted on")
        p.set_defaults(run=_convert)
    a = ap.parse_args(argv)
    try:
        return a.run(a)
    except (NoModelError, NoFaceError, ImageDecodeError, ModelMismatchError, FileNotFoundError, KeyError,
            ValueError) as e:
        _print({"error": f"{type(e).__name__}: {e}"})
        return 2


if __name__ == "__main__":
    sys.exit(main())
