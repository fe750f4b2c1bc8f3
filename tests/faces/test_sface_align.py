"""Five-point template alignment against hand-computed landmarks, and the setting's plumbing."""
from __future__ import annotations

import math
from pathlib import Path


import numpy as np
import pytest
from PIL import Image

from h_model.detect import FIVE_POINT_TEMPLATE, YUNET_FILE, align_face, five_point_matrix, similarity_transform


def test_landmarks_on_the_template_give_the_identity() -> None:
    assert np.allclose(five_point_matrix(FIVE_POINT_TEMPLATE, 112), [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_scaled_and_shifted_landmarks_are_undone() -> None:
    # a face twice the template's size, 10 px right and 20 px down: the crop halves and shifts back
    m = five_point_matrix(FIVE_POINT_TEMPLATE * 2 + [10, 20], 112)
    assert np.allclose(m, [[0.5, 0, -5], [0, 0.5, -10]], atol=1e-12)
    # a 224 crop wants the template at twice the size: the same face then needs only the shift
    assert np.allclose(five_point_matrix(FIVE_POINT_TEMPLATE * 2 + [10, 20], 224), [[1, 0, -10], [0, 1, -20]], atol=1e-12)


def test_rotated_landmarks_are_levelled() -> None:
    # the template turned 90 degrees clockwise about the origin: (x, y) -> (-y, x); undoing it is (x, y) -> (y, -x)
    rotated = FIVE_POINT_TEMPLATE @ np.array([[0, 1], [-1, 0]])
    assert np.allclose(five_point_matrix(rotated, 112), [[0, 1, 0], [-1, 0, 0]], atol=1e-12)


def test_least_squares_with_noisy_points() -> None:
    # one landmark moved by (+5, 0): the fit spreads the error, the mean of the mapped points is the template's
    pts = FIVE_POINT_TEMPLATE.copy()
    pts[2, 0] += 5
    m = five_point_matrix(pts, 112)
    mapped = pts @ m[:, :2].T + m[:, 2]
    assert np.allclose(mapped.mean(0), FIVE_POINT_TEMPLATE.mean(0), atol=1e-9)
    assert math.hypot(*(mapped[2] - FIVE_POINT_TEMPLATE[2])) < 5


def test_similarity_transform_refuses_bad_points() -> None:
    with pytest.raises(ValueError, match="matching"):
        similarity_transform(np.zeros((5, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((5, 2)), FIVE_POINT_TEMPLATE)
    with pytest.raises(ValueError, match="5 landmarks"):
        five_point_matrix(np.zeros((2, 2)))


def test_align_face_moves_marked_landmarks_onto_the_template() -> None:
    # a 300x300 image with a white 3x3 dot at each landmark of a face 1.5x the template's size
    lm = FIVE_POINT_TEMPLATE * 1.5 + [60, 40]
    a = np.zeros((300, 300, 3), np.uint8)
    for x, y in np.round(lm).astype(int):
        a[y - 1:y + 2, x - 1:x + 2] = 255
    crop = np.asarray(align_face(Image.fromarray(a), np.array([0, 0, 300, 300]), lm, 112, alignment="five_point"))
    assert crop.shape == (112, 112, 3)
    for x, y in np.round(FIVE_POINT_TEMPLATE).astype(int):
        assert crop[y, x, 0] > 128  # the dot landed on the template point
    assert crop[5, 5].tolist() == [0, 0, 0]  # nothing drawn there; outside the photo is black
    with pytest.raises(ValueError, match="alignment must be one of"):
        align_face(Image.fromarray(a), np.array([0, 0, 300, 300]), lm, 112, alignment="tilted")


def test_detector_setting_names_the_alignment_only_when_not_eyes() -> None:
    from h_model.faces import FaceDetector

    assert FaceDetector(crop_size=112).settings == {"crop_size": 112, "margin": 0.2}
    assert FaceDetector(crop_size=112, alignment="five_point").settings == {
        "crop_size": 112, "margin": 0.2, "alignment": "five_point"}
    with pytest.raises(ValueError, match="alignment must be one of"):
        FaceDetector(alignment="eyes-and-nose")


def test_real_photo_crop_puts_the_eyes_on_the_template(face_photo) -> None:
    from h_model.faces import FaceDetector

    face = FaceDetector(crop_size=112, alignment="five_point").detect(face_photo)[0]
    m = five_point_matrix(face.landmarks, 112)
    mapped = face.landmarks @ m[:, :2].T + m[:, 2]
    assert np.abs(mapped[:2] - FIVE_POINT_TEMPLATE[:2]).max() < 4  # eyes within a few pixels
    assert face.crop.size == (112, 112)


def test_yunet_detector_finds_the_same_face(face_photo) -> None:
    from h_model.faces import FaceDetector

    y = FaceDetector(crop_size=112, alignment="five_point", detector="yunet")  # the bundled YuNet file
    assert y.settings == {"crop_size": 112, "margin": 0.2, "alignment": "five_point", "detector": "yunet"}
    fy = y.detect(face_photo)[0]
    assert y._mtcnn is None  # YuNet found the face: MTCNN, the fallback, was never loaded
    fm = FaceDetector(crop_size=112, alignment="five_point").detect(face_photo)[0]
    assert np.abs(fy.landmarks - fm.landmarks).max() < 10  # the two detectors agree within a few pixels
    assert fy.crop.size == (112, 112) and 0.6 <= fy.prob <= 1.0
    with pytest.raises(FileNotFoundError, match="no YuNet model"):
        FaceDetector(yunet_model=Path("missing.onnx"))
    with pytest.raises(ValueError, match="detector must be one of"):
        FaceDetector(detector="haar")
    with pytest.raises(ValueError, match="yunet_model is given but detector='mtcnn'"):
        FaceDetector(detector="mtcnn", yunet_model=YUNET_FILE)


def test_yunet_shared_by_threads_gives_each_photo_its_own_faces(face_photo) -> None:
    """The app runs requests on threads that share one detector: photos of different sizes at once."""
    from concurrent.futures import ThreadPoolExecutor

    from h_model.faces import FaceDetector

    y = FaceDetector(crop_size=112, alignment="five_point", detector="yunet", fallback=False)
    base = Image.open(face_photo).convert("RGB")
    photos = [base.resize((int(base.size[0] * s), int(base.size[1] * s))) for s in (1.0, 1.5, 2.0, 2.5)] * 6
    alone = [y.detect(p)[0].box for p in photos[:4]] * 6
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: y.detect(p)[0].box, photos))
    assert all(np.allclose(a, b) for a, b in zip(alone, together))


def test_yunet_misses_go_to_mtcnn_unless_fallback_is_off(face_photo) -> None:
    from h_model.faces import FaceDetector, NoFaceError

    # a confidence threshold above any score: YuNet finds nothing, so MTCNN is asked
    y = FaceDetector(crop_size=112, alignment="five_point", detector="yunet", yunet_score=1.01)
    fm = FaceDetector(crop_size=112, alignment="five_point").detect(face_photo)[0]
    fy = y.detect(face_photo)[0]
    assert np.allclose(fy.landmarks, fm.landmarks) and np.allclose(fy.box, fm.box)
    off = FaceDetector(crop_size=112, alignment="five_point", detector="yunet", yunet_score=1.01, fallback=False)
    with pytest.raises(NoFaceError):
        off.detect(face_photo)
    assert off._mtcnn is None


def test_yunet_sure_hands_an_unsure_photo_to_mtcnn(faces_root) -> None:
    """A skater far from the camera: YuNet's only face (score about 0.63) is her raised hand and
    skate; with yunet_sure=0.9 the photo goes to MTCNN, which finds her face."""
    from h_model.faces import FaceDetector

    path = faces_root / "celeba_subset" / "07397" / "186925.jpg"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    low = FaceDetector(crop_size=112, alignment="five_point", detector="yunet").detect(path)
    sure = FaceDetector(crop_size=112, alignment="five_point", detector="yunet", yunet_sure=0.9).detect(path)
    assert len(low) == 1 and 0.6 <= low[0].prob < 0.9
    assert np.allclose(low[0].box, [69, 46, 90, 72], atol=3)          # the hand and skate, not a face
    assert sure[0].prob > 0.9 and np.allclose(sure[0].box, [110, 94, 130, 121], atol=3)  # the face, by MTCNN
    mtcnn = FaceDetector(crop_size=112, alignment="five_point").detect(path)
    assert len(sure) == len(mtcnn) and np.allclose(sure[0].box, mtcnn[0].box)
    off = FaceDetector(crop_size=112, alignment="five_point", detector="yunet", yunet_sure=0.9, fallback=False)
    assert np.allclose(off.detect(path)[0].box, low[0].box) and off._mtcnn is None  # no fallback: YuNet alone


def test_yunet_sure_keeps_every_face_of_a_photo_it_hands_on(face_photo) -> None:
    """Two faces side by side: whatever YuNet's scores, the photo keeps two faces (MTCNN's or YuNet's)."""
    from h_model.faces import FaceDetector

    one = Image.open(face_photo).convert("RGB")
    pair = Image.new("RGB", (2 * one.size[0], one.size[1]))
    pair.paste(one, (0, 0))
    pair.paste(one.transpose(Image.FLIP_LEFT_RIGHT), (one.size[0], 0))
    for sure in (None, 0.9, 1.0):
        faces = FaceDetector(crop_size=112, alignment="five_point", detector="yunet", yunet_sure=sure).detect(pair)
        assert len(faces) == 2, sure
    assert FaceDetector(crop_size=112, alignment="five_point", detector="yunet", yunet_sure=1.0).detect(pair)[0].prob \
        == pytest.approx(FaceDetector(crop_size=112, alignment="five_point").detect(pair)[0].prob)  # MTCNN's


def test_yunet_sure_is_a_crop_setting_but_not_part_of_the_model_fingerprint(tmp_path) -> None:
    from h_model.faces import FaceDetector, FaceVerifier
    from h_model.faces.verifier import model_fingerprint

    from tests.faces.face_helpers import make_checkpoint

    base = {"crop_size": 112, "margin": 0.0, "alignment": "five_point", "detector": "yunet"}
    assert FaceDetector(**base).settings == base
    assert FaceDetector(**base, yunet_sure=0.9).settings == {**base, "yunet_sure": 0.9}
    assert "yunet_sure" not in FaceDetector(crop_size=112, yunet_sure=0.9).settings  # MTCNN: no YuNet
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="yunet_sure"):
            FaceDetector(**base, yunet_sure=bad)
    ckpt = make_checkpoint(tmp_path / "run", face={"crop_size": 112, "margin": 0.0, "alignment": "five_point",
                                                   "detector": "yunet", "yunet_sure": 0.85})
    assert model_fingerprint(ckpt, base) == model_fingerprint(ckpt, {**base, "yunet_sure": 0.9})
    assert model_fingerprint(ckpt, base) != model_fingerprint(ckpt, {**base, "crop_size": 96})
    v = FaceVerifier.load(ckpt, device="cpu")
    assert v.detector.detector == "yunet" and v.detector.yunet_sure == 0.85
    assert v.detector.settings["yunet_sure"] == 0.85


def test_bundled_yunet_file_is_the_opencv_zoo_one() -> None:
    import hashlib

    assert hashlib.sha256(YUNET_FILE.read_bytes()).hexdigest() == \
        "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
    for name in ("LICENSE", "NOTICE"):
        assert (YUNET_FILE.parent / name).is_file()
    assert "MIT License" in (YUNET_FILE.parent / "LICENSE").read_text()


def test_fuse_landmarks_averages_the_best_overlapping_face_only() -> None:
    from h_model.detect import box_iou, fuse_landmarks

    assert box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 30, 30]])).tolist() == [[1 / 3, 0.0]]
    boxes = np.array([[0, 0, 10, 10], [100, 100, 110, 110]], np.float32)
    lm = np.zeros((2, 5, 2), np.float32)
    other_lm = np.stack([np.full((5, 2), 4.0), np.full((5, 2), 8.0)]).astype(np.float32)
    other = (np.array([[50, 50, 60, 60], [1, 0, 11, 10]], np.float32), np.ones(2, np.float32), other_lm)
    b, s, fused = fuse_landmarks((boxes, np.array([0.9, 0.8], np.float32), lm), other)
    assert b is boxes and s.tolist() == pytest.approx([0.9, 0.8])
    assert fused[0].tolist() == [[4.0, 4.0]] * 5          # mean of 0 and the overlapping face's 8
    assert fused[1].tolist() == [[0.0, 0.0]] * 5          # nothing overlaps it: its own landmarks
    assert lm[0].max() == 0                               # the input is not changed
    assert fuse_landmarks((boxes, s, lm), None)[2] is lm


