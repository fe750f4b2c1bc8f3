"""The dlib face ResNet port: the .dat reader, equality with dlib on its own chips, the chip_affine
resampling, the converter's checkpoint round trip, clear errors on other files; and (without dlib)
the module's shapes, input normalisation and registry entry."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from h_model.models.dlib_format import DlibFormatError, _Stream, read_dlib_net
from h_model.models.dlib_resnet import DLIB_INPUT_NORM, Affine, DlibResNet, dlib_state, padded_add
from tests.faces.face_helpers import dlib_chips, dlib_reference

N_CHIPS = 24


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def normalise(chips: torch.Tensor, norm: dict = DLIB_INPUT_NORM) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` -> ``(x / 255 - mean) / std`` as the checkpoint's preprocessing does."""
    mean, std = (torch.tensor(norm[k], dtype=torch.float32).view(1, 3, 1, 1) for k in ("mean", "std"))
    return (chips.float() / 255 - mean) / std


def embed(net: DlibResNet, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return net.eval()(x).numpy()


# -- without dlib ----------------------------------------------------------------------------------
def test_serialisation_primitives_known_answers() -> None:
    s = _Stream(b"\x01\x02" b"\x81\x05" b"\x03\x0a\xd7\xa3\x81\x1c" b"1" b"\x01\x04con_", "t")
    assert s.int() == 2 and s.int() == -5
    assert s.float() == pytest.approx(0.04, abs=1e-9)  # 0xa3d70a * 2**-28
    assert s.bool() is True and s.string() == "con_"
    with pytest.raises(DlibFormatError, match="ends inside"):
        s.int()
    with pytest.raises(DlibFormatError, match="control byte"):
        _Stream(b"\x09" + bytes(9), "t").int()


def test_padded_add_zero_pads_the_smaller_tensor_at_the_end() -> None:
    a = torch.ones(1, 2, 2, 2)
    b = torch.full((1, 1, 3, 3), 10.0)
    out = padded_add(a, b)
    assert out.shape == (1, 2, 3, 3)
    assert out[0, 0, :2, :2].eq(11).all() and out[0, 0, 2].eq(10).all() and out[0, 0, :, 2].eq(10).all()
    assert out[0, 1, :2, :2].eq(1).all() and out[0, 1, 2].eq(0).all() and out[0, 1, :, 2].eq(0).all()


def test_shapes_chip_affine_and_errors_with_random_weights() -> None:
    torch.manual_seed(0)
    net = DlibResNet()
    assert embed(net, torch.randn(2, 3, 150, 150)).shape == (2, 128)
    assert sum(p.numel() for p in net.parameters()) == 5_614_592
    scale = 112 / 150  # a 112 crop of the same view: chip pixel centre u -> (u + 0.5) * s - 0.5
    crop_net = DlibResNet(input_size=112, chip_affine=[[scale, 0, 0.5 * scale - 0.5], [0, scale, 0.5 * scale - 0.5]])
    assert embed(crop_net, torch.randn(3, 3, 112, 112)).shape == (3, 128)
    with pytest.raises(ValueError, match="give chip_affine"):
        DlibResNet(input_size=112)
    with pytest.raises(ValueError, match="2x3"):
        DlibResNet(input_size=112, chip_affine=[[1, 0], [0, 1]])
    with pytest.raises(ValueError, match=r"expects \[N, 3, 150, 150\]"):
        net(torch.zeros(1, 3, 112, 112))


def test_input_norm_is_undone_before_dlibs_own() -> None:
    torch.manual_seed(1)
    plain = DlibResNet()
    sface_norm = {"mean": [0.5] * 3, "std": [128 / 255] * 3}
    other = DlibResNet(input_norm=sface_norm)
    other.load_state_dict(plain.state_dict())
    assert other.input_norm["std"] == pytest.approx((128 / 255,) * 3)
    pixels = torch.randint(0, 256, (2, 3, 150, 150), dtype=torch.uint8)
    a, b = embed(plain, normalise(pixels)), embed(other, normalise(pixels, sface_norm))
    assert np.abs(a - b).max() < 1e-4 * np.abs(a).max()


def test_registry_entry_and_fine_tuning_gradients() -> None:
    from h_model.models import create_backbone, create_model, list_backbones

    assert "dlib_resnet" in list_backbones()
    model = create_model("proto", "dlib_resnet", input_shape=(3, 150, 150), distance="cosine")
    assert model.spec["backbone"] == "dlib_resnet" and model.backbone.input_size == 150
    b = create_backbone("dlib_resnet", input_size=112, chip_affine=[[0.75, 0, 0], [0, 0.75, 0]])
    z = b(torch.randn(2, 3, 112, 112))
    z.sum().backward()
    affines = [m for m in b.modules() if isinstance(m, Affine)]
    assert len(affines) == 29 and all(m.weight.grad is not None for m in affines)
    with pytest.raises(ValueError, match="3-channel"):
        create_backbone("dlib_resnet", in_channels=1)


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "noise.dat"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DlibFormatError):
        read_dlib_net(bad)
    with pytest.raises(FileNotFoundError):
        read_dlib_net(tmp_path / "missing.dat")


