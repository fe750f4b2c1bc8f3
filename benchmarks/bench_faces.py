#!/usr/bin/env python
"""Face verification, identification and latency of face checkpoints (and pretrained teachers).

All embedders see the same photos of the held-out identities: the test split of
:func:`h_model.data.faces_splits` (identity-disjoint, drawn per set, seed 0: the photos MTCNN finds a
face in), detected and aligned as each model's config says (detector: "mtcnn" or "yunet"; crop size,
margin, alignment: "eyes" or "five_point"); teachers get the first model's crops. The photos, and so
the pairs, are the same for every model (the run checks this).

- Verification: LFW View-2 style pairs over those crops, identities disjoint across the 10 folds,
  ``--pairs`` per list (when the identities allow): one list over all sets, one over the in-the-wild
  sets only (celeba_subset + celeba_align). 10-fold accuracy (threshold picked on the other nine
  folds), ROC AUC, TAR at FAR 1e-3 and 1e-2 (:func:`h_model.faces.pairs.pair_metrics`). The pair
  lists are written next to the JSON (LFW format + an index of the photo files, so
  ``python -m h_model.faces.evaluate_pairs`` can rerun them from the photos). A list of 3,000 pairs
  holds 1,500 impostors, so its TAR at FAR 1e-3 rests on one or two of them; ``all_test_pairs``
  also gives TAR at FAR 1e-3 and 1e-2 over every pair of test crops (millions of impostors,
  :func:`h_model.faces.pairs.all_pairs_tar_at_far`).
- Identification: half the test identities (those with at least ``--enroll`` + 1 photos) are
  enrolled with ``--enroll`` photos each into a real :class:`h_model.faces.Gallery` (the model's
  head ranks the candidates); their other photos are probes (rank-1, and identified-and-accepted
  at the threshold); every photo of the other half (never enrolled) is a stranger probe
  (false-accept rate at the threshold). Thresholds: the checkpoint's calibrated one (config
  ``"face"``) and one calibrated here at FAR 1e-3 on pairs of the validation identities.
- Speed on this machine: ms per crop embedding (batched), detect + align + embed of one 640x480
  JPEG (a real celeba_subset photo scaled onto a 640x480 canvas; decode included; median of
  ``--latency-runs``), and embedding throughput at batch 32; the last two are timed before the bulk work.

- ``--onnx-reference FILE``: the cosine between the first model's embeddings and onnxruntime's
  (the ONNX file the model was converted from) of the first 200 test crops.
- ``--reuse JSON:NAME``: copy embedder NAME's figures from an earlier results file of this
  benchmark instead of measuring it again, when that file's pair lists are identical to this run's
  (checked line by line); the entry records where it came from.

    python benchmarks/bench_faces.py --model runs/faces/best [--model runs/student ...] \\
        [--name scratch --name distilled] [--teacher dlib] [--pairs 3000] [--out benchmarks/results/faces.json]
    python benchmarks/bench_faces.py --model h_model/bundled/faces_default --name sface --threads 2 \\
        --onnx-reference ../shared/models/opencv_zoo/face_recognition_sface_2021dec_int8bq.onnx \\
        --reuse benchmarks/results/faces.json:teacher:dlib --out benchmarks/results/faces_sface.json
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from h_model.data.faces import crop_kwargs, faces_splits  # noqa: E402
from h_model.data.imageset import ImageSet  # noqa: E402
from h_model.faces import FaceDetector, FaceVerifier, Gallery  # noqa: E402
from h_model.faces.pairs import ImageIndex, PairList, all_pairs_tar_at_far, pair_metrics, sample_folds, write_pairs  # noqa: E402
from h_model.faces.verifier import calibrate_threshold, l2_normalize  # noqa: E402
from h_model.runtime import isa_caps  # noqa: E402

WILD_SETS = ("celeba_subset", "celeba_align")


# -- embedders: a face checkpoint or a teacher, behind one interface ---------------------------------
@dataclass
class Embedder:
    name: str
    kind: str  # "model" or "teacher"
    embed: Callable[[torch.Tensor], np.ndarray]  # uint8 [N, 3, H, W] crops -> raw float32 [N, d]
    model_id: str
    verifier: FaceVerifier | None = None
    config_threshold: float | None = None
    info: dict[str, Any] | None = None


def model_embedder(path: str, name: str) -> Embedder:
    v = FaceVerifier.load(path, device="cpu")
    prep = v.learner.preprocess

    def embed(crops: torch.Tensor, batch: int = 256) -> np.ndarray:
        if tuple(crops.shape[-2:]) == tuple(prep.size) and prep.channels == crops.shape[1]:
            # the Learner's own preprocessing (what FaceVerifier.embed_crops does, minus a per-crop decode)
            return np.concatenate([v.learner.embed(crops[i:i + batch]) for i in range(0, len(crops), batch)])
        return np.concatenate([v.embed_crops(list(crops[i:i + batch]), normalize=False)
                               for i in range(0, len(crops), batch)])

    face = v.learner.config.get("face") or {}
    info = {"path": str(path), "model": v.learner.config.get("model"), "preprocess": prep.to_dict(),
            "face": face, "align": v.detector.settings}
    return Embedder(name, "model", embed, v.model_id, v, v.threshold, info)


def teacher_embedder(name: str, margin: float) -> Embedder | None:
    try:
        from h_model.faces.teachers import load_teacher

        t = load_teacher(name, margin=margin)
    except ImportError as e:  # TeacherUnavailableError is an ImportError
        print(f"teacher {name!r} skipped: {e}", flush=True)
        return None
    return Embedder(f"teacher:{name}", "teacher", lambda crops: np.asarray(t.embed_crops(crops), np.float32),
                    f"teacher:{t.id}", info={"teacher": name, "id": t.id, "dim": t.dim, "settings": t.settings})


# -- pairs ---------------------------------------------------------------------------------------
def align_of(e: Embedder) -> dict[str, Any]:
    return dict(e.verifier.detector.settings)


def onnx_reference(e: Embedder, onnx_path: str, crops: torch.Tensor) -> dict[str, Any]:
    """Cosine between ``e``'s embeddings and onnxruntime's of the same crops (0..255 RGB into the graph;
    with the model's test-time flip, the mean of the graph's outputs for each crop and its mirror image)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    unused = {i.name: np.zeros(i.shape, np.float32) for i in sess.get_inputs()
              if i.name != "data" and not i.name.startswith("scalar_op")}
    out = sess.get_outputs()[0].name

    def run(images: torch.Tensor) -> np.ndarray:
        return np.concatenate([sess.run([out], {**unused, "data": images[i:i + 1].float().numpy()})[0]
                               for i in range(len(images))])

    ref = run(crops)
    if e.verifier is not None and e.verifier.learner.model.flip_embed:  # the port's test-time flip, in ONNX
        ref = (ref + run(crops.flip(-1))) / 2
    cos = np.einsum("ij,ij->i", l2_normalize(e.embed(crops)), l2_normalize(ref))
    return {"file": Path(onnx_path).name, "crops": len(crops), "cosine_min": float(cos.min()),
            "cosine_mean": float(cos.mean())}


