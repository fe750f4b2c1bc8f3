"""FaceDetector on real photos in every format and mode, and every kind of bad input."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps, features

from h_model.faces import FaceDetector, ImageDecodeError, NoFaceError
from h_model.faces.detect import alignment_matrix

from tests.faces.face_helpers import CROP


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return float(inter / (area(a) + area(b) - inter))


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_real_photos_of_every_shared_format(detector, faces_root: Path) -> None:
    files = [sorted((faces_root / ds).iterdir())[0] for ds in
             ("celeba_subset", "orl", "yalefaces", "casia_facev5_subset", "ar_face_lowres")]
    files = [sorted(p for p in d.iterdir())[0] for d in files]
    assert {f.suffix for f in files} >= {".jpg", ".pgm", ".gif", ".png"}
    for path, faces in zip(files, detector.detect_many(files)):
        assert faces, f"no face found in {path}"
        f = faces[0]
        w, h = Image.open(path).size
        assert f.prob > 0.9 and f.crop.size == (CROP, CROP) and f.crop.mode == "RGB"
        cx, cy = (f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2
        assert 0 <= cx <= w and 0 <= cy <= h, path
        assert f.landmarks.shape == (5, 2)
        assert (f.landmarks[:, 0] > f.box[0] - 5).all() and (f.landmarks[:, 0] < f.box[2] + 5).all()


def test_tightly_cropped_faces_found_by_pad_retry(faces_root: Path) -> None:
    path = faces_root / "extended_yaleb_cropped" / "yaleB01" / "yaleB01_P00A+000E+00.png"
    if not path.is_file():
        pytest.skip("Extended Yale B sample missing")
    with pytest.raises(NoFaceError):
        FaceDetector(crop_size=CROP, pad_retry=0).detect(path)
    faces = FaceDetector(crop_size=CROP, pad_retry=0.25).detect(path)
    w, h = Image.open(path).size
    b, lm = faces[0].box, faces[0].landmarks
    assert abs((b[0] + b[2]) / 2 - w / 2) < 0.2 * w and abs((b[1] + b[3]) / 2 - h / 2) < 0.2 * h  # padding undone
    assert (lm >= 0).all() and (lm[:, 0] < w).all() and (lm[:, 1] < h).all()


def test_modes_formats_and_in_memory_inputs(detector, face_photo: Path) -> None:
    ref = detector.detect(face_photo)[0].box
    rgb = Image.open(face_photo).convert("RGB")
    gray = rgb.convert("L")
    rgba = rgb.convert("RGBA")
    alpha = np.full((rgb.size[1], rgb.size[0]), 255, np.uint8)
    alpha[:8] = 0
    rgba.putalpha(Image.fromarray(alpha))
    g16 = Image.fromarray((np.asarray(gray, np.uint16) * 257).astype(np.uint16))
    assert g16.mode.startswith("I;16")
    inputs = {
        "path str": str(face_photo), "path": face_photo, "bytes": face_photo.read_bytes(), "PIL": rgb,
        "gray PNG": encode(gray, "PNG"), "RGBA PNG": encode(rgba, "PNG"),
        "palette PNG": encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "16-bit PNG": encode(g16, "PNG"), "PGM": encode(gray, "PPM"), "GIF": encode(rgb, "GIF"),
        "JPEG": encode(rgb, "JPEG", quality=85), "uint8 array": np.asarray(rgb),
        "uint16 array": np.asarray(rgb).astype(np.uint16) * 257, "float array": np.asarray(rgb) / 255.0,
        "CHW tensor": torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1),
    }
    if features.check("webp"):
        inputs["WebP"] = encode(rgb, "WEBP", quality=90)
    names = list(inputs)
    results = detector.detect_many([inputs[n] for n in names])
    for name, faces in zip(names, results):
        assert faces, f"{name}: no face"
        assert iou(faces[0].box, ref) > 0.7, f"{name}: box {faces[0].box} vs {ref}"


def test_exif_orientation_is_applied(detector, face_photo: Path) -> None:
    rgb = Image.open(face_photo).convert("RGB")
    ref = detector.detect(rgb)[0].box
    stored = rgb.transpose(Image.Transpose.ROTATE_90)  # what a sideways camera writes
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(stored, "JPEG", quality=92, exif=exif.tobytes())
    assert ImageOps.exif_transpose(Image.open(io.BytesIO(data))).size == rgb.size
    faces = detector.detect(data)
    assert iou(faces[0].box, ref) > 0.7


def test_alignment_levels_the_eyes(detector, face_photo: Path) -> None:
    rot = Image.open(face_photo).convert("RGB").rotate(25, expand=True, fillcolor=(128, 128, 128))
    f = detector.detect(rot)[0]
    (lx, ly), (rx, ry) = f.landmarks[0], f.landmarks[1]
    assert abs(ry - ly) > 10  # the eyes really are tilted in the input
    m = alignment_matrix(f.box, f.landmarks, CROP, detector.margin)
    eyes = np.c_[f.landmarks[:2], np.ones(2)] @ m.T
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1.0
    assert eyes[0, 0] < CROP / 2 < eyes[1, 0] and (eyes[:, 1] < CROP / 2).all()


def test_several_faces_all_returned_largest_first(detector, faces_root: Path) -> None:
    a = Image.open(sorted((faces_root / "celeba_align" / "00082").iterdir())[0]).convert("RGB")
    other = sorted(p for p in (faces_root / "celeba_align").iterdir() if p.is_dir())[1]
    b = Image.open(sorted(other.iterdir())[0]).convert("RGB")
    b = b.resize((int(b.size[0] * 0.6), int(b.size[1] * 0.6)), Image.BILINEAR)
    canvas = Image.new("RGB", (460, 260), (128, 128, 128))
    canvas.paste(b, (20, 60))
    canvas.paste(a, (260, 20))
    faces = detector.detect(canvas)
    assert len(faces) >= 2
    assert all(x.area >= y.area for x, y in zip(faces, faces[1:]))
    centers = [((f.box[0] + f.box[2]) / 2) for f in faces[:2]]
    assert centers[0] > 260 and centers[1] < 20 + b.size[0]


def test_no_face_is_a_typed_error(detector) -> None:
    ramp = np.tile(np.linspace(40, 220, 320, dtype=np.float32), (240, 1)).astype(np.uint8)
    with pytest.raises(NoFaceError) as e:
        detector.detect(ramp)
    assert isinstance(e.value, ValueError)
    with pytest.raises(NoFaceError):
        detector.detect(np.zeros((8, 8, 3), np.uint8))  # smaller than any detectable face
    with pytest.raises(NoFaceError) as e:
        detector.largest([np.zeros((8, 8, 3), np.uint8)])
    assert e.value.index == 0


def png_header_only(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def test_bad_inputs_fail_clearly(detector, face_photo: Path, tmp_path: Path) -> None:
    data = face_photo.read_bytes()
    bad = {"truncated JPEG": data[: len(data) // 2], "not an image": b"hello, this is text" * 50,
           "missing file": tmp_path / "nope.jpg", "bad array": np.zeros((4, 4, 2), np.uint8),
           "NaN array": np.full((40, 40, 3), np.nan), "decompression bomb": png_header_only(30000, 30000)}
    (tmp_path / "empty.png").write_bytes(b"")
    bad["empty file"] = tmp_path / "empty.png"
    for name, src in bad.items():
        with pytest.raises(ImageDecodeError):
            detector.detect(src)
    with pytest.raises(ImageDecodeError, match="image #1"):
        detector.detect_many([face_photo, b"junk"])


def test_huge_images_are_downscaled_for_detection(face_photo: Path) -> None:
    small = Image.open(face_photo).convert("RGB")
    det = FaceDetector(crop_size=CROP, max_side=400)
    ref = det.detect(small)[0].box
    big = small.resize((small.size[0] * 8, small.size[1] * 8), Image.BICUBIC)
    assert det._downscale(big)[1] < 1.0
    f = det.detect(big)[0]
    assert iou(f.box / 8.0, ref) > 0.7  # boxes in the original (8x) coordinates
    assert f.crop.size == (CROP, CROP)


def test_astronaut_if_scikit_image_is_installed(detector) -> None:
    data = pytest.importorskip("skimage.data", reason="scikit-image is not installed (optional sample image)")
    faces = detector.detect(data.astronaut())
    assert len(faces) >= 1 and faces[0].prob > 0.9
