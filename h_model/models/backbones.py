"""Feature extractors, registered by name: conv4, resnet12, face_resnet, inception_resnet_v1 (and its
pretrained aliases facenet-vggface2 / facenet-casia), and ensemble (several of them side by side)."""
from __future__ import annotations

import inspect
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Registry

BACKBONES = Registry("backbone")


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """conv3x3 -> BatchNorm -> maxpool2 -> ReLU.

    The papers' block is conv(+bias) -> BN -> ReLU -> maxpool. Our order computes the same
    function: a conv bias is cancelled by BatchNorm's mean subtraction, and ReLU commutes with
    max-pooling, so applying it after the pool touches 4x fewer values (about 2x faster
    training on the CPU together with channels-last memory).
    """
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.MaxPool2d(2), nn.ReLU(inplace=True))


class Conv4(nn.Module):
    """4 x [conv3x3 64, BatchNorm, ReLU, maxpool2] (Vinyals et al. 2016; Snell et al. 2017).

    ``hidden``: the channels of every layer, or one number per layer (``depth`` is then its length).
    """

    def __init__(self, in_channels: int = 1, hidden: int | Sequence[int] = 64, depth: int = 4) -> None:
        super().__init__()
        widths = [int(hidden)] * depth if isinstance(hidden, int) else [int(h) for h in hidden]
        if not widths or min(widths) < 1:
            raise ValueError(f"conv4 hidden must be a positive channel count or a non-empty list of them, got {hidden!r}")
        chans = [in_channels] + widths
        self.layers = nn.Sequential(*[conv_block(a, b) for a, b in zip(chans, chans[1:])])
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.contiguous(memory_format=torch.channels_last)).flatten(1)


@BACKBONES.register("conv4")
def conv4(in_channels: int = 1, hidden: int | Sequence[int] = 64, depth: int = 4) -> nn.Module:
    return Conv4(in_channels, hidden, depth)


class ResBlock(nn.Module):
    """ResNet-12 block: three conv3x3-BN(-LeakyReLU) layers, 1x1 shortcut, maxpool2."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
            if i < 2:
                layers.append(nn.LeakyReLU(0.1))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.out = nn.Sequential(nn.LeakyReLU(0.1), nn.MaxPool2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class ResNet12(nn.Module):
    """ResNet-12 (Oreshkin et al. 2018; Lee et al. 2019), global average pooled."""

    def __init__(self, in_channels: int = 1, channels: tuple[int, ...] = (64, 160, 320, 640)) -> None:
        super().__init__()
        chans = [in_channels] + list(channels)
        self.blocks = nn.Sequential(*[ResBlock(a, b) for a, b in zip(chans, chans[1:])])
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x.contiguous(memory_format=torch.channels_last))
        return x.mean(dim=(2, 3))


@BACKBONES.register("resnet12")
def resnet12(in_channels: int = 1, channels: tuple[int, ...] = (64, 160, 320, 640)) -> nn.Module:
    return ResNet12(in_channels, tuple(channels))


class BasicBlock(nn.Module):
    """Two conv3x3-BN layers with a residual (1x1 strided projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class FaceResNet(nn.Module):
    """A compact ResNet for aligned face crops (~112x112): strided stem, four residual stages, then
    the spatial map flattened through a linear layer to a ``dim``-d embedding (face models keep the
    layout of the face, which global pooling would throw away)."""

    def __init__(self, in_channels: int = 3, channels: tuple[int, ...] = (24, 48, 96, 192),
                 blocks: tuple[int, ...] = (1, 1, 1, 1), dim: int = 128, input_size: int = 112,
                 dropout: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, 2, 1, bias=False),
                                   nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True)]
        cin = channels[0]
        for i, (c, n) in enumerate(zip(channels, blocks)):
            for j in range(n):
                layers.append(BasicBlock(cin, c, 2 if j == 0 and i > 0 else 1))
                cin = c
        self.features = nn.Sequential(*layers)
        side = -(-input_size // 2 ** len(channels))  # stem and stages 2..4 halve the side
        self.head = nn.Sequential(nn.BatchNorm2d(cin), nn.Dropout(dropout), nn.Flatten(),
                                  nn.Linear(cin * side * side, dim, bias=False), nn.BatchNorm1d(dim))
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.contiguous(memory_format=torch.channels_last)))


