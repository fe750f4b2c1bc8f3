"""SFace (Zhong et al. 2021, OpenCV Zoo) as a PyTorch backbone, and its ONNX weight loader.

The network is the one OpenCV Zoo's ``face_recognition_sface_2021dec*.onnx`` files describe: a
3x3 stem, thirteen depthwise-3x3 + pointwise-1x1 pairs (each conv followed by BatchNorm and
PReLU, no residuals), a BatchNorm, the 1024 x 7 x 7 map flattened through a linear layer to 128
values, and a last BatchNorm. Input: a 112x112 RGB crop aligned onto the five-point template.

:func:`read_onnx` reads such a file with the ``onnx`` package only (no runtime): weights stored
as float32 initializers, or as int8 behind ``DequantizeLinear`` (per tensor, per axis, or in
blocks along an axis, with zero points) followed by ``Reshape``, are turned into float32 arrays;
the graph's two leading scalar ops (``Sub`` then ``Mul`` on 0..255 pixels) become the
``mean``/``std`` of an h_model :class:`~h_model.preprocess.Preprocess` on 0..1 pixels.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .backbones import BACKBONES, checkpoint_backbone_state

#: (in channels, out channels, stride) of each depthwise + pointwise pair after the stem.
SFACE_PAIRS: tuple[tuple[int, int, int], ...] = (
    (32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
    (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 1024, 2),
    (1024, 1024, 1))
CONV_BN_EPS, HEAD_BN_EPS = 1e-3, 2e-5
#: The graph ops the loader understands; anything else (residual adds, quantised activations) is refused.
KNOWN_OPS = {"Sub", "Mul", "Conv", "BatchNormalization", "PRelu", "Dropout", "Flatten", "Gemm",
             "DequantizeLinear", "Reshape", "Constant", "Identity"}


class SFaceFormatError(ValueError):
    """The ONNX file is not an SFace graph this loader can map onto :class:`SFace`."""


def conv_bn_prelu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout, eps=CONV_BN_EPS), nn.PReLU(cout))


class SFace(nn.Module):
    """SFace's network: ``[N, 3, 112, 112]`` normalised RGB -> ``[N, dim]`` (not L2-normalised).

    ``input_norm`` is the normalisation the published weights expect (``(pixel - 127.5) / 128``
    on 0..255 RGB, as ``mean``/``std`` on 0..1); the trainer feeds the backbone with it.
    """

    input_norm = {"mean": (0.5, 0.5, 0.5), "std": (128 / 255,) * 3}

    def __init__(self, dim: int = 128, input_size: int = 112, dropout: float = 0.0) -> None:
        super().__init__()
        if input_size % 16:
            raise ValueError(f"sface needs an input side divisible by 16 (112 for the published weights), got {input_size}")
        layers: list[nn.Module] = [conv_bn_prelu(3, 32, 3)]
        for cin, cout, stride in SFACE_PAIRS:
            layers += [conv_bn_prelu(cin, cin, 3, stride, groups=cin), conv_bn_prelu(cin, cout, 1)]
        self.features = nn.Sequential(*layers)
        side = input_size // 16
        self.head = nn.Sequential(nn.BatchNorm2d(1024, eps=HEAD_BN_EPS), nn.Dropout(dropout), nn.Flatten(),
                                  nn.Linear(1024 * side * side, dim), nn.BatchNorm1d(dim, eps=HEAD_BN_EPS))
        self.features.to(memory_format=torch.channels_last)  # about 1.5x faster on the CPU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # back to the standard layout before Flatten, so the linear layer sees ONNX's (C, H, W) order
        z = self.features(x.contiguous(memory_format=torch.channels_last)).contiguous()
        return self.head(z)


@BACKBONES.register("sface")
def sface(in_channels: int = 3, input_size: int = 112, dim: int = 128, dropout: float = 0.0,
          weights_path: str | None = None) -> nn.Module:
    """SFace; ``weights_path``: an SFace ``.onnx`` file (:func:`read_onnx`) or an h_model checkpoint
    (run directory or ``model.safetensors``) whose backbone is an sface, loaded into the new module."""
    if in_channels != 3:
        raise ValueError("sface needs 3-channel (RGB) input")
    net = SFace(dim, input_size, dropout)
    if weights_path:
        path = Path(weights_path).expanduser()
        if path.suffix.lower() == ".onnx":
            state, info = read_onnx(path)
            net.input_norm = {"mean": tuple(info["mean"]), "std": tuple(info["std"])}
        else:
            state = checkpoint_backbone_state(path, "sface", "an .onnx file or an h_model checkpoint")
        net.load_state_dict(state)
    return net


# -- ONNX -> state dict --------------------------------------------------------------------------
def dequantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None = None, axis: int = 1,
               block_size: int = 0) -> np.ndarray:
    """ONNX ``DequantizeLinear``: ``(x - zero_point) * scale`` with a scalar scale, one per slice
    along ``axis``, or (``block_size`` > 0) one per block of ``block_size`` along ``axis``."""
    xf = x.astype(np.float32)
    scale = np.asarray(scale, np.float32)
    zp = np.zeros_like(scale) if zero_point is None else np.asarray(zero_point).astype(np.float32)
    if scale.size == 1 and block_size == 0:
        return (xf - zp.reshape(())) * scale.reshape(())
    axis = axis % x.ndim
    if block_size > 0:
        want = list(x.shape)
        want[axis] = -(-x.shape[axis] // block_size)
        if list(scale.shape) != want or zp.shape != scale.shape:
            raise SFaceFormatError(f"scales {scale.shape} with block size {block_size} do not cover a weight {x.shape}")
        idx = np.arange(x.shape[axis]) // block_size
        return (xf - np.take(zp, idx, axis=axis)) * np.take(scale, idx, axis=axis)
    if scale.ndim != 1 or scale.size != x.shape[axis]:
        raise SFaceFormatError(f"per-axis scales {scale.shape} do not match axis {axis} of a weight {x.shape}")
    shape = [1] * x.ndim
    shape[axis] = -1
    return (xf - zp.reshape(shape)) * scale.reshape(shape)


class _Graph:
    """Resolves a graph tensor name to a constant numpy array (initializers, Constant, DQ, Reshape)."""

    def __init__(self, graph: Any) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.init = {t.name: t for t in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.cache: dict[str, np.ndarray] = {}

    def attrs(self, node: Any) -> dict[str, Any]:
        return {a.name: self.helper.get_attribute_value(a) for a in node.attribute}

    def const(self, name: str) -> np.ndarray:
        if name not in self.cache:
            self.cache[name] = self._const(name)
        return self.cache[name]

    def _const(self, name: str) -> np.ndarray:
        if name in self.init:
            return self.numpy_helper.to_array(self.init[name])
        node = self.producer.get(name)
        if node is None:
            raise SFaceFormatError(f"tensor {name!r} is neither an initializer nor computed from constants")
        a = self.attrs(node)
        if node.op_type == "Constant":
            return self.numpy_helper.to_array(a["value"])
        if node.op_type == "Identity":
            return self.const(node.input[0])
        if node.op_type == "Reshape":
            return self.const(node.input[0]).reshape(self.const(node.input[1]).astype(np.int64).tolist())
        if node.op_type == "DequantizeLinear":
            zp = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            return dequantize(self.const(node.input[0]), self.const(node.input[1]), zp,
                              int(a.get("axis", 1)), int(a.get("block_size", 0)))
        raise SFaceFormatError(f"tensor {name!r} comes from a {node.op_type} node, not a constant")


def read_onnx(path: str | Path, dim: int = 128, input_size: int = 112
              ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict of :class:`SFace`, info) from an SFace ONNX file: float32, int8 or int8-block weights.

    ``info``: ``mean``/``std`` (for 0..1 RGB pixels), ``weights`` ("float32", "int8" or
    "int8-blocks"), the file's ``sha256`` and ``opset``. Raises :class:`SFaceFormatError` when the
    graph is not the chain of layers :class:`SFace` holds.
    """
    import onnx

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {path}")
    model = onnx.load(str(path))
    g = _Graph(model.graph)
    unknown = sorted({n.op_type for n in model.graph.node} - KNOWN_OPS)
    if unknown:
        raise SFaceFormatError(f"{path.name}: unsupported ops {unknown} (only weight-quantised SFace chains load)")
    convs, bns, prelus, gemms = [], [], [], []
    sub = mul = None
    dq = [g.attrs(n) for n in model.graph.node if n.op_type == "DequantizeLinear"]
    for n in model.graph.node:
        a = g.attrs(n)
        if n.op_type == "Sub":
            sub = g.const(n.input[1])
        elif n.op_type == "Mul":
            mul = g.const(n.input[1])
        elif n.op_type == "Conv":
            if len(n.input) > 2 and n.input[2]:
                raise SFaceFormatError(f"conv {n.name or n.output[0]} has a bias; SFace's convs have none")
            convs.append((g.const(n.input[1]), a))
        elif n.op_type == "BatchNormalization":
            bns.append(([g.const(i) for i in n.input[1:5]], float(a.get("epsilon", 1e-5))))
        elif n.op_type == "PRelu":
            prelus.append(g.const(n.input[1]))
        elif n.op_type == "Gemm":
            w = g.const(n.input[1])
            gemms.append((w if a.get("transB", 0) else w.T, g.const(n.input[2]), a))
    net = SFace(dim, input_size)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    mods = dict(net.named_modules())
    conv_names = [k for k, m in mods.items() if isinstance(m, nn.Conv2d)]
    bn_names = [k for k, m in mods.items() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    prelu_names = [k for k, m in mods.items() if isinstance(m, nn.PReLU)]
    counts = {"Conv": (len(convs), len(conv_names)), "BatchNormalization": (len(bns), len(bn_names)),
              "PRelu": (len(prelus), len(prelu_names)), "Gemm": (len(gemms), 1)}
    wrong = {k: v for k, v in counts.items() if v[0] != v[1]}
    if wrong:
        raise SFaceFormatError(f"{path.name}: layer counts (graph, sface) differ: {wrong}")

    def put(key: str, value: np.ndarray) -> None:
        value = np.asarray(value, np.float32)
        if value.size != state[key].numel():
            raise SFaceFormatError(f"{path.name}: {key} needs shape {tuple(state[key].shape)}, the graph has {value.shape}")
        state[key] = torch.from_numpy(value.reshape(state[key].shape).copy())

    for name, (w, a) in zip(conv_names, convs):
        m = mods[name]
        got = (tuple(a.get("strides", [1, 1])), int(a.get("group", 1)), tuple(a.get("pads", [0] * 4))[:2])
        if got != (m.stride, m.groups, m.padding) or tuple(w.shape) != tuple(m.weight.shape):
            raise SFaceFormatError(f"{path.name}: conv {name} is (stride, groups, pads, shape) "
                                   f"{got + (w.shape,)}, sface has {(m.stride, m.groups, m.padding, tuple(m.weight.shape))}")
        put(f"{name}.weight", w)
    for name, ((gamma, beta, mean, var), eps) in zip(bn_names, bns):
        if not np.isclose(eps, mods[name].eps, rtol=1e-3):
            raise SFaceFormatError(f"{path.name}: BatchNorm {name} has epsilon {eps}, sface uses {mods[name].eps}")
        for k, v in zip(("weight", "bias", "running_mean", "running_var"), (gamma, beta, mean, var)):
            put(f"{name}.{k}", v)
    for name, slope in zip(prelu_names, prelus):
        put(f"{name}.weight", slope)
    w, b, a = gemms[0]
    if float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
        raise SFaceFormatError(f"{path.name}: Gemm with alpha/beta other than 1 is not a plain linear layer")
    put("head.3.weight", w)
    put("head.3.bias", b)
    info = {"weights": ("int8-blocks" if any(d.get("block_size", 0) for d in dq) else "int8") if dq else "float32",
            "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), **input_norm(sub, mul)}
    return state, info


def input_norm(sub: np.ndarray | None, mul: np.ndarray | None) -> dict[str, list[float]]:
    """``(pixel_0_255 - sub) * mul`` as ``(pixel_0_1 - mean) / std`` per RGB channel."""
    a = np.zeros(3) if sub is None else np.broadcast_to(np.asarray(sub, np.float64).reshape(-1), (3,))
    b = np.ones(3) if mul is None else np.broadcast_to(np.asarray(mul, np.float64).reshape(-1), (3,))
    if (b <= 0).any():
        raise SFaceFormatError(f"the input scale must be positive, got {b.tolist()}")
    return {"mean": (a / 255.0).tolist(), "std": (1.0 / (255.0 * b)).tolist()}
