"""Every meta-learning variant: shapes, gradients, eval-mode adaptation, checkpoints, evaluator."""
import math

import pytest
import torch
import torch.nn.functional as F

import h_model
from h_model.checkpoint import save_checkpoint
from h_model.evaluate import evaluate
from h_model.meta.common import BatchStatNorm
from h_model.meta.lstm_meta import preprocess
from h_model.models import create_model, list_models
from h_model.preprocess import Preprocess
from tests.conftest import tiny_imageset

SHAPE = (1, 28, 28)
BACKBONE = {"hidden": 8}
VARIANTS = {"maml": {}, "fomaml": {}, "metasgd": {}, "reptile": {"steps": 2, "test_steps": 3},
            "lstm": {"steps": 2, "test_steps": 3, "hidden": 4}}


def episode(way=3, shot=2, query=2, batch=2):
    g = torch.Generator().manual_seed(0)
    sx = torch.randn(batch, way * shot, *SHAPE, generator=g)
    qx = torch.randn(batch, way * query, *SHAPE, generator=g)
    sy = torch.arange(way).repeat_interleave(shot).expand(batch, -1)
    qy = torch.arange(way).repeat_interleave(query).expand(batch, -1)
    return sx, sy, qx, qy


def make(variant, **kw):
    torch.manual_seed(0)
    return create_model(variant, "conv4", BACKBONE, input_shape=SHAPE, **{**VARIANTS[variant], **kw})


def test_all_variants_registered():
    assert set(list_models()) >= set(VARIANTS)
    assert all(not make(v).embeds_independently for v in VARIANTS)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_shapes_gradients_and_checkpoint_round_trip(variant, tmp_path):
    model = make(variant)
    with torch.no_grad():  # a non-zero head init, so that the first inner step reaches the backbone
        model.head_w.normal_(0, 0.1)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(isinstance(m, BatchStatNorm) for m in model.modules()) == 4
    sx, sy, qx, qy = episode()
    loss, logits = model.episode_loss(sx, sy, qx, qy, 3)
    assert logits.shape == (2, 6, 3) and torch.isfinite(loss) and loss.dim() == 0
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert float(model.head_w.grad[3:].abs().sum()) == 0  # rows beyond the episode's way are unused
    for name, p in model.named_parameters():
        if name != "head_w":
            assert float(p.grad.abs().sum()) > 0, f"{name} received a zero meta-gradient"
    # a training step changes the prediction
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    opt.step()
    assert model(sx[0], sy[0], qx[0]).shape == (6, 3)  # one unbatched episode, way inferred
    # eval mode, under no_grad (as evaluate() and Learner.predict call it): adaptation still runs
    model.eval()
    with torch.no_grad():
        out = model(sx, sy, qx, way=3)
    assert out.shape == (2, 6, 3) and not out.requires_grad
    with torch.enable_grad():
        torch.testing.assert_close(model(sx, sy, qx, way=3).detach(), out, rtol=1e-4, atol=1e-5)
    prep = Preprocess(size=SHAPE[1:], channels=SHAPE[0])
    save_checkpoint(tmp_path, model, {"preprocess": prep.to_dict()})
    learner = h_model.load(tmp_path, device="cpu")
    assert type(learner.model) is type(model)
    with torch.no_grad():
        assert torch.equal(model(sx, sy, qx, way=3), learner.model(sx, sy, qx, way=3))
    assert learner.model.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("variant", ["maml", "lstm"])
def test_test_time_uses_test_steps(variant):
    sx, sy, qx, _ = episode()
    model = make(variant, test_steps=VARIANTS[variant].get("steps", 1))
    more = make(variant)  # same weights (same seed), more test-time steps
    model.eval(), more.eval()
    with torch.no_grad():
        same_steps = model(sx, sy, qx, way=3)
        model.train()
        torch.testing.assert_close(model(sx, sy, qx, way=3).detach(), same_steps)
        assert not torch.allclose(more(sx, sy, qx, way=3), same_steps)


@pytest.mark.parametrize("variant", ["maml", "metasgd", "reptile"])
def test_vmap_and_task_loop_agree(variant):
    sx, sy, qx, qy = episode(batch=3)
    a, b = make(variant, use_vmap=True), make(variant, use_vmap=False)
    la, ga = a.episode_loss(sx, sy, qx, qy, 3)
    lb, gb = b.episode_loss(sx, sy, qx, qy, 3)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5)
    la.backward(), lb.backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-3, atol=1e-5, msg=n)


def test_metasgd_learns_per_parameter_rates_and_maml_does_not_have_them():
    m = make("metasgd", inner_lr=0.1)
    assert len(m.inner_lrs) == len(m.learner_params(m.max_way))
    assert all(torch.equal(a, torch.full_like(a, 0.1)) for a in m.inner_lrs)
    assert make("maml").inner_lrs is None


def test_way_above_max_way_is_a_clear_error():
    m = make("maml", max_way=4)
    sx, sy, qx, _ = episode(way=5, shot=1, query=1, batch=1)
    with pytest.raises(ValueError, match="max_way=4"):
        m(sx, sy, qx, way=5)