@BACKBONES.register("face_resnet")
def face_resnet(in_channels: int = 3, channels: tuple[int, ...] = (24, 48, 96, 192),
                blocks: tuple[int, ...] = (1, 1, 1, 1), dim: int = 128, input_size: int = 112,
                dropout: float = 0.1) -> nn.Module:
    return FaceResNet(in_channels, tuple(channels), tuple(blocks), dim, input_size, dropout)


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights are neither on disk nor downloadable."""


@BACKBONES.register("inception_resnet_v1")
def inception_resnet_v1(in_channels: int = 3, pretrained: str | None = None,
                        weights_path: str | None = None, freeze: bool = False) -> nn.Module:
    """facenet-pytorch's InceptionResnetV1 (512-d, expects RGB faces around 160x160).

    ``pretrained`` is 'vggface2' or 'casia-webface' (downloaded on first use), or give a local
    ``weights_path`` (a state dict file). ``freeze`` keeps the pretrained weights fixed.
    """
    from facenet_pytorch import InceptionResnetV1

    if in_channels != 3:
        raise ValueError("inception_resnet_v1 needs 3-channel (RGB) input")
    net = InceptionResnetV1(pretrained=None, classify=False)
    if weights_path:
        state = torch.load(Path(weights_path).expanduser(), map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("logits.")}
        net.load_state_dict(state, strict=False)
    elif pretrained:
        try:
            net = InceptionResnetV1(pretrained=pretrained, classify=False)
        except Exception as e:
            raise PretrainedWeightsError(
                f"could not download InceptionResnetV1 '{pretrained}' weights ({type(e).__name__}: {e}). "
                "Offline, download the file elsewhere and pass it with weights_path=... "
                "(--backbone-weights PATH on the command line).") from e
    if freeze:
        for p in net.parameters():
            p.requires_grad_(False)
    return net


@BACKBONES.register("facenet-vggface2")
def facenet_vggface2(in_channels: int = 3, weights_path: str | None = None, freeze: bool = False) -> nn.Module:
    """InceptionResnetV1 with facenet-pytorch's VGGFace2 weights (downloaded, or ``weights_path``)."""
    return inception_resnet_v1(in_channels, "vggface2", weights_path, freeze)


@BACKBONES.register("facenet-casia")
def facenet_casia(in_channels: int = 3, weights_path: str | None = None, freeze: bool = False) -> nn.Module:
    """InceptionResnetV1 with facenet-pytorch's CASIA-WebFace weights (downloaded, or ``weights_path``)."""
    return inception_resnet_v1(in_channels, "casia-webface", weights_path, freeze)


