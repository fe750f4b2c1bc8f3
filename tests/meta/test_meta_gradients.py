"""Meta-gradients of the torch.func inner loop against independent references (float64)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from h_model.models import create_model

WAY, SHOT, QUERY, B = 3, 2, 2, 2


def tiny(variant: str, **kw):
    """A tiny smooth learner (conv, BatchNorm, tanh) in float64, with a random (non-zero) head."""
    torch.manual_seed(0)
    bb = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Tanh(), nn.Flatten())
    m = create_model(variant, bb, input_shape=(1, 3, 3), max_way=WAY, **kw).double()
    with torch.no_grad():
        m.head_w.normal_()
        m.head_b.normal_(0, 0.1)
    return m


def tasks():
    g = torch.Generator().manual_seed(1)
    sx = torch.randn(B, WAY * SHOT, 1, 3, 3, generator=g, dtype=torch.float64)
    qx = torch.randn(B, WAY * QUERY, 1, 3, 3, generator=g, dtype=torch.float64)
    sy = torch.arange(WAY).repeat_interleave(SHOT).expand(B, -1)
    qy = torch.arange(WAY).repeat_interleave(QUERY).expand(B, -1)
    return sx, sy, qx, qy


def meta_grad(m, data):
    m.zero_grad(set_to_none=True)
    loss, _ = m.episode_loss(*data, WAY)
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in m.parameters()])


def finite_difference(m, data, eps=1e-6):
    ps = list(m.parameters())
    out = []
    with torch.no_grad():
        for p in ps:
            flat = p.view(-1)
            for j in range(flat.numel()):
                old = float(flat[j])
                flat[j] = old + eps
                up = m.episode_loss(*data, WAY)[0]
                flat[j] = old - eps
                down = m.episode_loss(*data, WAY)[0]
                flat[j] = old
                out.append((up - down) / (2 * eps))
    return torch.stack(out)


def manual_adapt(m, phi, sx, sy, steps, lr):
    """Plain-autograd inner loop on one task (no torch.func): theta_hat, detached."""
    theta = {k: v.detach().clone().requires_grad_() for k, v in phi.items()}
    for _ in range(steps):
        loss = F.cross_entropy(logits(m, theta, sx), sy)
        g = torch.autograd.grad(loss, list(theta.values()))
        theta = {k: (v - lr * gk).detach().requires_grad_() for (k, v), gk in zip(theta.items(), g)}
    return theta


def logits(m, params, x):
    bb = {k[len("backbone."):]: v for k, v in params.items() if k.startswith("backbone.")}
    return functional_call(m.backbone, bb, (x,)) @ params["head_w"].T + params["head_b"]


@pytest.mark.parametrize("use_vmap", [True, False])
@pytest.mark.parametrize("variant", ["maml", "metasgd"])
def test_exact_meta_gradient_matches_finite_differences(variant, use_vmap):
    m = tiny(variant, steps=2, inner_lr=0.5, use_vmap=use_vmap)
    data = tasks()
    exact = meta_grad(m, data)
    fd = finite_difference(m, data)
    torch.testing.assert_close(exact, fd, rtol=1e-6, atol=1e-8)
    # the second-order terms matter here: the first-order gradient is measurably different
    fo = tiny(variant, steps=2, inner_lr=0.5, use_vmap=use_vmap)
    fo.first_order = True
    assert (meta_grad(fo, data) - fd).abs().max() > 1e-3


@pytest.mark.parametrize("use_vmap", [True, False])
def test_first_order_gradient_is_query_gradient_at_adapted_parameters(use_vmap):
    steps, lr = 3, 0.5
    m = tiny("fomaml", steps=steps, inner_lr=lr, use_vmap=use_vmap)
    sx, sy, qx, qy = data = tasks()
    meta_grad(m, data)
    phi = m.learner_params(WAY)
    want = {k: torch.zeros_like(v) for k, v in phi.items()}
    for b in range(B):
        theta = manual_adapt(m, phi, sx[b], sy[b], steps, lr)
        g = torch.autograd.grad(F.cross_entropy(logits(m, theta, qx[b]), qy[b]), list(theta.values()))
        for k, gk in zip(theta, g):
            want[k] += gk / B
    named = dict(m.named_parameters())
    for k in phi:
        torch.testing.assert_close(named[k].grad, want[k], rtol=1e-9, atol=1e-12)
    exact = tiny("maml", steps=steps, inner_lr=lr, use_vmap=use_vmap)
    assert (meta_grad(exact, data) - meta_grad(m, data)).abs().max() > 1e-3


def test_reptile_gradient_is_phi_minus_adapted_parameters():
    steps, lr = 4, 0.3
    m = tiny("reptile", steps=steps, inner_lr=lr)
    sx, sy, qx, qy = data = tasks()
    loss, _ = m.episode_loss(*data, WAY)
    loss.backward()
    phi = m.learner_params(WAY)
    want = {k: torch.zeros_like(v) for k, v in phi.items()}
    for b in range(B):
        theta = manual_adapt(m, phi, sx[b], sy[b], steps, lr)
        for k in phi:
            want[k] += (phi[k].detach() - theta[k].detach()) / B
    named = dict(m.named_parameters())
    for k in phi:
        torch.testing.assert_close(named[k].grad, want[k], rtol=1e-9, atol=1e-12)
    # its value is the query cross-entropy after adaptation (for logging)
    with torch.no_grad():
        m.train()
        q = F.cross_entropy(m(sx, sy, qx, way=WAY).reshape(-1, WAY), qy.reshape(-1))
    torch.testing.assert_close(loss.detach(), q)
