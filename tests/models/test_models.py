"""One parametrized test over every registered variant and backbone."""
import pytest
import torch

import h_model
from h_model.checkpoint import save_checkpoint
from h_model.models import create_model, list_backbones, list_models
from h_model.preprocess import Preprocess

BACKBONE_CASES = {  # name -> (kwargs, input shape): small but real configurations
    "conv4": ({"in_channels": 1}, (1, 28, 28)),
    "resnet12": ({"in_channels": 3, "channels": [8, 16, 16, 32]}, (3, 28, 28)),
    "inception_resnet_v1": ({}, (3, 96, 96)),
    "face_resnet": ({"channels": [8, 16, 16, 32], "blocks": [1, 1, 1, 1], "dim": 24}, (3, 48, 48)),
    "sface": ({"dim": 32}, (3, 48, 48)),  # SFace's layers on a 48x48 input (the published weights want 112)
    # dlib's ResNet on its 150x150 chip, resampled from a 48x48 input (chip pixel u -> 0.32 u - 0.34)
    "dlib_resnet": ({"dim": 32, "chip_affine": [[0.32, 0, -0.34], [0, 0.32, -0.34]]}, (3, 48, 48)),
    "nas_cnn": ({"layers": [{"filters": 24, "kernel_h": 3, "kernel_w": 5, "stride_h": 2, "stride_w": 1},
                            {"filters": 36, "kernel_h": 1, "kernel_w": 3, "stride_h": 1, "stride_w": 2}]}, (1, 28, 28)),
    "ensemble": ({"members": [{"backbone": "face_resnet", "kwargs": {"channels": [8, 16, 16, 32], "dim": 24}},
                              {"backbone": "resnet12", "kwargs": {"channels": [8, 8, 16, 16]}}]}, (3, 48, 48)),
}
VARIANT_KWARGS = {"proto": {}, "matching": {"fce": True, "fce_steps": 2}, "siamese": {"hidden": 32},
                  "transformer": {"width": 32, "depth": 2, "heads": 4, "mlp": 64}}


PRETRAINED_ALIASES = {"facenet-vggface2": "vggface2", "facenet-casia": "casia-webface"}


def test_every_registered_name_has_a_case():
    assert set(list_backbones()) == set(BACKBONE_CASES) | set(PRETRAINED_ALIASES)
    assert set(list_models()) >= set(VARIANT_KWARGS)


def episode(shape, way=3, shot=2, query=2, batch=2):
    torch.manual_seed(0)
    sx = torch.randn(batch, way * shot, *shape)
    qx = torch.randn(batch, way * query, *shape)
    sy = torch.arange(way).repeat_interleave(shot).expand(batch, -1)
    qy = torch.arange(way).repeat_interleave(query).expand(batch, -1)
    return sx, sy, qx, qy


@pytest.mark.parametrize("backbone", sorted(BACKBONE_CASES))
@pytest.mark.parametrize("variant", sorted(VARIANT_KWARGS))
def test_shapes_gradients_and_checkpoint_round_trip(variant, backbone, tmp_path):
    if backbone in ("inception_resnet_v1", "sface", "dlib_resnet") and variant != "proto":
        pytest.skip("the pretrained-size face backbones are exercised once, under proto")
    bkw, shape = BACKBONE_CASES[backbone]
    model = create_model(variant, backbone, bkw, input_shape=shape, **VARIANT_KWARGS[variant])
    sx, sy, qx, qy = episode(shape)
    loss, logits = model.episode_loss(sx, sy, qx, qy)
    assert logits.shape == (2, 6, 3)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads), "some parameter received no gradient"
    assert any(float(g.abs().sum()) > 0 for g in grads)
    assert model(sx[0], sy[0], qx[0]).shape == (6, 3)  # a single unbatched episode
    # checkpoint round trip: identical predictions in eval mode
    model.eval()
    prep = Preprocess(size=shape[1:], channels=shape[0])
    save_checkpoint(tmp_path, model, {"preprocess": prep.to_dict()})
    learner = h_model.load(tmp_path, device="cpu")
    with torch.no_grad():
        assert torch.equal(model(sx, sy, qx), learner.model(sx, sy, qx))
    learner2 = h_model.load(tmp_path / "model.safetensors", device="cpu")
    with torch.no_grad():
        assert torch.equal(model.embed(qx[0]), learner2.model.embed(qx[0]))