class EnsembleBackbone(nn.Module):
    """Several backbones over the same input, each embedding L2-normalised, then combined:

    - ``"concat"``: side by side, member ``i`` scaled by ``sqrt(w_i / sum(w))``: unit length, and the
      cosine of two such embeddings is the ``w``-weighted mean of the members' cosines (any member
      dimensions);
    - ``"mean"``: their ``w``-weighted mean, for members that embed into one space (e.g. students
      distilled from the same teacher): the embedding keeps the members' dimension.

    ``weights`` (``w``, positive, one per member) default to equal. At CPU inference (no autograd)
    with a core to spare per member (``torch.get_num_threads() * members <= cores``) the members
    run side by side on threads: the same outputs, sooner.
    """

    MODES = ("concat", "mean")

    def __init__(self, members: list[nn.Module], mode: str = "concat", weights: list[float] | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if mode not in self.MODES:
            raise ValueError(f"ensemble mode must be one of {self.MODES}, got {mode!r}")
        w = [1.0] * len(members) if weights is None else [float(v) for v in weights]
        if len(w) != len(members) or not all(math.isfinite(v) and v > 0 for v in w):
            raise ValueError(f"ensemble weights must be {len(members)} positive numbers, got {weights!r}")
        self.members, self.mode = nn.ModuleList(members), mode
        self.weights = [v / sum(w) for v in w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = [F.normalize(out.flatten(1).float(), dim=-1) for out in self._member_outputs(x)]
        if self.mode == "concat":
            return torch.cat([t * math.sqrt(w) for t, w in zip(z, self.weights)], dim=-1)
        if len({t.shape[-1] for t in z}) > 1:
            raise ValueError(f"mode 'mean' needs members of one embedding size, got {[t.shape[-1] for t in z]}")
        return sum(t * w for t, w in zip(z, self.weights))

    def _member_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        if len(self.members) < 2 or torch.is_grad_enabled() or x.device.type != "cpu" \
                or torch.get_num_threads() * len(self.members) > cpu_cores():
            return [m(x) for m in self.members]
        inference = torch.is_inference_mode_enabled()  # grad modes are per thread: carry the caller's over

        def run(m: nn.Module) -> torch.Tensor:
            with torch.inference_mode(inference), torch.no_grad():
                return m(x)
        futures = [member_pool().submit(run, m) for m in self.members[1:]]
        return [self.members[0](x)] + [f.result() for f in futures]


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (the process that made it, the pool)
_POOL_LOCK = threading.Lock()


def member_pool() -> ThreadPoolExecutor:
    """The threads that ensemble members run on at CPU inference (created on first use, and anew in a
    forked child, which inherits the pool but none of its threads)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=cpu_cores(), thread_name_prefix="h_model-ensemble"))
        return _POOL[1]


@BACKBONES.register("ensemble")
def ensemble(members: list[dict[str, Any]], mode: str = "concat", in_channels: int | None = None,
             input_size: int | None = None, weights: list[float] | None = None) -> nn.Module:
    """``members``: ``[{"backbone": name, "kwargs": {...}}, ...]``, each built like a backbone of its own
    (``in_channels``/``input_size`` passed on where a member takes them and does not set them);
    ``mode``: ``"concat"`` or ``"mean"``; ``weights``: one per member (:class:`EnsembleBackbone`)."""
    shape = None if in_channels is None or input_size is None else (in_channels, input_size, input_size)
    built = []
    for m in members:
        if not isinstance(m, dict) or "backbone" not in m or m["backbone"] == "ensemble":
            raise ValueError(f"ensemble members are {{'backbone': NAME, 'kwargs': {{...}}}} of other backbones, got {m!r}")
        built.append(create_backbone(m["backbone"], **backbone_defaults(m["backbone"], shape, m.get("kwargs") or {})))
    return EnsembleBackbone(built, mode, weights)


def backbone_defaults(name: str, input_shape: tuple[int, int, int] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``in_channels`` and ``input_size`` from the input shape, where the backbone takes them and they are not given."""
    params = inspect.signature(BACKBONES.get(name)).parameters
    out = dict(kwargs)
    if input_shape:
        if "in_channels" in params:
            out.setdefault("in_channels", int(input_shape[0]))
        if "input_size" in params:
            out.setdefault("input_size", int(input_shape[-1]))
    return out


def checkpoint_backbone_state(path: str | Path, name: str, sources: str) -> dict[str, torch.Tensor]:
    """The ``backbone.*`` tensors of an h_model checkpoint (run directory or ``model.safetensors``) whose
    backbone is ``name`` (checked against the ``config.json`` beside the weights, when there is one);
    ``sources`` names what the caller accepts, for the error message."""
    import json

    from safetensors.torch import load_file

    path = Path(path).expanduser()
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no {name} weights at {path} ({sources})")
    config = file.parent / "config.json"
    if config.is_file():
        other = json.loads(config.read_text()).get("model", {}).get("backbone")
        if other is not None and other != name:
            raise ValueError(f"{path} holds a {other} backbone, not {name}")
    return {k.removeprefix("backbone."): v for k, v in load_file(str(file)).items() if k.startswith("backbone.")}


def create_backbone(name: str, **kwargs) -> nn.Module:
    return BACKBONES.get(name)(**kwargs)


def list_backbones() -> list[str]:
    return BACKBONES.names()
