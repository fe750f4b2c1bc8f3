"""A reader for dlib's binary serialisation of its face recognition ResNet (pure Python + numpy).

dlib writes a network as its C++ type says: the loss layer (an ``int`` version, the loss details),
then each layer from the top down, each layer serialising its sub-network *before* its own
details. So the file is: every layer's version header from the top down, the input layer, then
every computational layer's details from the bottom up. The reader walks that order for the
known layer chain (:data:`FACE_NET`), checking every version string and hyper-parameter.

Encodings (dlib/serialize.h, dlib/dnn/tensor.h): integers are a control byte (low 4 bits: the
number of little-endian bytes of the absolute value that follow; bit 7: negative) and those bytes;
``bool`` is the ASCII byte ``'0'``/``'1'``; a string is its length (an integer) and its bytes;
``float``/``double`` is a ``float_details`` pair (integer mantissa, integer exponent: ``m * 2**e``);
a tensor is a version (2), four integer dimensions and raw little-endian float32 values; an
``alias_tensor`` is a version (1) and four dimensions.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: float_details exponents that stand for special values.
_SPECIAL = {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}


class DlibFormatError(ValueError):
    """The file is not dlib's serialised face recognition ResNet (or is damaged)."""


@dataclass
class Layer:
    """One entry of the dlib layer chain (top down) and what was read for it."""

    kind: str  # loss, fc, avg_pool, max_pool, con, affine, relu, add_prev, tag, skip, input
    args: tuple[int, ...] = ()  # con: (filters, rows, cols, stride); pools: (rows, cols, stride); tag/skip/add_prev: (id,)
    data: dict[str, Any] = field(default_factory=dict)


def _block(n: int, stride: int) -> list[Layer]:
    """affine(con(relu(affine(con_stride(x))))) from the top down."""
    return [Layer("affine"), Layer("con", (n, 3, 3, 1)), Layer("relu"), Layer("affine"), Layer("con", (n, 3, 3, stride))]


def _ares(n: int) -> list[Layer]:
    return [Layer("relu"), Layer("add_prev", (1,)), *_block(n, 1), Layer("tag", (1,))]


def _ares_down(n: int) -> list[Layer]:
    return [Layer("relu"), Layer("add_prev", (2,)), Layer("avg_pool", (2, 2, 2)), Layer("skip", (1,)),
            Layer("tag", (2,)), *_block(n, 2), Layer("tag", (1,))]


def face_net() -> list[Layer]:
    """dlib's ``anet_type`` (dnn_face_recognition_ex.cpp) from the top down."""
    levels: list[Layer] = [*_ares_down(256)]  # alevel0
    for n, k in ((256, 2), (128, 2), (64, 3)):  # alevel1 .. alevel3: k x ares over one ares_down
        levels += [layer for _ in range(k) for layer in _ares(n)] + _ares_down(n)
    levels += [layer for _ in range(3) for layer in _ares(32)]  # alevel4
    return [Layer("loss"), Layer("fc", (128,)), Layer("avg_pool", (0, 0, 1)), *levels,
            Layer("max_pool", (3, 3, 2)), Layer("relu"), Layer("affine"), Layer("con", (32, 7, 7, 2)), Layer("input")]