@pytest.mark.parametrize("alias", sorted(PRETRAINED_ALIASES))
def test_pretrained_face_backbones_load_a_local_weights_file(alias, tmp_path):
    from facenet_pytorch import InceptionResnetV1

    from h_model.models import create_backbone

    torch.manual_seed(1)
    ref = InceptionResnetV1(pretrained=None).eval()
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    net = create_backbone(alias, weights_path=str(tmp_path / "w.pt"), freeze=True).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(net(x), ref(x))
    assert not any(p.requires_grad for p in net.parameters())


def test_face_resnet_takes_its_input_size_from_the_model_input():
    m = create_model("proto", "face_resnet", {"channels": [8, 8, 8, 8], "dim": 16}, input_shape=(3, 80, 80))
    assert m.spec["backbone_kwargs"]["input_size"] == 80 and m.spec["backbone_kwargs"]["in_channels"] == 3
    assert m.embed(torch.randn(2, 3, 80, 80)).shape == (2, 16)


def test_create_model_by_combined_name_and_unknown_name():
    m = create_model("proto_conv4")
    assert m.spec["variant"] == "proto" and m.spec["backbone"] == "conv4"
    with pytest.raises(KeyError, match="registered"):
        create_model("nonexistent", "conv4")


def test_prototypical_logits_are_negative_squared_distances():
    model = create_model("proto", "conv4")
    s = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]]])
    y = torch.tensor([[0, 0, 1]])
    q = torch.tensor([[[1.0, 1.0]]])
    logits = model.head(s, y, q, 2)  # prototypes (1, 0) and (0, 3)
    assert torch.allclose(logits, torch.tensor([[[-1.0, -5.0]]]))


def test_matching_probabilities_sum_to_one_and_follow_attention():
    model = create_model("matching", "conv4", learn_scale=False, scale=1.0)
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    y = torch.tensor([[0, 1]])
    q = torch.tensor([[[1.0, 0.0]]])
    p = model.head(s, y, q, 2).exp()
    e = torch.exp(torch.tensor(1.0))
    assert torch.allclose(p, torch.tensor([[[e / (e + 1), 1 / (e + 1)]]]))


def test_siamese_class_logit_is_best_pair():
    model = create_model("siamese", "conv4", dim=2)
    with torch.no_grad():
        model.distance.weight.copy_(torch.tensor([[-1.0, -1.0]]))
        model.distance.bias.zero_()
    s = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [1.0, 0.0]]])
    y = torch.tensor([[0, 0, 1]])
    q = torch.tensor([[[4.0, 5.0]]])
    assert torch.allclose(model.head(s, y, q, 2), torch.tensor([[[-1.0, -8.0]]]))
    model.pool = "mean"  # class 0: (-9 + -1) / 2
    assert torch.allclose(model.head(s, y, q, 2), torch.tensor([[[-5.0, -8.0]]]))


def test_siamese_rejects_unknown_pool():
    with pytest.raises(ValueError, match="pool must be one of"):
        create_model("siamese", "conv4", dim=2, pool="median")


@pytest.mark.parametrize("variant", ["proto", "siamese"])
def test_flip_embed_is_mirror_invariant_at_test_time_only(variant, tmp_path):
    bkw, shape = BACKBONE_CASES["face_resnet"]
    kwargs = {"distance": "cosine"} if variant == "proto" else {}
    model = create_model(variant, "face_resnet", bkw, input_shape=shape, flip_embed=True, **kwargs)
    plain = create_model(variant, "face_resnet", bkw, input_shape=shape, **kwargs)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 5, *shape)
    assert model.flip_embed and not plain.flip_embed
    torch.manual_seed(1)
    z_train = model.embed(x)
    torch.manual_seed(1)  # the same dropout masks
    assert torch.equal(z_train, plain.embed(x))  # training mode: no flip
    model.eval(), plain.eval()
    with torch.no_grad():
        z = model.embed(x)
        assert z.shape == plain.embed(x).shape
        assert torch.allclose(z, model.embed(x.flip(-1)), atol=1e-5)
        assert torch.allclose(z, (plain.embed(x) + plain.embed(x.flip(-1))) / 2, atol=1e-5)
        assert not torch.allclose(z, plain.embed(x), atol=1e-3)
    save_checkpoint(tmp_path, model, {"preprocess": Preprocess(size=shape[1:], channels=shape[0]).to_dict()})
    learner = h_model.load(tmp_path, device="cpu")
    assert learner.model.flip_embed
    with torch.no_grad():
        assert torch.equal(learner.model.embed(x), z)