def test_batch_stat_norm_matches_batchnorm_in_training_mode():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.normal_(), bn.bias.normal_()
    ours = BatchStatNorm(3)
    ours.weight, ours.bias = bn.weight, bn.bias
    x = torch.randn(5, 3, 4, 4) * 3 + 1
    torch.testing.assert_close(ours(x), bn.train()(x), rtol=1e-5, atol=1e-5)
    # batch statistics also in eval mode: an image's output depends on its batch
    ours.eval()
    assert not torch.allclose(ours(x)[:2], ours(x[:2]))


def test_gradient_preprocessing_of_the_paper():
    p = 10.0
    x = torch.tensor([2.0, -0.5, 1e-6, -1e-6, 0.0])
    out = preprocess(x, p)
    torch.testing.assert_close(out[0], torch.tensor([math.log(2.0) / p, 1.0]))
    torch.testing.assert_close(out[1], torch.tensor([math.log(0.5) / p, -1.0]))
    torch.testing.assert_close(out[2], torch.tensor([-1.0, math.exp(p) * 1e-6]))  # |x| < e^-p
    torch.testing.assert_close(out[3], torch.tensor([-1.0, -math.exp(p) * 1e-6]))
    torch.testing.assert_close(out[4], torch.tensor([-1.0, 0.0]))


def test_lstm_update_follows_the_cell_equations():
    m = make("lstm", steps=1)
    assert 4.0 <= float(m.b_f.detach()) <= 6.0 and -5.0 <= float(m.b_i.detach()) <= -4.0
    sx, sy, qx, _ = episode(batch=1)
    with torch.no_grad():
        _, theta = m.run(sx, sy, qx, 3)
    got = torch.cat([v[0].reshape(-1) for v in theta.values()])
    # reference: one step written out with plain autograd, theta_1 = f * theta_0 - i * grad
    phi = {k: v.detach().clone().requires_grad_() for k, v in m.learner_params(3).items()}
    loss = F.cross_entropy(m.learner_logits(phi, sx[0]), sy[0])
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, list(phi.values()))])
    th0 = torch.cat([v.detach().reshape(-1) for v in phi.values()])
    with torch.no_grad():
        x = torch.cat([preprocess(g), preprocess(loss.detach()).expand(len(g), 2)], dim=-1)
        h, _ = m.lstm(x)
        zero = torch.zeros(len(g), 1)
        f = torch.sigmoid(torch.cat([h, th0[:, None], zero], -1) @ m.w_f + m.b_f)
        i = torch.sigmoid(torch.cat([h, th0[:, None], zero], -1) @ m.w_i + m.b_i)
    assert f.min() > 0.97 and i.max() < 0.03  # the paper's initialisation: keep theta, small steps
    torch.testing.assert_close(got, f * th0 - i * g, rtol=1e-5, atol=1e-7)
    assert (got - th0).abs().max() > 0


@pytest.mark.parametrize("variant", ["maml", "lstm"])
def test_evaluator_runs_adapting_models_episode_by_episode(variant):
    data = tiny_imageset(classes=10, per_class=6, size=8)
    torch.manual_seed(0)
    m = create_model(variant, "conv4", {"hidden": 8, "depth": 2}, input_shape=(1, 8, 8), **VARIANTS[variant])
    r = evaluate(m, data, way=5, shot=1, query=2, episodes=6)
    assert r["episodes"] == 6 and 0.0 <= r["accuracy"] <= 1.0
    assert r == evaluate(m, data, way=5, shot=1, query=2, episodes=6)  # deterministic
    # the head of the abstract interface adapts only the classifier, on fixed embeddings
    d = m.head_w.shape[1]
    z = torch.randn(2, 5, d)
    assert m.head(z, torch.arange(5).expand(2, -1), torch.randn(2, 7, d), 5).shape == (2, 7, 5)


@pytest.mark.parametrize("name", ["maml", "fomaml", "lstm"])
def test_configs_parse_and_build(name):
    import yaml

    from h_model.trainer import TrainConfig
    from tests.conftest import REPO

    cfg = TrainConfig.from_dict(yaml.safe_load((REPO / "training" / "configs" / f"{name}_omniglot.yaml").read_text()))
    cfg.validate()
    assert cfg.variant == name and cfg.image_size == 28 and (cfg.train_way, cfg.train_shot) == (5, 1)
    assert cfg.time_limit_min == 59 and cfg.eval_settings == ["5w1s", "20w1s"]
    m = create_model(cfg.variant, cfg.backbone, cfg.backbone_kwargs, input_shape=(1, 28, 28), **cfg.model_kwargs)
    assert m.max_way >= 20 and not m.embeds_independently


@pytest.mark.parametrize("head_std", [0.0, 0.1])
def test_head_init_decides_whether_the_first_inner_step_moves_the_backbone(head_std):
    model = make("fomaml", head_std=head_std)
    assert bool((model.head_w == 0).all()) == (head_std == 0.0)
    sx, sy, qx, _ = episode()
    _, theta = model.run(sx, sy, qx, 3)
    phi = model.learner_params(3)
    moved = max(float((theta[k] - phi[k]).detach().abs().max()) for k in phi if k.startswith("backbone."))
    assert (moved > 0) == (head_std > 0)
    assert float((theta["head_w"] - phi["head_w"]).detach().abs().max()) > 0
