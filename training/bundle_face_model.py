#!/usr/bin/env python
"""Make a face run the bundled default model (what ``FaceVerifier.load()`` loads with no path).

    python training/bundle_face_model.py RUN_DIR [--out h_model/bundled/faces_default] [--data-root DIR] [--float16]

RUN_DIR is a training run or a converted checkpoint (``python -m h_model.faces convert-sface``).
Copies the checkpoint (``model.safetensors``, ``config.json``, ``results.json`` when there is one), drops the paths
of the machine it was trained on (a face pack, a precomputed teacher file) so the data config
points at the photos again, then measures the few-shot figures (5w1s, 5w5s, 20w1s on the test
identities, 1000 episodes each) and recalibrates the verification threshold (FAR 1e-3 on
validation pairs, 10-fold report on test pairs) on crops aligned here from the original photos,
with the checkpoint's own alignment (``data.alignment``: "eyes" or "five_point") and detector
(``data.detector``: "mtcnn" or "yunet"; ``--detector`` sets it; ``--yunet-sure`` sends photos with a
YuNet face scored under it to MTCNN, as chosen by ``benchmarks/compare_yunet_sure.py``;
``--fuse-landmarks`` averages YuNet's landmarks with MTCNN's, with ``--fuse-min-face`` sizing
that MTCNN pass, as measured by ``benchmarks/compare_landmarks.py``).
``--float16`` stores the weights in half precision (they load back into float32 modules).
A run trained from a pack (WebP crops) thus gets figures and a threshold for the crops it will
see in use. ``--flip-embed`` turns on the test-time flip (see ``FewShotModel.flip_embed``) before
measuring.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def drop_machine_paths(train: dict) -> None:
    """A training config without the paths of the machine it ran on (face pack, teacher file)."""
    pack = train.get("data_kwargs", {}).pop("pack", None)
    weights = train.get("backbone_kwargs", {}).pop("weights_path", None)
    if weights:
        train["backbone_weights"] = Path(weights).name
    train["data_root"] = None
    if train.get("teacher") == "precomputed":  # name the teacher whose embeddings the pack carried
        teacher_file = train.get("teacher_kwargs", {}).pop("file", None)
        if teacher_file:
            train["teacher"] = Path(teacher_file).stem.removeprefix("teacher-")
    if pack:
        train["trained_from_pack"] = Path(pack).name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a face run directory (model.safetensors, config.json, results.json)")
    ap.add_argument("--out", default=str(REPO / "h_model" / "bundled" / "faces_default"))
    ap.add_argument("--data-root", default=None, help="the photos (default: $H_DATA_ROOT, else ../shared/data)")
    ap.add_argument("--far", type=float, default=1e-3)
    ap.add_argument("--float16", action="store_true", help="store the weights in half precision")
    ap.add_argument("--flip-embed", action="store_true",
                    help="embed each crop as the mean of it and its mirror image (test-time flip; twice the cost)")
    ap.add_argument("--detector", choices=("mtcnn", "yunet"), default=None,
                    help="the face detector the model is used with (stored in its config; default: the run's)")
    ap.add_argument("--yunet-sure", type=float, default=None,
                    help="photos with a YuNet face scored under this go to MTCNN (stored in its config; default: the run's)")
    ap.add_argument("--fuse-landmarks", action="store_true",
                    help="average YuNet's five landmarks with MTCNN's before aligning (stored in its config)")
    ap.add_argument("--fuse-min-face", type=float, default=0.0,
                    help="with --fuse-landmarks: MTCNN looks only for faces at least this fraction of YuNet's (0: all)")
    a = ap.parse_args(argv)

    import torch

    from h_model.checkpoint import load_checkpoint, store_float16, write_json
    from h_model.data import load_splits
    from h_model.evaluate import embed_all, evaluate, parse_setting
    from h_model.faces.calibrate import calibrate_checkpoint
    from h_model.preprocess import Preprocess

    src, dst = Path(a.run_dir), Path(a.out)
    cfg = json.loads((src / "config.json").read_text())
    if cfg.get("data", {}).get("name") != "faces":
        raise SystemExit(f"{src} is not a face run (its data is {cfg.get('data', {}).get('name')!r})")
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("model.safetensors", "config.json", "results.json"):
        if (src / f).is_file():
            shutil.copy(src / f, dst / f)
    if not (src / "results.json").is_file():
        write_json(dst / "results.json", {})
    results = json.loads((dst / "results.json").read_text())
    if "ensemble_of" in results:  # member names, not this machine's paths
        results["ensemble_of"] = [Path(p).name for p in results["ensemble_of"]]
        write_json(dst / "results.json", results)
    pack = cfg["data"].pop("pack", None)
    cfg["data"]["data_root"] = None
    trains = [cfg["train"]] if "train" in cfg else []
    for train in trains + [m["train"] for m in cfg.get("ensemble", {}).get("members", []) if m.get("train")]:
        drop_machine_paths(train)
    for m in cfg.get("ensemble", {}).get("members", []):
        m["path"] = Path(m["path"]).name
        if (m.get("source") or {}).get("crops_of"):
            m["source"]["crops_of"] = Path(m["source"]["crops_of"]).name
    if a.flip_embed:
        cfg["model"].setdefault("model_kwargs", {})["flip_embed"] = True
    if a.detector:
        cfg["data"]["detector"] = a.detector
        cfg.setdefault("face", {})["detector"] = a.detector
    if a.yunet_sure is not None:
        cfg["data"]["yunet_sure"] = a.yunet_sure
        cfg.setdefault("face", {})["yunet_sure"] = a.yunet_sure
    if a.fuse_min_face and not a.fuse_landmarks:
        raise SystemExit("--fuse-min-face sizes the --fuse-landmarks pass: give both")
    if a.fuse_landmarks:
        cfg["data"]["fuse_landmarks"] = True
        cfg.setdefault("face", {})["fuse_landmarks"] = True
        for part in (cfg["data"], cfg["face"]):
            part.pop("fuse_min_face", None)
            if a.fuse_min_face:
                part["fuse_min_face"] = a.fuse_min_face
    if a.float16 and "source" in cfg:
        cfg["source"]["stored_as"] = "float16"
    write_json(dst / "config.json", cfg)
    if a.float16:
        store_float16(dst / "model.safetensors")

    torch.set_num_threads(max(1, torch.get_num_threads()))
    d = cfg["data"]
    alignment = d.get("alignment", "eyes")
    _, val, test = load_splits("faces", data_root=a.data_root, image_size=d["image_size"], seed=d["seed"],
                               margin=d["margin"], alignment=alignment, detector=d.get("detector", "mtcnn"),
                               yunet_sure=d.get("yunet_sure"), fuse_landmarks=bool(d.get("fuse_landmarks")),
                               fuse_min_face=float(d.get("fuse_min_face") or 0.0))
    prep = Preprocess.from_dict(cfg["preprocess"])
    val.preprocess = test.preprocess = prep  # the checkpoint's own normalisation
    model, _ = load_checkpoint(dst / "model.safetensors", "cpu")
    z = embed_all(model, test, "cpu")
    res = json.loads((dst / "results.json").read_text())
    for s in ("5w1s", "5w5s", "20w1s"):
        way, shot = parse_setting(s)
        res[s] = evaluate(model, test, way, shot, 5, 1000, device="cpu", embeddings=z)
    res["verification"] = calibrate_checkpoint(dst, model, val, test, "cpu", a.far, margin=d["margin"],
                                               alignment=alignment, test_embeddings=z)
    if pack:
        res["note"] = ("trained from a face pack (WebP crops); these figures are measured on the original "
                       "crops, and the threshold calibrated on them")
    write_json(dst / "results.json", res)
    v = res["verification"]
    print(json.dumps({s: round(res[s]["accuracy"], 4) for s in ("5w1s", "5w5s", "20w1s")}))
    print(f"threshold {v['threshold']:.4f} (FAR {a.far:g}), test pairs accuracy {v['accuracy']:.4f}, "
          f"AUC {v['auc']:.4f}; wrote {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