def test_ensemble_embedding_is_the_members_normalised_embeddings_side_by_side():
    from h_model.models.backbones import create_backbone

    members = [{"backbone": "face_resnet", "kwargs": {"channels": [8, 16, 16, 32], "dim": 24}},
               {"backbone": "face_resnet", "kwargs": {"channels": [8, 8, 8, 16], "dim": 8}}]
    torch.manual_seed(0)
    ens = create_backbone("ensemble", members=members, in_channels=3, input_size=48).eval()
    x = torch.randn(4, 3, 48, 48)
    with torch.no_grad():
        z = ens(x)
        parts = [torch.nn.functional.normalize(m(x), dim=-1) for m in ens.members]
    assert z.shape == (4, 32)
    assert torch.allclose(z.norm(dim=-1), torch.ones(4))
    cos = z @ z.T  # the mean of the members' cosines
    assert torch.allclose(cos, sum(p @ p.T for p in parts) / 2, atol=1e-6)
    mean = create_backbone("ensemble", members=members[:1] * 2, mode="mean", in_channels=3, input_size=48).eval()
    mean.members[1].load_state_dict(ens.members[0].state_dict())
    with torch.no_grad():
        mean.members[0].load_state_dict(ens.members[0].state_dict())
        assert torch.allclose(mean(x), parts[0], atol=1e-6)  # identical members: their own embedding
        with pytest.raises(ValueError, match="one embedding size"):
            create_backbone("ensemble", members=members, mode="mean", in_channels=3, input_size=48).eval()(x)
    with pytest.raises(ValueError, match="mode must be"):
        create_backbone("ensemble", members=members, mode="max")
    with pytest.raises(ValueError, match="ensemble members"):
        create_backbone("ensemble", members=[{"backbone": "ensemble"}])
    with pytest.raises(ValueError, match="at least one member"):
        create_backbone("ensemble", members=[])


def test_flip_embed_refuses_learners_that_adapt():
    with pytest.raises(ValueError, match="flip_embed"):
        create_model("maml", "conv4", {"in_channels": 1}, input_shape=(1, 28, 28), flip_embed=True)


@pytest.mark.parametrize("variant,kwargs", [("matching", {}), ("proto", {"distance": "cosine"})])
def test_learned_scale_lives_in_log_space_and_old_checkpoints_load(variant, kwargs):
    model = create_model(variant, "conv4", scale=10.0, **kwargs)
    assert [n for n, _ in model.named_parameters() if "scale" in n] == ["log_scale"]
    assert torch.allclose(model.scale, torch.tensor(10.0))
    old = {k: v for k, v in model.state_dict().items() if k != "log_scale"}
    old["scale"] = torch.tensor(12.5)  # a checkpoint from before log_scale
    model.load_state_dict(old)
    assert torch.allclose(model.scale, torch.tensor(12.5))
    with pytest.raises(ValueError, match="scale must be > 0"):
        create_model(variant, "conv4", scale=0.0, **kwargs)


def test_conv4_takes_one_width_per_layer_and_the_checkpoint_keeps_them(tmp_path):
    model = create_model("proto", "conv4", {"in_channels": 1, "hidden": [16, 32, 64, 64]}, input_shape=(1, 28, 28))
    convs = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 16), (16, 32), (32, 64), (64, 64)]
    assert model.embed(torch.randn(3, 1, 28, 28)).shape == (3, 64)
    save_checkpoint(tmp_path / "run", model, {"preprocess": Preprocess(size=(28, 28), channels=1).to_dict()})
    again = h_model.load(tmp_path / "run")
    assert [c.out_channels for c in again.model.backbone.modules() if isinstance(c, torch.nn.Conv2d)] == [16, 32, 64, 64]
    with pytest.raises(ValueError, match="positive channel count"):
        create_model("proto", "conv4", {"hidden": [16, 0, 64]})
    with pytest.raises(ValueError, match="positive channel count"):
        create_model("proto", "conv4", {"hidden": []})


def test_the_default_run_builds_its_tapered_conv4():
    import yaml
    from pathlib import Path

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "training" / "configs" / "default.yaml").read_text())
    model = create_model(cfg["variant"], cfg["backbone"], {"in_channels": 1, **cfg["backbone_kwargs"]},
                         input_shape=(1, cfg["image_size"], cfg["image_size"]))
    assert model.embed(torch.randn(2, 1, 28, 28)).shape == (2, cfg["backbone_kwargs"]["hidden"][-1])