class _Stream:
    def __init__(self, buf: bytes, name: str) -> None:
        self.buf, self.pos, self.name = buf, 0, name

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.name}: {what} (at byte {self.pos} of {len(self.buf)}); "
                               "not dlib's face recognition ResNet (dlib_face_recognition_resnet_model_v1.dat)")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise self.fail(f"the file ends inside a {n}-byte field")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self, nbytes: int = 8) -> int:
        ctrl = self.take(1)[0]
        size = ctrl & 0x0F
        if size > nbytes or ctrl & 0x70:
            raise self.fail(f"bad integer control byte 0x{ctrl:02x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if ctrl & 0x80 else value

    def bool(self) -> bool:
        b = self.take(1)
        if b not in (b"0", b"1"):
            raise self.fail(f"bad bool byte {b!r}")
        return b == b"1"

    def string(self, limit: int = 256) -> str:
        n = self.int()
        if not 0 <= n <= limit:
            raise self.fail(f"a string of {n} bytes where a layer name was expected")
        try:
            return self.take(n).decode("ascii")
        except UnicodeDecodeError as e:
            raise self.fail("a non-ASCII layer name") from e

    def float(self) -> float:
        mantissa, exponent = self.int(8), self.int(2)
        return _SPECIAL.get(exponent, float(np.ldexp(float(mantissa), exponent)))

    def version(self, want: int | tuple[int, ...], what: str) -> int:
        v = self.int(4)
        if v not in (want if isinstance(want, tuple) else (want,)):
            raise self.fail(f"{what} has version {v}, expected {want}")
        return v

    def name_is(self, want: str | tuple[str, ...]) -> str:
        s = self.string()
        if s not in (want if isinstance(want, tuple) else (want,)):
            raise self.fail(f"layer {s!r} where {want!r} was expected")
        return s

    def tensor(self) -> np.ndarray:
        self.version(2, "a tensor")
        dims = [self.int() for _ in range(4)]
        if any(d < 0 for d in dims):
            raise self.fail(f"negative tensor dimensions {dims}")
        n = math.prod(dims)
        return np.frombuffer(self.take(4 * n), "<f4").astype(np.float32).reshape(dims)

    def alias(self) -> tuple[int, ...]:
        self.version(1, "an alias tensor")
        return tuple(self.int() for _ in range(4))


def _check(s: _Stream, what: str, got: Any, want: Any) -> None:
    if got != want:
        raise s.fail(f"{what} is {got}, expected {want}")


def _details(s: _Stream, layer: Layer) -> None:
    """One computational layer's own fields (after its sub-network)."""
    k = layer.kind
    if k == "con":
        s.name_is("con_4")
        params = s.tensor().reshape(-1)
        filters, rows, cols, sy, sx, py, px = s.int(), s.int(), s.int(), s.int(4), s.int(4), s.int(4), s.int(4)
        n, r, c, stride = layer.args
        _check(s, "a con layer's (filters, rows, cols, strides)", (filters, rows, cols, sy, sx), (n, r, c, stride, stride))
        wshape, bshape = s.alias(), s.alias()
        for _ in range(4):  # learning-rate and weight-decay multipliers
            s.float()
        cin = wshape[1]
        _check(s, "a con layer's filter/bias shapes", (wshape[0], wshape[2:], bshape), (n, (r, c), (1, n, 1, 1)))
        _check(s, "a con layer's parameter count", params.size, n * cin * r * c + n)
        layer.data = {"weight": params[:n * cin * r * c].reshape(n, cin, r, c), "bias": params[n * cin * r * c:],
                      "padding": (py, px)}
    elif k == "affine":
        name = s.name_is(("affine_", "bn_con2"))
        if name == "bn_con2":
            raise s.fail("a batch-normalisation layer (a training net); this reader reads the affine inference net")
        params = s.tensor().reshape(-1)
        g, b = s.alias(), s.alias()
        mode = s.int(4)
        _check(s, "an affine layer's mode (0: per channel)", mode, 0)
        ch = g[1]
        _check(s, "an affine layer's gamma/beta shapes", (g, b, params.size), ((1, ch, 1, 1), (1, ch, 1, 1), 2 * ch))
        layer.data = {"gamma": params[:ch], "beta": params[ch:]}
    elif k in ("max_pool", "avg_pool"):
        s.name_is(f"{k}_2")
        got = (s.int(), s.int(), s.int(4), s.int(4))
        r, c, stride = layer.args
        _check(s, f"a {k} layer's (rows, cols, strides)", got, (r, c, stride, stride))
        layer.data = {"padding": (s.int(4), s.int(4))}
    elif k == "relu":
        s.name_is("relu_")
    elif k == "add_prev":
        s.name_is("add_prev_")
    elif k == "fc":
        s.name_is("fc_2")
        outputs, inputs = s.int(), s.int()
        params = s.tensor().reshape(-1)
        w, _b = s.alias(), s.alias()
        bias_mode = s.int(4)
        for _ in range(4):
            s.float()
        _check(s, "the fc layer's (outputs, bias mode 1: no bias)", (outputs, bias_mode), (layer.args[0], 1))
        _check(s, "the fc layer's weight shape", (w[0] * w[1], params.size), (inputs * outputs, inputs * outputs))
        layer.data = {"weight": params.reshape(inputs, outputs).T.copy()}  # dlib: out = x @ W
    else:
        raise s.fail(f"no reader for a {k} layer")


def read_dlib_net(path: str | Path) -> tuple[list[Layer], dict[str, Any]]:
    """The layer chain of :func:`face_net` (top down) filled with the file's weights, and info
    (``mean`` of the input layer on 0..255 RGB, ``chip_size``, loss ``margin``/``threshold``,
    ``sha256``, ``layers`` read). Raises :class:`DlibFormatError` on anything else."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no dlib model file at {path}")
    buf = path.read_bytes()
    s = _Stream(buf, path.name)
    layers = face_net()
    info: dict[str, Any] = {}
    # top down: the loss layer, then each layer's version header
    s.version(1, "the loss layer")
    s.name_is("loss_metric_2")
    info["margin"], info["threshold"] = s.float(), s.float()
    versions: list[int] = []
    for i, layer in enumerate(layers[1:-1], 1):
        if layer.kind in ("tag", "skip"):
            s.version(1, f"a {layer.kind} layer")
        else:
            below_is_input = layers[i + 1].kind == "input"
            versions.append(s.version((2, 3) if below_is_input else (1, 2), f"layer {i} ({layer.kind})"))
    s.name_is("input_rgb_image_sized")
    info["mean"] = [s.float() for _ in range(3)]
    info["chip_size"] = (s.int(), s.int())
    _check(s, "the input chip size", info["chip_size"], (150, 150))
    # bottom up: each computational layer's details and its (empty, for an inference net) buffers
    computational = [(layer, layers[i + 1].kind == "input") for i, layer in enumerate(layers[1:-1], 1)
                     if layer.kind not in ("tag", "skip")]
    for (layer, over_input), version in zip(reversed(computational), reversed(versions)):
        _details(s, layer)
        for _ in range(3):
            s.bool()
        for _ in range(3 if over_input else 2):  # x_grad, cached_output (+ grad_final over the input)
            s.tensor()
        if over_input and version >= 3:
            s.int()  # sample expansion factor
        elif not over_input and version >= 2:
            s.tensor()  # params_grad
    if s.pos != len(buf):
        raise s.fail(f"{len(buf) - s.pos} bytes left after the network")
    info["layers"] = len(layers)
    info["sha256"] = hashlib.sha256(buf).hexdigest()
    return layers, info