def test_fused_landmarks_are_a_yunet_crop_setting_in_the_fingerprint(tmp_path, face_photo) -> None:
    from h_model.faces import FaceDetector, FaceVerifier
    from h_model.faces.verifier import model_fingerprint

    from tests.faces.face_helpers import make_checkpoint

    base = {"crop_size": 112, "margin": 0.0, "alignment": "five_point", "detector": "yunet"}
    with pytest.raises(ValueError, match="fuse_landmarks"):
        FaceDetector(crop_size=112, alignment="five_point", fuse_landmarks=True)  # MTCNN alone: nothing to fuse
    det = FaceDetector(**base, fuse_landmarks=True)
    assert det.settings == {**base, "fuse_landmarks": True}
    yunet = FaceDetector(**base).detect(face_photo)[0]
    mtcnn = FaceDetector(crop_size=112, alignment="five_point").detect(face_photo)[0]
    fused = det.detect(face_photo)[0]
    assert np.allclose(fused.box, yunet.box) and fused.prob == pytest.approx(yunet.prob)
    assert np.allclose(fused.landmarks, (yunet.landmarks + mtcnn.landmarks) / 2, atol=1e-3)
    ckpt = make_checkpoint(tmp_path / "run", face={**base, "fuse_landmarks": True})
    v = FaceVerifier.load(ckpt, device="cpu")
    assert v.detector.fuse_landmarks and v.detector.settings == {**base, "fuse_landmarks": True}
    assert model_fingerprint(ckpt, base) != model_fingerprint(ckpt, {**base, "fuse_landmarks": True})




