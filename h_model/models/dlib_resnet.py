"""dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1``) as a PyTorch backbone.

The network is dlib's ``anet_type`` (dnn_face_recognition_ex.cpp): a 150x150 RGB chip with dlib's
input normalisation ``(pixel_0_255 - mean_rgb) / 256``; a 7x7/2 convolution, affine, ReLU, 3x3/2
max-pool; 3 residual blocks of 32 channels, then [down + 3] x 64, [down + 2] x 128, [down + 2] x
256 and one more down block of 256; the mean over the map and a 256 -> 128 linear layer without
bias. A block is conv3x3(stride) - affine - ReLU - conv3x3 - affine; a residual block adds its
input, a down block (stride 2) adds a 2x2/2 average pool of its input, and ReLU follows the sum.
dlib's convolutions pad k//2 at stride 1 and nothing at stride 2; its pools pad nothing.

Where a down block's two branches differ in size (fewer channels in the pooled input, and at 8x8
and 4x4 maps a 3x3/2 convolution's side is one less than a 2x2/2 pool's), dlib's ``add_prev`` sums
them into a tensor of the larger size with the smaller one zero-padded at the end of each axis;
:func:`padded_add` does the same.

``affine`` layers are dlib's inference form of batch normalisation (per-channel scale and shift,
statistics folded in). They are kept as :class:`Affine` (learnable scale and shift, no batch
statistics): fine-tuning then adjusts them like any weight, and the small episodic batches never
replace the folded statistics with their own, which a ``BatchNorm2d`` in training mode would do.

:func:`~h_model.models.dlib_format.read_dlib_net` reads dlib's ``.dat`` file (no dlib needed);
:func:`dlib_state` maps it onto :class:`DlibResNet`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import BACKBONES, checkpoint_backbone_state
from .dlib_format import DlibFormatError, read_dlib_net

__all__ = ["DlibResNet", "Affine", "DlibFormatError", "dlib_state", "DLIB_MEAN", "DLIB_INPUT_NORM", "CHIP"]

CHIP = 150
#: dlib's input layer subtracts these from 0..255 RGB pixels and divides by 256.
DLIB_MEAN = (122.782, 117.001, 104.298)
#: The same normalisation as ``mean``/``std`` on 0..1 pixels (h_model's Preprocess convention).
DLIB_INPUT_NORM = {"mean": tuple(m / 255 for m in DLIB_MEAN), "std": (256 / 255,) * 3}
#: (channels, down) of the residual blocks, input side first.
BLOCKS: tuple[tuple[int, bool], ...] = (
    ((32, False),) * 3 + ((64, True),) + ((64, False),) * 3 + ((128, True),) + ((128, False),) * 2
    + ((256, True),) + ((256, False),) * 2 + ((256, True),))


class Affine(nn.Module):
    """Per-channel ``x * weight + bias`` (dlib's ``affine`` layer in conv mode)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def padded_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` into the larger of their shapes, each zero-padded at the end of C, H and W (dlib's add_prev)."""
    shape = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:])]

    def grow(t: torch.Tensor) -> torch.Tensor:
        c, h, w = t.shape[1:]
        return t if [c, h, w] == shape else F.pad(t, (0, shape[2] - w, 0, shape[1] - h, 0, shape[0] - c))
    return grow(a) + grow(b)


class Block(nn.Module):
    """``relu(shortcut + affine(conv(relu(affine(conv_stride(x))))))``; shortcut: x, or its 2x2/2 average when ``down``."""

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        stride = 2 if down else 1
        self.down = down
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 0 if down else 1)
        self.aff1 = Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.aff2 = Affine(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        return F.relu(padded_add(y, F.avg_pool2d(x, 2, 2)) if self.down else x + y)


def chip_grid(chip_affine: Sequence[Sequence[float]], input_size: int) -> torch.Tensor:
    """The ``[1, 150, 150, 2]`` sampling grid (``grid_sample``, ``align_corners=False``) of a 2x3 map from
    chip pixel ``(u, v, 1)`` to input pixel ``(x, y)``; pixel ``i`` has its centre at coordinate ``i``."""
    a = np.asarray(chip_affine, np.float64)
    if a.shape != (2, 3) or not np.isfinite(a).all():
        raise ValueError(f"chip_affine must be a finite 2x3 matrix, got {a.tolist()}")
    half = CHIP / 2
    from_chip = np.array([[half, 0, half - 0.5], [0, half, half - 0.5], [0, 0, 1]])  # normalised chip -> chip pixels
    to_input = np.array([[2 / input_size, 0, 1 / input_size - 1], [0, 2 / input_size, 1 / input_size - 1], [0, 0, 1]])
    theta = (to_input @ np.vstack([a, [0, 0, 1]]) @ from_chip)[:2]
    return F.affine_grid(torch.tensor(theta, dtype=torch.float32)[None], [1, 3, CHIP, CHIP], align_corners=False)


def _norm(norm: dict[str, Any] | None) -> dict[str, tuple[float, ...]]:
    if norm is None:
        return {k: tuple(v) for k, v in DLIB_INPUT_NORM.items()}
    out = {k: tuple(float(x) for x in np.broadcast_to(np.asarray(norm[k], np.float64).reshape(-1), (3,)))
           for k in ("mean", "std")}
    if min(out["std"]) <= 0:
        raise ValueError(f"input_norm std must be positive, got {out['std']}")
    return out


class DlibResNet(nn.Module):
    """dlib's face ResNet: ``[N, 3, S, S]`` normalised RGB -> ``[N, dim]`` (not L2-normalised).

    ``input_norm``: the ``mean``/``std`` on 0..1 pixels that the input arrives normalised with
    (default :data:`DLIB_INPUT_NORM`, dlib's own); the module maps it to dlib's normalisation.
    ``chip_affine``: a 2x3 map from 150x150 chip pixel ``(u, v, 1)`` to input pixel ``(x, y)``;
    given, ``forward`` resamples the ``input_size`` crop into the chip (bilinear, replicated
    borders); without it the input must be the 150x150 chip itself.
    """

    def __init__(self, dim: int = 128, input_size: int = CHIP, chip_affine: Sequence[Sequence[float]] | None = None,
                 input_norm: dict[str, Any] | None = None) -> None:
        super().__init__()
        if chip_affine is None and input_size != CHIP:
            raise ValueError(f"dlib_resnet takes {CHIP}x{CHIP} chips; for a {input_size}x{input_size} input "
                             "give chip_affine (the map from chip to input pixels)")
        self.input_size = int(input_size)
        self.input_norm = _norm(input_norm)
        mean, std = (torch.tensor(self.input_norm[k]) for k in ("mean", "std"))
        # (x * std + mean) * 255 is the 0..255 pixel; dlib feeds (pixel - DLIB_MEAN) / 256
        self.register_buffer("in_scale", (std * 255 / 256).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", ((mean * 255 - torch.tensor(DLIB_MEAN)) / 256).view(1, 3, 1, 1),
                             persistent=False)
        grid = None if chip_affine is None else chip_grid(chip_affine, self.input_size)
        self.register_buffer("grid", grid, persistent=False)
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 7, 2, 0), Affine(32), nn.ReLU(), nn.MaxPool2d(3, 2))
        cins = [32] + [c for c, _ in BLOCKS[:-1]]
        self.blocks = nn.Sequential(*[Block(cin, c, down) for cin, (c, down) in zip(cins, BLOCKS)])
        self.fc = nn.Linear(256, dim, bias=False)
        self.to(memory_format=torch.channels_last)  # the CPU max-pools channels-last maps several times faster

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise ValueError(f"dlib_resnet expects [N, 3, {self.input_size}, {self.input_size}] input, got {tuple(x.shape)}")
        x = x * self.in_scale + self.in_shift
        if self.grid is not None:
            x = F.grid_sample(x, self.grid.expand(len(x), -1, -1, -1).to(x.dtype), mode="bilinear",
                              padding_mode="border", align_corners=False)
        z = self.blocks(self.stem(x))
        return self.fc(z.mean((2, 3)))


def dlib_state(path: str | Path, dim: int = 128) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict of :class:`DlibResNet`, info) from dlib's ``.dat`` file (see :func:`read_dlib_net`)."""
    layers, info = read_dlib_net(path)
    name = Path(path).name
    if not np.allclose(info["mean"], DLIB_MEAN, atol=1e-3):
        raise DlibFormatError(f"{name}: the input layer's mean {info['mean']} is not dlib's {list(DLIB_MEAN)}")
    pads = {layer.data["padding"] for layer in layers if layer.kind in ("max_pool", "avg_pool")}
    if pads != {(0, 0)}:
        raise DlibFormatError(f"{name}: pooling paddings {sorted(pads)}; dlib_resnet's pools pad nothing")
    net = DlibResNet(dim)
    params = [layer for layer in reversed(layers) if layer.kind in ("con", "affine", "fc")]  # input side first
    mods = [(k, m) for k, m in net.named_modules() if isinstance(m, (nn.Conv2d, Affine, nn.Linear))]
    if len(params) != len(mods):
        raise DlibFormatError(f"{name}: {len(params)} weighted layers, dlib_resnet has {len(mods)}")
    state: dict[str, torch.Tensor] = {}
    for layer, (key, m) in zip(params, mods):
        if layer.kind == "con":
            if not isinstance(m, nn.Conv2d) or layer.data["padding"] != m.padding:
                raise DlibFormatError(f"{name}: con layer with padding {layer.data['padding']} where {key} is {m}")
            values = {"weight": layer.data["weight"], "bias": layer.data["bias"]}
        elif layer.kind == "affine":
            values = {"weight": layer.data["gamma"], "bias": layer.data["beta"]}
        else:
            values = {"weight": layer.data["weight"]}
        for k, v in values.items():
            want = getattr(m, k).shape
            if tuple(v.shape) != tuple(want):
                raise DlibFormatError(f"{name}: {key}.{k} needs shape {tuple(want)}, the file has {v.shape}")
            state[f"{key}.{k}"] = torch.from_numpy(np.ascontiguousarray(v, np.float32))
    return state, info


@BACKBONES.register("dlib_resnet")
def dlib_resnet(in_channels: int = 3, input_size: int = CHIP, dim: int = 128,
                chip_affine: list[list[float]] | None = None, input_norm: dict[str, Any] | None = None,
                weights_path: str | None = None) -> nn.Module:
    """dlib's face ResNet; ``weights_path``: dlib's ``.dat`` file (:func:`dlib_state`) or an h_model
    checkpoint (run directory or ``model.safetensors``) whose backbone is a dlib_resnet."""
    if in_channels != 3:
        raise ValueError("dlib_resnet needs 3-channel (RGB) input")
    net = DlibResNet(dim, input_size, chip_affine, input_norm)
    if weights_path:
        path = Path(weights_path).expanduser()
        if path.suffix.lower() == ".dat":
            state = dlib_state(path, dim)[0]
        else:
            state = checkpoint_backbone_state(path, "dlib_resnet", "a dlib .dat file or an h_model checkpoint")
        net.load_state_dict(state)
    return net
