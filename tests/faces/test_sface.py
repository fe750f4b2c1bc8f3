"""The SFace port: ONNX loading (int8 blocks, plain int8, float32), equality with onnxruntime on real
aligned crops, the converter's checkpoint and its round trip through h_model.load / FaceVerifier.load."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from h_model.models.sface import SFace, SFaceFormatError, dequantize, input_norm, read_onnx

REPO = Path(__file__).resolve().parents[2]
SFACE = REPO.parent / "shared" / "models" / "opencv_zoo" / "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"


@pytest.fixture(scope="module")
def sface_file() -> Path:
    if not SFACE.is_file():
        pytest.skip(f"the SFace ONNX file is not at {SFACE} (../shared/models of the project root)")
    return SFACE


@pytest.fixture(scope="module")
def port(sface_file: Path) -> tuple[SFace, dict]:
    state, info = read_onnx(sface_file)
    net = SFace()
    net.load_state_dict(state)
    return net.eval(), info


@pytest.fixture(scope="module")
def real_crops(faces_root: Path) -> torch.Tensor:
    """Five-point aligned 112x112 crops of 8 real photos of 4 people (uint8 [8, 3, 112, 112])."""
    from h_model.faces import FaceDetector

    det = FaceDetector(crop_size=112, alignment="five_point")
    people = sorted(p for p in (faces_root / "celeba_align").iterdir() if p.is_dir())[:4]
    photos = [f for p in people for f in sorted(p.iterdir())[:2]]
    return torch.stack([torch.from_numpy(np.array(f.crop)).permute(2, 0, 1) for f in det.largest(photos)])


def onnxruntime_embed(path: Path, x: np.ndarray) -> np.ndarray:
    """The reference: onnxruntime on 0..255 RGB float input, one crop at a time (the graph's batch is 1)."""
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    # leftover weight names that the graph lists as inputs but never reads: fed zeros
    unused = {i.name: np.zeros(i.shape, np.float32) for i in sess.get_inputs()
              if i.name != "data" and not i.name.startswith("scalar_op")}
    return np.concatenate([sess.run([sess.get_outputs()[0].name], {**unused, "data": x[i:i + 1]})[0]
                           for i in range(len(x))])


def port_embed(net: SFace, info: dict, crops: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(info["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(info["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return net((crops.float() / 255 - mean) / std).numpy()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# -- dequantisation ------------------------------------------------------------------------------
def test_dequantize_known_answers() -> None:
    x = np.array([[10, -4, 6], [2, 0, -8]], np.int8)
    assert dequantize(x, np.array(0.5, np.float32), np.array(2, np.int8)).tolist() == [[4, -3, 2], [0, -1, -5]]
    per_row = dequantize(x, np.array([1.0, 0.25], np.float32), np.array([0, -4], np.int8), axis=0)
    assert per_row.tolist() == [[10, -4, 6], [1.5, 1, -1]]
    # blocks of 2 along axis 1: columns {0, 1} share a scale, column {2} has its own
    blocked = dequantize(x, np.array([[1.0, 0.5], [2.0, 0.25]], np.float32),
                         np.array([[0, 2], [1, 0]], np.int8), axis=1, block_size=2)
    assert blocked.tolist() == [[10, -4, 2], [2, -2, -2]]
    with pytest.raises(SFaceFormatError, match="do not cover"):
        dequantize(x, np.ones((2, 1), np.float32), None, axis=1, block_size=2)


def test_input_norm_turns_the_scalar_ops_into_mean_and_std() -> None:
    n = input_norm(np.array([127.5]), np.array([0.0078125]))
    assert n["mean"] == [0.5] * 3 and n["std"] == pytest.approx([128 / 255] * 3, abs=1e-15)
    assert input_norm(None, None) == {"mean": [0.0] * 3, "std": [1 / 255] * 3}


# -- the shared file -----------------------------------------------------------------------------
def test_reads_the_int8_block_file(port: tuple[SFace, dict]) -> None:
    net, info = port
    assert info["sha256"] == SFACE_SHA256 and info["weights"] == "int8-blocks" and info["opset"] == 21
    assert info["mean"] == [0.5] * 3 and info["std"] == pytest.approx([128 / 255] * 3)
    assert net.head[3].weight.shape == (128, 50176)
    assert sum(p.numel() for p in net.parameters()) == 9_642_880  # convs, BatchNorm, PReLU and the 50176 x 128 layer (about 10 M)


def test_port_matches_onnxruntime_on_real_aligned_crops(port, sface_file: Path, real_crops: torch.Tensor) -> None:
    net, info = port
    ref = onnxruntime_embed(sface_file, real_crops.float().numpy())
    z = port_embed(net, info, real_crops)
    assert cosines(z, ref).min() >= 0.9999
    assert np.abs(z - ref).max() < 1e-3 * np.abs(ref).max()


def _dequantised_graph(src: Path, plain_int8: bool):
    """The same model with float32 weights (DequantizeLinear + Reshape folded into initializers), or
    with weights re-quantised per output channel to plain int8 (DequantizeLinear, axis 0, no blocks)."""
    import onnx
    from onnx import helper, numpy_helper

    from h_model.models.sface import _Graph

    m = onnx.load(str(src))
    g = _Graph(m.graph)
    folded = [n for n in m.graph.node if n.op_type in ("DequantizeLinear", "Reshape")]
    weights = {name: g.const(name) for n in m.graph.node if n.op_type in ("Conv", "Gemm")
               for name in n.input[1:] if name in g.producer}
    for n in folded:
        m.graph.node.remove(n)
    for name, w in weights.items():
        if plain_int8 and w.ndim > 1:
            scale = np.abs(w).reshape(len(w), -1).max(1) / 127.0
            q = np.clip(np.round(w / scale.reshape((-1,) + (1,) * (w.ndim - 1))), -127, 127).astype(np.int8)
            m.graph.initializer.extend([numpy_helper.from_array(q, name + "_q"),
                                        numpy_helper.from_array(scale.astype(np.float32), name + "_s"),
                                        numpy_helper.from_array(np.zeros(len(w), np.int8), name + "_z")])
            m.graph.node.insert(0, helper.make_node("DequantizeLinear", [name + "_q", name + "_s", name + "_z"],
                                                    [name], axis=0))
        else:
            m.graph.initializer.append(numpy_helper.from_array(w.astype(np.float32), name))
    return m


@pytest.mark.parametrize("plain_int8", [False, True], ids=["float32", "int8"])
def test_float32_and_plain_int8_builds_load(port, sface_file: Path, tmp_path: Path, plain_int8: bool) -> None:
    import onnx

    net, info = port
    path = tmp_path / "sface.onnx"
    onnx.save(_dequantised_graph(sface_file, plain_int8), str(path))
    state, info2 = read_onnx(path)
    assert info2["weights"] == ("int8" if plain_int8 else "float32") and info2["mean"] == info["mean"]
    ref = net.state_dict()
    if not plain_int8:
        assert all(torch.equal(state[k], ref[k]) for k in ref if k.endswith(("weight", "bias", "running_var")))
    else:  # re-quantised weights: close, not equal
        w, w0 = state["head.3.weight"], ref["head.3.weight"]
        assert not torch.equal(w, w0) and (w - w0).abs().max() <= w0.abs().amax(1).max() / 127
    other = SFace()
    other.load_state_dict(state)
    x = torch.randint(0, 256, (2, 3, 112, 112), dtype=torch.uint8)
    assert cosines(port_embed(other.eval(), info2, x), port_embed(net, info, x)).min() > (0.99 if plain_int8 else 0.99999)


def test_refuses_graphs_it_cannot_map(sface_file: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import helper

    m = onnx.load(str(sface_file))
    m.graph.node.append(helper.make_node("Add", ["fc1", "fc1"], ["twice"]))
    onnx.save(m, str(tmp_path / "residual.onnx"))
    with pytest.raises(SFaceFormatError, match=r"unsupported ops \['Add'\]"):
        read_onnx(tmp_path / "residual.onnx")
    with pytest.raises(FileNotFoundError):
        read_onnx(tmp_path / "missing.onnx")


# -- the converter and the checkpoint ------------------------------------------------------------
def test_convert_round_trip_through_load_and_the_verifier(port, sface_file: Path, tmp_path: Path,
                                                         real_crops: torch.Tensor, capsys) -> None:
    import h_model
    from h_model.faces import FaceVerifier
    from h_model.faces.__main__ import main

    net, info = port
    out = tmp_path / "sface16"
    assert main(["convert-sface", str(sface_file), "--out", str(out), "--float16"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["face"] == {"crop_size": 112, "margin": 0.0, "alignment": "five_point", "threshold": None, "far": None}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["backbone"] == "sface" and cfg["source"]["sha256"] == SFACE_SHA256
    assert cfg["source"]["stored_as"] == "float16" and "weights_path" not in cfg["model"]["backbone_kwargs"]
    learner = h_model.load(out, device="cpu")
    assert learner.preprocess.std == pytest.approx((128 / 255,) * 3)
    z = learner.embed(real_crops)
    assert cosines(z, port_embed(net, info, real_crops)).min() > 0.9999  # float16 storage costs nothing here
    v = FaceVerifier.load(out, device="cpu")
    assert v.detector.settings == {"crop_size": 112, "margin": 0.0, "alignment": "five_point"}
    assert cosines(v.embed_crops(list(real_crops)), z).min() > 0.99999


def test_backbone_weights_from_onnx_or_checkpoint(port, sface_file: Path, tmp_path: Path) -> None:
    from h_model.faces.convert import convert_sface
    from h_model.models import create_backbone

    net, _ = port
    convert_sface(sface_file, tmp_path / "ck")
    for src in (sface_file, tmp_path / "ck"):
        b = create_backbone("sface", weights_path=str(src))
        assert torch.equal(b.head[3].weight, net.head[3].weight)
    with pytest.raises(FileNotFoundError, match="no sface weights"):
        create_backbone("sface", weights_path=str(tmp_path / "nothing"))


def test_bundled_model_is_the_sface_dlib_ensemble_and_separates_real_people(real_crops: torch.Tensor) -> None:
    from h_model.bundled import bundled_path
    from h_model.faces import FaceVerifier

    path = bundled_path("faces")
    notice = (path / "NOTICE").read_text()
    assert "Apache License" in (path / "LICENSE").read_text() and "SFace" in notice and "dlib" in notice
    v = FaceVerifier.load(None, device="cpu")
    cfg = v.learner.config
    members = [m["backbone"] for m in cfg["model"]["backbone_kwargs"]["members"]]
    assert cfg["model"]["backbone"] == "ensemble" and members == ["sface", "dlib_resnet"]
    assert cfg["ensemble"]["members"][0]["source"]["sha256"] == SFACE_SHA256
    # chosen on validation pairs
    assert v.detector.settings == {"crop_size": 112, "margin": 0.0, "alignment": "five_point", "detector": "yunet",
                                   "yunet_sure": 0.85, "fuse_landmarks": True, "fuse_min_face": 0.7}
    assert v.learner.model.flip_embed  # the test-time flip chosen on validation pairs
    assert 0.3 < v.threshold < 0.9 and v.far == pytest.approx(1e-3)
    z = v.embed_crops(list(real_crops))  # 4 people x 2 photos, in order
    sims = z @ z.T
    person = np.arange(8) // 2
    same = sims[(person[:, None] == person[None]) & ~np.eye(8, dtype=bool)]
    diff = sims[person[:, None] != person[None]]
    assert same.min() > v.threshold > diff.max()  # every pair decided right at the calibrated threshold
