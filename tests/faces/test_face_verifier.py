"""FaceVerifier plumbing with a tiny untrained checkpoint (no accuracy claims), calibration, CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from h_model.checkpoint import resolve_checkpoint
from h_model.faces import FaceVerifier, NoFaceError, NoModelError, calibrate_threshold, save_threshold
from h_model.faces.__main__ import main as faces_main

from tests.faces.face_helpers import CROP, make_checkpoint

REPO = Path(__file__).resolve().parents[2]


def test_missing_bundled_model_is_a_clear_error(monkeypatch, tmp_path: Path) -> None:
    from h_model import bundled

    monkeypatch.setitem(bundled.BUNDLED, "faces", tmp_path / "nowhere")
    with pytest.raises(NoModelError, match="bundled faces model is missing"):
        FaceVerifier.load(None)


def test_bundled_model_loads_with_its_calibrated_threshold(faces_root: Path) -> None:
    v = FaceVerifier.load(None, device="cpu")
    assert v.threshold is not None and 0.0 < v.threshold < 1.0 and v.far == pytest.approx(1e-3)
    people = [sorted((faces_root / "orl" / f"s{i}").iterdir())[:3] for i in (1, 2, 3)]
    z = v.embed([p for photos in people for p in photos]).reshape(3, 3, -1)
    sims = np.einsum("aid,bjd->aibj", z, z)
    same = np.mean([sims[a, i, a, j] for a in range(3) for i in range(3) for j in range(3) if i < j])
    diff = np.mean([sims[a, i, b, j] for a in range(3) for b in range(3) if a < b for i in range(3) for j in range(3)])
    assert diff < v.threshold <= same  # the calibrated threshold separates the two on average
    flat = sims.reshape(9, 9) - 2 * np.eye(9)
    assert (flat.argmax(1) // 3 == np.arange(9) // 3).all()  # every photo's nearest other photo: same person


def test_loaded_verifier_folds_batchnorm_and_embeds_like_the_checkpoint(faces_root: Path) -> None:
    import torch

    import h_model
    from h_model.bundled import BUNDLED

    v = FaceVerifier.load(None, device="cpu")
    convs_bn = [s for s in v.learner.model.modules() if isinstance(s, torch.nn.Sequential)
                and any(isinstance(a, torch.nn.Conv2d) and isinstance(b, torch.nn.BatchNorm2d) for a, b in zip(s, s[1:]))]
    assert convs_bn == []  # every BatchNorm after a convolution is folded into it
    crops = [f.crop for f in v.detector.largest(sorted((faces_root / "orl" / "s1").iterdir())[:4])]
    ref = h_model.load(BUNDLED["faces"], device="cpu").embed(crops)  # the checkpoint as it is stored
    z = v.embed_crops(crops, normalize=False)
    cos = np.sum(z * ref, 1) / np.linalg.norm(z, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99999


def test_embed_is_normalised_and_uses_the_largest_face(verifier, faces_root: Path, face_photo: Path) -> None:
    orl = faces_root / "orl" / "s1" / "1.pgm"
    z = verifier.embed([face_photo, orl])
    assert z.shape[0] == 2 and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    crop = verifier.detect(face_photo)[0].crop
    assert crop.size == (CROP, CROP)
    np.testing.assert_allclose(z[0], verifier.embed_crops([crop])[0], atol=1e-5)
    raw = verifier.embed([face_photo], normalize=False)[0]
    np.testing.assert_allclose(raw / np.linalg.norm(raw), z[0], atol=1e-5)
    with pytest.raises(TypeError, match="single image"):
        verifier.embed(str(face_photo))
    blank = np.full((120, 120, 3), 128, np.uint8)
    with pytest.raises(NoFaceError) as e:
        verifier.embed([face_photo, blank])
    assert e.value.index == 1


def test_verify_uses_the_checkpoint_threshold(tmp_path: Path, face_photo: Path, faces_root: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "run", seed=1)
    v = FaceVerifier.load(ckpt, device="cpu")
    other = faces_root / "orl" / "s2" / "1.pgm"
    with pytest.raises(ValueError, match="no calibrated face threshold"):
        v.verify(face_photo, other)
    s_same = v.score(face_photo, face_photo)
    s_diff = v.score(face_photo, other)
    assert s_same == pytest.approx(1.0, abs=1e-5)
    threshold = (s_same + s_diff) / 2
    cfg_before = json.loads(resolve_checkpoint(ckpt)[1].read_text())
    save_threshold(ckpt, threshold, far=1e-3)
    cfg = json.loads(resolve_checkpoint(ckpt)[1].read_text())
    assert cfg["face"]["threshold"] == threshold and cfg["face"]["crop_size"] == CROP
    assert {k: v for k, v in cfg.items() if k != "face"} == {k: v for k, v in cfg_before.items() if k != "face"}
    assert not [p for p in ckpt.iterdir() if p.name.endswith(".tmp")]
    v2 = FaceVerifier.load(ckpt, device="cpu")
    assert v2.threshold == threshold and v2.model_id == v.model_id  # the face entry is not the model
    r = v2.verify(face_photo, face_photo)
    assert r.same and r.score == pytest.approx(1.0, abs=1e-5) and r.threshold == threshold and r.far == 1e-3
    r = v2.verify(face_photo, other)  # below the midway threshold: refused
    assert not r.same and r.score == pytest.approx(s_diff, abs=1e-5) and r.score < threshold
    assert v2.verify(face_photo, other, threshold=-1.0).same
    other_ckpt = make_checkpoint(tmp_path / "run2", seed=2)
    assert FaceVerifier.load(other_ckpt, device="cpu").model_id != v.model_id


def test_calibrate_threshold_known_answers() -> None:
    imp = np.linspace(0.0, 0.5, 1000)  # 1000 impostors, the best at 0.5
    gen = np.array([0.45, 0.6, 0.9])
    scores = np.r_[gen, imp]
    same = np.r_[np.ones(3, bool), np.zeros(1000, bool)]
    t = calibrate_threshold(scores, same, far=1e-3)  # one impostor may pass
    assert imp[-2] < t <= imp[-1] and ((imp >= t).sum() == 1)
    t0 = calibrate_threshold(scores, same, far=0.0)
    assert t0 > 0.5 and (imp >= t0).sum() == 0 and t0 < 0.5 + 1e-9
    t2 = calibrate_threshold(scores, same, far=1e-2)
    assert (imp >= t2).sum() == 10 and (imp >= np.nextafter(t2, -1)).sum() == 11
    with pytest.raises(ValueError):
        calibrate_threshold([0.1, 0.2], [True, True])


def test_cli_verify_decides_with_the_bundled_model(face_ckpt: Path, faces_root: Path, capsys) -> None:
    """Two photos of one person are the same person, two people are not (the bundled model's
    calibrated threshold); ``--threshold`` overrides it; a photo without a face is an error."""
    orl = faces_root / "orl"
    threshold = FaceVerifier.load(None, device="cpu").threshold

    def verify(a: Path, b: Path, *args: str) -> dict:
        assert faces_main(["verify", str(a), str(b), "--device", "cpu", *args]) == 0
        return json.loads(capsys.readouterr().out)

    for person, photo, other in (("s1", "2.pgm", "s2"), ("s4", "3.pgm", "s5")):
        first = orl / person / "1.pgm"
        different = (first, orl / other / "1.pgm")
        yes, no = verify(first, orl / person / photo), verify(*different)
        assert yes["same"] is True and yes["score"] >= threshold + 0.05 and yes["threshold"] == threshold, yes
        assert no["same"] is False and no["score"] <= threshold - 0.05 and no["threshold"] == threshold, no
        assert yes["faces"] == no["faces"] == [1, 1]
        lenient = verify(*different, "--threshold", str(no["score"] - 0.01))  # the same score, a lower bar
        assert lenient["same"] is True and lenient["score"] == pytest.approx(no["score"], abs=1e-6)
    blank = Path(os.environ.get("TMPDIR", "/tmp")) / f"blank_{os.getpid()}.png"
    from PIL import Image
    Image.new("RGB", (100, 100), (90, 90, 90)).save(blank)
    try:
        assert faces_main(["verify", str(orl / "s1" / "1.pgm"), str(blank), "--model", str(face_ckpt),
                           "--device", "cpu"]) == 2
        assert "NoFaceError" in json.loads(capsys.readouterr().out)["error"]
    finally:
        blank.unlink()


def test_cli_module_runs_as_a_subprocess(face_ckpt: Path, face_photo: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "h_model.faces", "verify", str(face_photo), str(face_photo),
                        "--model", str(face_ckpt), "--device", "cpu"], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["score"] == pytest.approx(1.0, abs=1e-5) and out["same"] is None and "no calibrated" in out["note"]
