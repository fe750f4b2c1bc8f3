"""Image preprocessing: the one path from any image input to the model's tensors.

Datasets decode their files with :func:`load_image`, and :class:`h_model.learner.Learner`
decodes a caller's images with the same function and the checkpoint's own :class:`Preprocess`,
so training, evaluation and prediction see identical pixels.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = Union[str, Path, bytes, Image.Image, np.ndarray, torch.Tensor]

# Refuse decompression bombs: no image over 100 megapixels is decoded.
Image.MAX_IMAGE_PIXELS = 100_000_000


class ImageDecodeError(ValueError):
    """An input could not be read as an image (missing, truncated, not an image, bad array)."""


@dataclass(frozen=True)
class Preprocess:
    """How raw images become model input; stored in every checkpoint.

    ``size`` is (height, width); ``channels`` is 1 (grayscale) or 3 (RGB); ``invert`` maps
    dark-on-light drawings (Omniglot) to bright strokes on black; ``mean``/``std`` normalise
    the [0, 1] pixel values per channel.
    """

    size: tuple[int, int] = (28, 28)
    channels: int = 1
    invert: bool = False
    mean: tuple[float, ...] = field(default=(0.0,))
    std: tuple[float, ...] = field(default=(1.0,))

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) not in (1, self.channels) or len(self.std) not in (1, self.channels):
            raise ValueError("mean and std need 1 or `channels` values")
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        return cls(size=tuple(d["size"]), channels=d["channels"], invert=d["invert"],
                   mean=tuple(d["mean"]), std=tuple(d["std"]))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``[..., C, H, W]`` -> normalised float32 on the same device."""
        x = x.float().div_(255.0)
        shape = (-1, 1, 1)
        mean = torch.tensor(self.mean, device=x.device).view(shape)
        std = torch.tensor(self.std, device=x.device).view(shape)
        if self.mean != (0.0,) or self.std != (1.0,):
            x = (x - mean) / std
        return x


def _to_pil(src: ImageInput) -> Image.Image:
    """Open any supported input as a PIL image, EXIF orientation applied."""
    if isinstance(src, Image.Image):
        img = src
    elif isinstance(src, (str, Path, bytes)):
        try:
            img = Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
            img.load()
        except FileNotFoundError as e:
            raise ImageDecodeError(f"image file not found: {src}") from e
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
            name = "<bytes>" if isinstance(src, bytes) else str(src)
            raise ImageDecodeError(f"cannot decode image {name}: {e}") from e
        img = ImageOps.exif_transpose(img)
    elif isinstance(src, (np.ndarray, torch.Tensor)):
        img = _array_to_pil(src)
    else:
        raise ImageDecodeError(f"unsupported image input of type {type(src).__name__}")
    return img


def _array_to_pil(a: np.ndarray | torch.Tensor) -> Image.Image:
    """HW, HWC or CHW arrays (uint8, uint16 or float in [0, 1]) -> PIL image."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        if a.dim() == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
            a = a.permute(1, 2, 0)  # CHW -> HWC
        a = a.numpy()
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageDecodeError(f"array image must be HW, HWC or CHW with 1/3/4 channels, got shape {a.shape}")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        a = (a.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageDecodeError("array image contains NaN or infinity")
        a = (np.clip(a, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    else:
        raise ImageDecodeError(f"unsupported array dtype {a.dtype}")
    return Image.fromarray(np.ascontiguousarray(a))


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode (1, L, P, RGBA, LA, I;16, I, F, CMYK...) -> L or RGB; alpha over white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float32)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray((np.clip(a / hi, 0, 1) * 255).round().astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img.convert("RGBA"))
    return img.convert("L" if channels == 1 else "RGB")


def load_image(src: ImageInput, prep: Preprocess) -> torch.Tensor:
    """Decode one image and apply ``prep``'s size, mode and inversion: uint8 ``[C, H, W]``."""
    img = _to_mode(_to_pil(src), prep.channels)
    h, w = prep.size
    if img.size != (w, h):
        img = img.resize((w, h), Image.BILINEAR)
    a = np.asarray(img, dtype=np.uint8)
    if prep.invert:
        a = 255 - a
    t = torch.from_numpy(a.copy())
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


def load_images(srcs: list[ImageInput] | tuple[ImageInput, ...], prep: Preprocess) -> torch.Tensor:
    """Decode a list of images into one uint8 ``[N, C, H, W]`` tensor (errors name the item)."""
    if isinstance(srcs, torch.Tensor) and srcs.dim() == 4:
        srcs = list(srcs)
    if isinstance(srcs, np.ndarray) and srcs.ndim == 4:
        srcs = list(srcs)
    if not isinstance(srcs, (list, tuple)) or len(srcs) == 0:
        raise ValueError("expected a non-empty list of images")
    out = []
    for i, s in enumerate(srcs):
        try:
            out.append(load_image(s, prep))
        except ImageDecodeError as e:
            raise ImageDecodeError(f"image #{i}: {e}") from e
    return torch.stack(out)