def reused(spec: str, files: dict[str, Path], data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``JSON:NAME[=LABEL]`` -> (LABEL or NAME, its results) when the earlier run's pair lists equal this run's."""
    path, _, name = spec.partition(":")
    name, _, label = name.partition("=")
    old = json.loads(Path(path).read_text())
    if name not in old["results"]:
        raise SystemExit(f"{path} has no embedder {name!r} (it has {sorted(old['results'])})")
    check = "identical"
    for k, mine in files.items():
        theirs = Path(old["data"]["pair_files"][k])
        theirs = theirs if theirs.is_absolute() else REPO / theirs
        if theirs.is_file():
            if theirs.read_text() != mine.read_text():
                raise SystemExit(f"cannot reuse {name} from {path}: its {k} pair list {theirs} differs from {mine}")
        else:  # the pair files of that run were not kept: the pairs are a function of the photos and the seed
            keys = ("test_crops", "test_identities", "seed", "test_sets", "pair_lists")
            if any(old["data"].get(x) != data[x] for x in keys):
                raise SystemExit(f"cannot reuse {name} from {path}: its split differs ({keys})")
            check = "same photos, identities, seed and pair counts (its pair files were not kept)"
    via = old["results"][name].get("reused_from")
    return label or name, {**old["results"][name], "reused_from": {"file": path, "name": name, "pair_lists": check,
                                                                   "machine": old.get("machine"),
                                                                   **({"via": via} if via else {})}}


def members_of(data: ImageSet) -> dict[str, list[int]]:
    """Identity name (whitespace -> '_', as in pair files) -> its crop rows in ``data``."""
    out: dict[str, list[int]] = {}
    for row, lab in enumerate(data.labels.tolist()):
        out.setdefault("_".join(data.class_names[lab].split()), []).append(row)
    return out


def build_pairs(members: dict[str, list[int]], pairs: int, folds: int, seed: int,
                sets: tuple[str, ...] | None = None) -> PairList:
    """LFW View-2 style pairs (as :func:`h_model.faces.make_pairs`): identities dealt to folds, each fold
    ``per_fold`` matched then ``per_fold`` mismatched pairs among its own identities; ``per_fold``
    is ``pairs / (2 folds)`` or what the identities allow. Indices are 1-based within an identity."""
    eligible = sorted(n for n in members if sets is None or n.split("/")[0] in sets)
    return sample_folds({n: len(members[n]) for n in eligible}, folds, pairs=pairs, seed=seed)


def pair_scores(z: np.ndarray, pl: PairList, members: dict[str, list[int]]) -> np.ndarray:
    """Cosine of each pair's two crops (``z`` holds normalised embeddings by crop row)."""
    a = np.array([members[p.name1][p.i1 - 1] for p in pl.pairs])
    b = np.array([members[p.name2][p.i2 - 1] for p in pl.pairs])
    return np.einsum("ij,ij->i", z[a], z[b]).astype(np.float64)


def verification(z: np.ndarray, pl: PairList, members: dict[str, list[int]]) -> dict[str, Any]:
    scores, same = pair_scores(z, pl, members), pl.same()
    m = pair_metrics(scores, same, pl.fold_of())
    return {"pairs": len(pl.pairs), "per_fold": pl.per_fold, "folds": pl.folds,
            "identities": len({p.name1 for p in pl.pairs} | {p.name2 for p in pl.pairs}), **m,
            **at_far_1e3(pl, scores, same, m["tar_at_far"]["0.001"]["threshold"])}


def at_far_1e3(pl: PairList, scores: np.ndarray, same: np.ndarray, threshold: float) -> dict[str, Any]:
    """What sets TAR at FAR 1e-3 on a pair list: its highest-scoring impostor pairs (with 1,500
    impostors the threshold sits just above the second), and per set the genuine pairs under it."""
    hardest = [i for i in np.argsort(-scores) if not same[i]][:3]
    missed: dict[str, int] = {}
    for i in np.flatnonzero(same & (scores < threshold)):
        missed[pl.pairs[i].name1.split("/")[0]] = missed.get(pl.pairs[i].name1.split("/")[0], 0) + 1
    return {"hardest_impostors": [{"pair": pl.pairs[i].line(), "score": round(float(scores[i]), 4)} for i in hardest],
            "genuine_under_tar_1e-3_threshold": dict(sorted(missed.items(), key=lambda kv: -kv[1]))}


# -- identification ------------------------------------------------------------------------------
def identification(e: Embedder, z_raw: np.ndarray, members: dict[str, list[int]], enroll: int, seed: int,
                   thresholds: dict[str, float | None]) -> dict[str, Any]:
    """Enroll ``enroll`` photos of half the identities into a fresh Gallery, probe with everything else."""
    rng = np.random.default_rng(seed)
    names = sorted(members)
    names = [names[i] for i in rng.permutation(len(names))]
    half = len(names) // 2
    enrolled = [n for n in names[:half] if len(members[n]) > enroll]
    strangers = names[half:]
    shots, probes = {}, []
    for n in enrolled:
        rows = [members[n][i] for i in rng.permutation(len(members[n]))]
        shots[n] = rows[:enroll]
        probes += [(n, r) for r in rows[enroll:]]
    stranger_rows = [r for n in strangers for r in members[n]]
    with tempfile.TemporaryDirectory() as tmp:
        g = Gallery(Path(tmp) / "g", model_id=e.model_id, verifier=e.verifier)
        g.enroll_many({n: z_raw[rows] for n, rows in shots.items()}, model_id=e.model_id)
        t0 = time.perf_counter()
        known = [g.identify(z_raw[r], k=1, threshold=-math.inf) for _, r in probes]
        unknown = [g.identify(z_raw[r], k=1, threshold=-math.inf) for r in stranger_rows]
        ms = 1e3 * (time.perf_counter() - t0) / max(len(known) + len(unknown), 1)
        method = known[0].method if known else None
        g.close()
    correct = np.array([res.matches[0].name == n for res, (n, _) in zip(known, probes)])
    sim_known = np.array([res.matches[0].similarity for res in known])
    sim_strange = np.array([res.matches[0].similarity for res in unknown])
    out: dict[str, Any] = {
        "enrolled_identities": len(enrolled), "photos_per_identity": enroll, "probes": len(probes),
        "stranger_identities": len(strangers), "stranger_probes": len(stranger_rows), "ranking": method,
        "rank1": float(correct.mean()) if len(correct) else None, "ms_per_identify": ms, "at_threshold": {}}
    for label, t in thresholds.items():
        if t is None:
            continue
        out["at_threshold"][label] = {
            "threshold": t,
            "identified_and_accepted": float((correct & (sim_known >= t)).mean()) if len(correct) else None,
            "false_reject": float((sim_known < t).mean()) if len(correct) else None,
            "stranger_false_accept": float((sim_strange >= t).mean()) if len(sim_strange) else None}
    return out


# -- speed ---------------------------------------------------------------------------------------
def photo_640x480(path: str) -> bytes:
    """A real photo scaled to fit a 640x480 grey canvas, as JPEG bytes (decoding is part of the timing)."""
    img = Image.open(path).convert("RGB")
    scale = min(640 / img.width, 480 / img.height)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
    canvas = Image.new("RGB", (640, 480), (128, 128, 128))
    canvas.paste(img, ((640 - img.width) // 2, (480 - img.height) // 2))
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def timed(fn: Callable[[], Any], runs: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    return {"median_ms": 1e3 * float(np.median(wall)), "p90_ms": 1e3 * float(np.percentile(wall, 90)),
            "min_ms": 1e3 * float(np.min(wall)), "cpu_median_ms": 1e3 * float(np.median(cpu)), "runs": runs}


def speed(e: Embedder, detector: FaceDetector, jpeg: bytes, crops32: torch.Tensor, runs: int) -> dict[str, Any]:
    def pipeline() -> np.ndarray:
        face = detector.largest([jpeg])[0]
        crop = torch.from_numpy(np.array(face.crop)).permute(2, 0, 1)[None].contiguous()
        return l2_normalize(e.embed(crop))

    if e.verifier is not None:  # the verifier's own path: decode, detect, align, embed
        latency = timed(lambda: e.verifier.embed([jpeg]), runs)
    else:
        latency = timed(pipeline, runs)
    detect = timed(lambda: detector.largest([jpeg]), runs)
    batches = max(3, runs // 5)
    t = timed(lambda: e.embed(crops32), batches, warmup=1)
    return {"photo_640x480_detect_align_embed": latency, "photo_640x480_detect_align": detect,
            "batch32_embed": t, "batch32_crops_per_s": 32e3 / t["median_ms"]}


def cpu_model() -> dict[str, Any]:
    """The CPU's model name and the vector/matrix flags that decide its speed (Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor()}
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    keep = [f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma")]
    return {"model": name, "flags": keep, "isa_caps": isa_caps()}


# -- report --------------------------------------------------------------------------------------
def fmt(x: float | None, pct: bool = True, nd: int = 2) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.{nd}f}" if pct else f"{x:.{nd}f}"


def tables(results: dict[str, Any]) -> str:
    lines = ["| embedder | pair set | pairs | ids | accuracy % (10-fold) | AUC | TAR@FAR1e-3 % | TAR@FAR1e-2 % |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for key, v in r["verification"].items():
            tar = v["tar_at_far"]
            lines.append(f"| {name} | {key} | {v['pairs']} | {v['identities']} | {fmt(v['accuracy_mean'])} "
                         f"± {fmt(v['accuracy_std'])} | {fmt(v['auc'], False, 4)} | {fmt(tar['0.001']['tar'])} | "
                         f"{fmt(tar['0.01']['tar'])} |")
    lines += ["", "| embedder | rank-1 % | threshold | identified+accepted % | stranger FAR % | ms/crop (batched) | "
                  "photo 640x480 ms (median, detect+align+embed) | detect+align ms | crops/s @32 |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        ident, sp = r["identification"], r["speed"]
        thr = ident["at_threshold"]
        label = "config" if "config" in thr else "val_far_1e-3"
        t = thr.get(label, {})
        lines.append(f"| {name} | {fmt(ident['rank1'])} | {label} {fmt(t.get('threshold'), False, 3)} | "
                     f"{fmt(t.get('identified_and_accepted'))} | {fmt(t.get('stranger_false_accept'))} | "
                     f"{r['ms_per_crop']:.2f} | {sp['photo_640x480_detect_align_embed']['median_ms']:.1f} | "
                     f"{sp['photo_640x480_detect_align']['median_ms']:.1f} | {sp['batch32_crops_per_s']:.0f} |")
    return "\n".join(lines)


def default_data_root() -> Path:
    root = Path(os.environ.get("H_DATA_ROOT") or REPO.parent / "shared" / "data").expanduser().resolve()
    return root / "faces" if (root / "faces").is_dir() else root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[], help="face checkpoint (repeatable)")
    ap.add_argument("--name", action="append", default=[], help="a label per --model, in order")
    ap.add_argument("--teacher", action="append", default=[], help="pretrained teacher, e.g. dlib (repeatable)")
    ap.add_argument("--data-root", default=None, help="the faces folder (<set>/<identity>/<photo>)")
    ap.add_argument("--pairs", type=int, default=3000, help="pairs per list (when the identities allow)")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--enroll", type=int, default=3, help="photos enrolled per identity")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default="benchmarks/results/faces.json")
    ap.add_argument("--latency-only", action="store_true", help="measure only the speed figures")
    ap.add_argument("--onnx-reference", help="ONNX file of the first model: compare its embeddings with onnxruntime's")
    ap.add_argument("--reuse", action="append", default=[], metavar="JSON:NAME[=LABEL]",
                    help="take NAME's figures from an earlier results file whose pair lists are identical")
    a = ap.parse_args(argv)
    if not a.model and not a.teacher:
        ap.error("give at least one --model or --teacher")
    if a.latency_only and a.reuse:
        ap.error("--latency-only scores no pairs, so there is nothing to --reuse next to it")
    if a.threads:
        torch.set_num_threads(a.threads)
    t_start = time.perf_counter()

    names = a.name + [Path(p).resolve().name if Path(p).is_dir() else Path(p).resolve().parent.name
                      for p in a.model[len(a.name):]]
    embedders = [model_embedder(p, n) for p, n in zip(a.model, names)]
    align = align_of(embedders[0]) if embedders else {"crop_size": 112, "margin": 0.2}
    for t in a.teacher:
        te = teacher_embedder(t, align["margin"])
        if te is not None:
            embedders.append(te)
    if not embedders:
        print("nothing to benchmark", flush=True)
        return 1

    root = Path(a.data_root).expanduser().resolve() if a.data_root else default_data_root()
    crops: dict[str, tuple[ImageSet, ImageSet]] = {}

    def splits_for(settings: dict[str, Any]) -> tuple[ImageSet, ImageSet]:
        """(validation, test) crops aligned by ``settings``; the same photos as the first alignment's."""
        key = json.dumps(settings, sort_keys=True)
        if key not in crops:
            print(f"aligned crops of {root} ({settings}) ...", flush=True)
            _, v, t = faces_splits(root, seed=a.seed, **crop_kwargs(settings))
            if crops:
                v0, t0 = next(iter(crops.values()))
                if v.sources != v0.sources or t.sources != t0.sources:
                    raise SystemExit(f"the {settings} crops come from other photos than the {align} ones")
            crops[key] = (v, t)
        return crops[key]

    val, test = splits_for(align)
    members, val_members = members_of(test), members_of(val)
    lists = {"all": build_pairs(members, a.pairs, a.folds, a.seed),
             "wild": build_pairs(members, a.pairs, a.folds, a.seed, WILD_SETS)}
    val_pairs = build_pairs(val_members, a.pairs, a.folds, a.seed)
    out_dir = Path(a.out).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(a.out).stem
    data = {"root": str(root), "align": align, "seed": a.seed, "test_identities": len(members),
            "test_crops": len(test), "val_identities": len(val_members), "val_pairs": len(val_pairs.pairs),
            "test_sets": sorted({n.split("/")[0] for n in members}),
            "pair_lists": {k: {"pairs": len(pl.pairs), "per_fold": pl.per_fold} for k, pl in lists.items()}}
    if not a.latency_only:  # the pair lists (LFW format) and their photo index, for scores to be rerun
        files = {k: out_dir / f"{stem}_pairs_{k}.txt" for k in lists}
        for k, pl in lists.items():
            write_pairs(files[k], pl)
        index_path = out_dir / f"{stem}_pairs_index.json"
        assert test.sources is not None
        ImageIndex(root, {n: [str(Path(test.sources[r]).resolve().relative_to(root)) for r in rows]
                          for n, rows in members.items()}).save(index_path)
        data.update({"pair_files": {k: str(p) for k, p in files.items()}, "pair_index": str(index_path)})
    print(json.dumps(data, indent=1), flush=True)
    for k, pl in lists.items():
        if len(pl.pairs) < a.pairs:
            print(f"note: the {k} test identities allow only {len(pl.pairs)} pairs ({a.pairs} asked)", flush=True)

    detector = embedders[0].verifier.detector if embedders[0].verifier else FaceDetector(**align)
    wild_rows = [r for n, rows in members.items() if n.split("/")[0] == "celeba_subset" for r in rows]
    jpeg = photo_640x480(test.sources[wild_rows[0]])

    results: dict[str, Any] = {}
    for spec in a.reuse:
        name, r = reused(spec, files, data)
        results[name] = r
        print(f"\n== {name} == reused from {r['reused_from']['file']} ({r['reused_from']['pair_lists']})", flush=True)
    for e in embedders:
        print(f"\n== {e.name} ==", flush=True)
        val, test = splits_for(align_of(e)) if e.verifier is not None else splits_for(align)
        if a.latency_only:
            results[e.name] = {"kind": e.kind, "model_id": e.model_id, "info": e.info,
                               "speed": speed(e, detector, jpeg, test.images[:32].contiguous(), a.latency_runs)}
            print(json.dumps(results[e.name]["speed"], indent=1), flush=True)
            continue
        # timed first, like --latency-only: after the bulk work below, a 2-core machine timed the same photo ~35% slower
        speed_figures = speed(e, detector, jpeg, test.images[:32].contiguous(), a.latency_runs)
        t0 = time.perf_counter()
        z_raw = e.embed(test.images)
        ms_per_crop = 1e3 * (time.perf_counter() - t0) / len(test)
        z = l2_normalize(z_raw)
        zv = l2_normalize(e.embed(val.images))
        t_val = calibrate_threshold(pair_scores(zv, val_pairs, val_members), val_pairs.same(), 1e-3)
        thresholds = {"config": e.config_threshold, "val_far_1e-3": t_val}
        r: dict[str, Any] = {"kind": e.kind, "model_id": e.model_id, "info": e.info, "dim": int(z.shape[1]),
                             "ms_per_crop": ms_per_crop, "thresholds": thresholds}
        if a.onnx_reference and e is embedders[0]:
            r["onnx_reference"] = onnx_reference(e, a.onnx_reference, test.images[:200])
            print(f"vs onnxruntime: {r['onnx_reference']}", flush=True)
        r["verification"] = {k: verification(z, pl, members) for k, pl in lists.items()}
        for k, v in r["verification"].items():
            print(f"{k}: accuracy {100 * v['accuracy_mean']:.2f} ± {100 * v['accuracy_std']:.2f} %, AUC {v['auc']:.4f}, "
                  f"TAR@1e-3 {100 * v['tar_at_far']['0.001']['tar']:.2f} %", flush=True)
        r["all_test_pairs"] = all_pairs_tar_at_far(z, test.labels.numpy())
        print(f"every pair of test crops ({r['all_test_pairs']['impostor_pairs']} impostor pairs): TAR@1e-3 "
              f"{100 * r['all_test_pairs']['tar_at_far']['0.001']['tar']:.2f} %", flush=True)
        r["identification"] = identification(e, z_raw, members, a.enroll, a.seed, thresholds)
        print(f"rank-1 {r['identification']['rank1']:.4f}, {r['identification']['at_threshold']}", flush=True)
        r["speed"] = speed_figures
        print(f"photo 640x480: {r['speed']['photo_640x480_detect_align_embed']['median_ms']:.1f} ms median; "
              f"{r['speed']['batch32_crops_per_s']:.0f} crops/s at batch 32", flush=True)
        results[e.name] = r

    report = {"benchmark": "faces", "data": data, "results": results,
              "targets": {"accuracy_all_above_teacher_dlib": 0.9457, "accuracy_wild_above_teacher_dlib": 0.9417,
                          "tar_at_far_1e-3": 0.90, "rank1": 0.95, "photo_latency_ms_median": 100.0},
              "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "torch_threads": torch.get_num_threads(),
                          "platform": platform.platform(), "torch": torch.__version__,
                          "load_average": os.getloadavg()},
              "notes": "Latencies are wall-clock on this machine (shared: other jobs' load inflates them; "
                       "cpu_median_ms is this process's CPU time). ms_per_crop is the batched embedding of all "
                       "test crops. Identification ranks with the model's head (teachers: prototype cosine).",
              "seconds": time.perf_counter() - t_start}
    if not a.latency_only:
        print("\n" + tables(results))
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
