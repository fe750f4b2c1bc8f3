import io

import numpy as np
import pytest
import torch
from PIL import Image

from h_model.preprocess import ImageDecodeError, Preprocess, load_image, load_images

GRAY = Preprocess(size=(4, 4), channels=1)
RGB = Preprocess(size=(4, 4), channels=3)


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("mode,value,expect", [
    ("L", 200, 200), ("1", 1, 255), ("RGB", (200, 200, 200), 200), ("I;16", 65535, 255),
    ("RGBA", (10, 10, 10, 0), 255),  # fully transparent -> white background
    ("LA", (10, 255), 10),
])
def test_every_mode_becomes_the_checkpoint_mode(mode, value, expect):
    img = Image.new(mode, (4, 4), value)
    out = load_image(img, GRAY)
    assert out.dtype == torch.uint8 and out.shape == (1, 4, 4)
    assert int(out[0, 0, 0]) == expect


def test_palette_and_rgb_output():
    img = Image.new("P", (8, 8))
    img.putpalette([255, 0, 0] * 256)
    out = load_image(img, RGB)
    assert out.shape == (3, 4, 4)
    assert out[:, 0, 0].tolist() == [255, 0, 0]


def test_arrays_tensors_bytes_and_files_agree(tmp_path):
    a = (np.arange(16, dtype=np.uint8) * 16).reshape(4, 4)
    p = tmp_path / "x.png"
    Image.fromarray(a).save(p)
    ref = load_image(p, GRAY)
    assert torch.equal(ref[0], torch.from_numpy(a))
    assert torch.equal(load_image(str(p), GRAY), ref)
    assert torch.equal(load_image(p.read_bytes(), GRAY), ref)
    assert torch.equal(load_image(a, GRAY), ref)
    assert torch.equal(load_image(torch.from_numpy(a), GRAY), ref)
    assert torch.equal(load_image(a.astype(np.float32) / 255.0, GRAY), ref)
    assert torch.equal(load_image(a.astype(np.uint16) * 257, GRAY), ref)


def test_invert_and_normalize():
    prep = Preprocess(size=(2, 2), channels=1, invert=True, mean=(0.5,), std=(0.5,))
    x = load_image(np.full((2, 2), 255, np.uint8), prep)
    assert x.flatten().tolist() == [0, 0, 0, 0]
    assert prep.normalize(x).flatten().tolist() == [-1.0] * 4


def test_exif_orientation_is_applied():
    img = Image.new("L", (4, 2), 0)
    img.putpixel((0, 0), 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), quality=100)
    out = load_image(buf.getvalue(), Preprocess(size=(4, 2), channels=1))
    assert out.shape == (1, 4, 2)  # portrait after EXIF rotation (H=4, W=2)


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ImageDecodeError, match="not found"):
        load_image(tmp_path / "missing.png", GRAY)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        load_image(bad, GRAY)
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(png_bytes(Image.new("L", (64, 64), 3))[:60])
    with pytest.raises(ImageDecodeError):
        load_image(trunc, GRAY)
    with pytest.raises(ImageDecodeError, match="NaN"):
        load_image(np.full((4, 4), np.nan, np.float32), GRAY)
    with pytest.raises(ImageDecodeError, match="shape"):
        load_image(np.zeros((4, 4, 7), np.uint8), GRAY)
    with pytest.raises(ImageDecodeError, match="unsupported"):
        load_image(12, GRAY)
    with pytest.raises(ImageDecodeError, match="image #1"):
        load_images([np.zeros((4, 4), np.uint8), b"junk"], GRAY)
