"""DistillLoss: exact values on hand-computed examples, per-episode batching, AMP inputs, learning."""
from __future__ import annotations

import math

import pytest
import torch

from h_model.distill import DistillLoss, cosine_matrix


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny tensors: OpenMP threads only add barrier waits (minutes on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_zero_when_student_is_teacher_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(3, 5, 8, generator=g)
    loss_fn = DistillLoss(8, 8)
    assert isinstance(loss_fn.proj, torch.nn.Identity)
    loss, parts = loss_fn(t.clone(), t)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert parts["distill_embed"].item() == pytest.approx(0.0, abs=1e-6)
    assert parts["distill_relation"].item() == pytest.approx(0.0, abs=1e-10)
    # scale does not matter (cosines), anything else does
    assert loss_fn(2.5 * t, t)[0].item() == pytest.approx(0.0, abs=1e-6)
    loss, parts = loss_fn(torch.randn(3, 5, 8, generator=g), t)
    assert loss.item() > 0.1 and parts["distill_embed"].item() > 0 and parts["distill_relation"].item() > 0


def test_hand_computed_3x2_example():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # cos(s) = [[1, 0, r], [0, 1, r], [r, r, 1]], cos(t) = [[1, 1, 0], [1, 1, 0], [0, 0, 1]], r = 1/sqrt(2):
    # squared differences 0, 1, 1/2 / 1, 0, 1/2 / 1/2, 1/2, 0 -> sum 4 over 9 entries
    relation = 4.0 / 9.0
    # per-row cosines between s_i and t_i: 1, 0, 1/sqrt(2)
    embed = (0.0 + 1.0 + (1.0 - 1.0 / math.sqrt(2.0))) / 3.0
    loss, parts = DistillLoss(2, 2, embed_weight=0.0, relation_weight=1.0)(s, t)
    assert loss.item() == pytest.approx(relation, abs=1e-6)
    assert parts["distill_relation"].item() == pytest.approx(relation, abs=1e-6)
    assert parts["distill_embed"].item() == pytest.approx(embed, abs=1e-6)
    loss, _ = DistillLoss(2, 2, embed_weight=2.0, relation_weight=0.5)(s, t)
    assert loss.item() == pytest.approx(2.0 * embed + 0.5 * relation, abs=1e-6)
    assert torch.allclose(cosine_matrix(s)[0, 2], torch.tensor(1.0 / math.sqrt(2.0)))


def test_relation_is_per_episode():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 6, 5, generator=g), torch.randn(4, 6, 3, generator=g)
    loss_fn = DistillLoss(5, 3)
    batched, parts = loss_fn(s, t)
    singles = [loss_fn(s[b], t[b]) for b in range(4)]
    assert batched.item() == pytest.approx(sum(x[0].item() for x in singles) / 4, rel=1e-5)
    # not the relation of one big episode: cross-episode pairs are never compared
    flat = loss_fn(s.reshape(24, 5), t.reshape(24, 3))[1]["distill_relation"]
    assert abs(flat.item() - parts["distill_relation"].item()) > 1e-4
    # any number of leading dims
    assert loss_fn(s.reshape(2, 2, 6, 5), t.reshape(2, 2, 6, 3))[0].item() == pytest.approx(batched.item(), rel=1e-5)


def test_projection_choice_and_shape_errors():
    assert isinstance(DistillLoss(8, 16).proj, torch.nn.Linear)
    assert isinstance(DistillLoss(8, 8, project=True).proj, torch.nn.Linear)
    with pytest.raises(ValueError, match="equal dimensions"):
        DistillLoss(8, 16, project=False)
    loss_fn = DistillLoss(8, 16)
    with pytest.raises(ValueError, match="matching"):
        loss_fn(torch.randn(5, 8), torch.randn(4, 16))
    with pytest.raises(ValueError, match="expected dims"):
        loss_fn(torch.randn(5, 7), torch.randn(5, 16))


def test_amp_inputs_computed_in_float32_and_teacher_gets_no_gradient():
    g = torch.Generator().manual_seed(2)
    s32, t32 = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 12, generator=g)
    loss_fn = DistillLoss(8, 12)
    s16, t16 = s32.bfloat16().requires_grad_(), t32.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = loss_fn(s16, t16)
    assert loss.dtype == torch.float32
    ref, _ = loss_fn(s16.detach().float(), t16.detach().float())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    loss.backward()
    assert s16.grad is not None and s16.grad.dtype == torch.bfloat16
    assert t16.grad is None


def test_loss_falls_when_optimised():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 10, 16, generator=g)           # 4 episodes of 10 inputs
    teacher = torch.randn(4, 10, 32, generator=g)     # the teacher's embeddings of them
    torch.manual_seed(0)
    student = torch.nn.Linear(16, 8)
    loss_fn = DistillLoss(8, 32)
    opt = torch.optim.Adam(list(student.parameters()) + list(loss_fn.parameters()), lr=0.02)
    first, first_parts = loss_fn(student(x), teacher)
    for _ in range(30):
        loss, _ = loss_fn(student(x), teacher)
        opt.zero_grad()
        loss.backward()
        opt.step()
    final, parts = loss_fn(student(x), teacher)
    assert final.item() < 0.6 * first.item()                       # 1.15 -> 0.53
    assert parts["distill_embed"].item() < 0.6 * first_parts["distill_embed"].item()
    assert parts["distill_relation"].item() < 0.6 * first_parts["distill_relation"].item()