# -- with dlib and its model files ----------------------------------------------------------------
@pytest.fixture(scope="module")
def reference():
    return dlib_reference()


@pytest.fixture(scope="module")
def dat_file(reference) -> Path:
    return Path(reference[1].face_recognition_model_location())


@pytest.fixture(scope="module")
def port(dat_file: Path) -> DlibResNet:
    net = DlibResNet()
    net.load_state_dict(dlib_state(dat_file)[0])
    return net.eval()


@pytest.fixture(scope="module")
def chips(reference, faces_root: Path) -> torch.Tensor:
    """dlib's own 150x150 chips of real photos (uint8 ``[N, 3, 150, 150]``)."""
    photos = [f for p in sorted((faces_root / "celeba_align").iterdir()) if p.is_dir() for f in sorted(p.iterdir())[:2]]
    got = dlib_chips(photos, N_CHIPS, *reference)
    assert len(got) == N_CHIPS
    return torch.from_numpy(np.stack(got)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def dlib_embeddings(reference, dat_file: Path, chips: torch.Tensor) -> np.ndarray:
    net = reference[0].face_recognition_model_v1(str(dat_file))
    return np.array([np.asarray(net.compute_face_descriptor(np.ascontiguousarray(c.permute(1, 2, 0).numpy())))
                     for c in chips], np.float32)


def test_reads_the_real_file(dat_file: Path) -> None:
    layers, info = read_dlib_net(dat_file)
    kinds = [layer.kind for layer in layers]
    assert kinds.count("con") == 29 and kinds.count("affine") == 29 and kinds.count("fc") == 1
    assert kinds.count("add_prev") == 14 and kinds[0] == "loss" and kinds[-1] == "input"
    assert info["mean"] == pytest.approx([122.782, 117.001, 104.298], abs=1e-4) and info["chip_size"] == (150, 150)
    assert info["margin"] == pytest.approx(0.04) and info["threshold"] == pytest.approx(0.6)
    state, _ = dlib_state(dat_file)
    assert state["fc.weight"].shape == (128, 256) and state["stem.0.weight"].shape == (32, 3, 7, 7)
    assert sum(v.numel() for v in state.values()) == 5_614_592


def test_port_matches_dlib_on_its_chips(port: DlibResNet, chips: torch.Tensor, dlib_embeddings: np.ndarray) -> None:
    z = embed(port, normalise(chips))
    cos = cosines(z, dlib_embeddings)
    assert cos.min() >= 0.9999, cos.min()
    assert np.abs(z - dlib_embeddings).max() < 1e-4 * np.abs(dlib_embeddings).max()


def test_chip_affine_resampling_reproduces_the_chip(port: DlibResNet, chips: torch.Tensor) -> None:
    direct = embed(port, normalise(chips[:6]))
    state = port.state_dict()

    def through(size: int, affine: list[list[float]], x: torch.Tensor) -> np.ndarray:
        net = DlibResNet(input_size=size, chip_affine=affine)
        net.load_state_dict(state)
        return embed(net, x)

    same = through(150, [[1, 0, 0], [0, 1, 0]], normalise(chips[:6]))
    assert np.abs(same - direct).max() < 1e-5
    # every chip pixel repeated 2x2: chip pixel u is centred at 2u + 0.5 of the big input
    big = normalise(chips[:6].repeat_interleave(2, 2).repeat_interleave(2, 3))
    doubled = through(300, [[2, 0, 0.5], [0, 2, 0.5]], big)
    assert np.abs(doubled - direct).max() < 1e-4 * np.abs(direct).max()
    shifted = through(300, [[2, 0, 1.5], [0, 2, 1.5]], big)  # half a chip pixel off: close, not the same
    assert np.abs(shifted - direct).max() > 1e-3 * np.abs(direct).max()


def test_convert_round_trip_through_load(port: DlibResNet, dat_file: Path, chips: torch.Tensor,
                                         dlib_embeddings: np.ndarray, tmp_path: Path, capsys) -> None:
    import h_model
    from h_model.faces.__main__ import main
    from h_model.models import create_backbone

    for float16, tol in ((False, 0.9999), (True, 0.999)):
        out = tmp_path / f"dlib{16 if float16 else 32}"
        assert main(["convert-dlib", str(dat_file), "--out", str(out)] + (["--float16"] if float16 else [])) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["face"] == {"crop_size": 150, "margin": 0.0, "alignment": "dlib_chip", "threshold": None,
                                   "far": None}
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["model"]["backbone"] == "dlib_resnet" and "weights_path" not in cfg["model"]["backbone_kwargs"]
        assert cfg["source"]["licence"].startswith("public domain") and len(cfg["source"]["sha256"]) == 64
        assert cfg["source"]["stored_as"] == ("float16" if float16 else "float32")
        learner = h_model.load(out, device="cpu")
        assert learner.preprocess.size == (150, 150) and learner.preprocess.std == pytest.approx((256 / 255,) * 3)
        assert cosines(learner.embed(chips), dlib_embeddings).min() >= tol
    b = create_backbone("dlib_resnet", weights_path=str(tmp_path / "dlib32"))
    assert torch.equal(b.fc.weight, port.fc.weight)
    b = create_backbone("dlib_resnet", weights_path=str(dat_file))
    assert torch.equal(b.blocks[0].conv1.weight, port.blocks[0].conv1.weight)
    with pytest.raises(FileNotFoundError, match="no dlib_resnet weights"):
        create_backbone("dlib_resnet", weights_path=str(tmp_path / "nothing"))


def test_other_checkpoints_and_files_are_refused(dat_file: Path, reference, tmp_path: Path) -> None:
    from h_model.models import create_backbone
    from tests.faces.face_helpers import make_checkpoint

    with pytest.raises(ValueError, match="holds a conv4 backbone, not dlib_resnet"):
        create_backbone("dlib_resnet", weights_path=str(make_checkpoint(tmp_path / "conv4")))
    raw = dat_file.read_bytes()
    cases = {"truncated": raw[:len(raw) // 2], "renamed": raw.replace(b"loss_metric_2", b"loss_metric_9", 1),
             "trailing": raw + b"\x00", "conv": raw.replace(b"\x05con_4", b"\x05con_7", 1)}
    messages = {"truncated": "ends inside", "renamed": "'loss_metric_9'", "trailing": "1 bytes left",
                "conv": "'con_7'"}
    for name, data in cases.items():
        (tmp_path / f"{name}.dat").write_bytes(data)
        with pytest.raises(DlibFormatError, match=messages[name]):
            read_dlib_net(tmp_path / f"{name}.dat")
    with pytest.raises(DlibFormatError, match="not dlib's face recognition ResNet"):
        read_dlib_net(reference[1].pose_predictor_five_point_model_location())  # another dlib file


@pytest.fixture(scope="module")
def five_point_crops(faces_root: Path) -> torch.Tensor:
    """YuNet five-point 112x112 crops of 8 real photos of 4 people (uint8 ``[8, 3, 112, 112]``)."""
    from h_model.faces import FaceDetector

    det = FaceDetector(crop_size=112, alignment="five_point", detector="yunet")
    people = sorted(p for p in (faces_root / "celeba_align").iterdir() if p.is_dir())[:4]
    photos = [f for p in people for f in sorted(p.iterdir())[:2]]
    return torch.stack([torch.from_numpy(np.array(f.crop)).permute(2, 0, 1) for f in det.largest(photos)])


def test_chip_map_fitted_on_five_point_crops(reference, five_point_crops: torch.Tensor) -> None:
    from h_model.faces.chip_map import fit_chip_affine

    m, spread = fit_chip_affine(five_point_crops)
    (a, b, tx), (c, d, ty) = m
    assert spread["crops"] == 8
    assert 0.6 < a < 0.8 and 0.6 < d < 0.8 and abs(b) < 0.05 and abs(c) < 0.05  # an upscale, no rotation
    assert 0 < tx < 12 and 10 < ty < 30  # dlib's chip sits lower on the face (the chin) than the five-point crop
    with pytest.raises(ValueError, match="uint8"):
        fit_chip_affine(five_point_crops.float())


def test_convert_like_another_model_makes_an_ensemble_member(dat_file: Path, tmp_path: Path,
                                                            five_point_crops: torch.Tensor) -> None:
    import h_model
    from h_model.bundled import bundled_path
    from h_model.ensemble import ensemble_checkpoints
    from h_model.faces import FaceVerifier
    from h_model.faces.convert import convert_dlib

    like = bundled_path("faces")
    with pytest.raises(ValueError, match="chip_affine"):
        convert_dlib(dat_file, tmp_path / "x", like=like)
    m = [[0.689, 0.0, 4.3], [0.0, 0.689, 20.5]]
    cfg = convert_dlib(dat_file, tmp_path / "d", like=like, chip_affine=m)
    ref = json.loads((like / "config.json").read_text())
    assert cfg["preprocess"] == ref["preprocess"] and cfg["face"]["detector"] == "yunet"
    assert cfg["model"]["backbone_kwargs"]["chip_affine"] == m and cfg["model"]["model_kwargs"]["flip_embed"]
    v = FaceVerifier.load(tmp_path / "d", device="cpu")  # takes the five-point crops like the other model
    # the other model's face choice too
    assert v.detector.settings == {"crop_size": 112, "margin": 0.0, "alignment": "five_point", "detector": "yunet",
                                   "yunet_sure": 0.85, "fuse_landmarks": True, "fuse_min_face": 0.7}
    z = v.embed_crops(list(five_point_crops))
    sims = z @ z.T
    person = np.arange(8) // 2
    assert sims[(person[:, None] == person[None]) & ~np.eye(8, dtype=bool)].min() > \
        sims[person[:, None] != person[None]].max()  # dlib's ResNet tells these 4 people apart from the crops
    convert_dlib(dat_file, tmp_path / "d2", like=tmp_path / "d", chip_affine=m)
    ensemble_checkpoints([tmp_path / "d", tmp_path / "d2"], tmp_path / "dd")  # same crops and head: they combine
    assert h_model.load(tmp_path / "dd", device="cpu").embed(five_point_crops[:2]).shape == (2, 256)