def test_fuse_min_face_sizes_the_mtcnn_pass_from_yunets_smallest_face() -> None:
    from h_model.faces import FaceDetector

    base = {"crop_size": 112, "margin": 0.0, "alignment": "five_point", "detector": "yunet"}
    with pytest.raises(ValueError, match="fuse_landmarks=True"):
        FaceDetector(**base, fuse_min_face=0.7)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="fuse_min_face"):
            FaceDetector(**base, fuse_landmarks=True, fuse_min_face=bad)
    det = FaceDetector(**base, fuse_landmarks=True, fuse_min_face=0.6)
    boxes = np.array([[0, 0, 100, 150], [10, 10, 60, 90]], np.float32)  # shortest side: 50 px
    found = (boxes, np.ones(2, np.float32), np.zeros((2, 5, 2), np.float32))
    assert det._fuse_size(found) == 30                                    # 0.6 * 50
    assert det._fuse_size((boxes / 5, *found[1:])) == 20                  # 0.6 * 10 = 6: MTCNN's min_face_size
    assert FaceDetector(**base, fuse_landmarks=True)._fuse_size(found) == 20  # 0: the whole pyramid


def test_sized_fusion_averages_with_mtcnn_run_at_that_size(tmp_path, face_photo) -> None:
    from h_model.detect import load_rgb
    from h_model.faces import FaceDetector, FaceVerifier
    from h_model.faces.verifier import model_fingerprint

    from tests.faces.face_helpers import make_checkpoint

    base = {"crop_size": 112, "margin": 0.0, "alignment": "five_point", "detector": "yunet"}
    sized = {**base, "fuse_landmarks": True, "fuse_min_face": 0.7}
    det = FaceDetector(**sized)
    assert det.settings == sized
    yunet = FaceDetector(**base).detect(face_photo)[0]
    side = det._fuse_size(det._find([det._downscale(load_rgb(face_photo))[0]], "yunet")[0])
    assert side > 20                                                     # the photo's face is large: a short pyramid
    mtcnn = FaceDetector(crop_size=112, alignment="five_point", min_face_size=side).detect(face_photo)[0]
    fused = det.detect(face_photo)[0]
    assert np.allclose(fused.box, yunet.box)
    assert np.allclose(fused.landmarks, (yunet.landmarks + mtcnn.landmarks) / 2, atol=1e-3)
    ckpt = make_checkpoint(tmp_path / "run", face=sized)
    v = FaceVerifier.load(ckpt, device="cpu")
    assert v.detector.fuse_min_face == 0.7 and v.detector.settings == sized
    assert model_fingerprint(ckpt, sized) != model_fingerprint(ckpt, {**base, "fuse_landmarks": True})
