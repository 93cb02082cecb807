"""Property-based checks of the threat models (attacks/threat.py) with Hypothesis.

Each property is drawn over single perturbations [C,H,W] and stacks [M,C,H,W] (several starts, or one
perturbation per class), small shapes, finite values and radii in a sane range.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cbuap_runner.attacks.threat import L2Threat, LinfThreat

SETTINGS = settings(max_examples=50, deadline=None)
THREATS = {"linf": LinfThreat, "l2": L2Threat}
TOL = 1e-5  # relative float32 slack on a norm

dims = st.integers(1, 4)
single_shapes = st.tuples(dims, dims, dims)
stack_shapes = st.tuples(st.integers(1, 5), dims, dims, dims)
shapes = st.one_of(single_shapes, stack_shapes)
epsilons = st.floats(1e-3, 10.0, allow_nan=False, allow_infinity=False)
values = st.floats(-20.0, 20.0, allow_nan=False, allow_infinity=False, width=32)
norms = st.sampled_from(sorted(THREATS))


@st.composite
def tensors(draw, shape=shapes) -> torch.Tensor:
    """A finite float32 tensor of a drawn shape, [C,H,W] or [M,C,H,W]."""
    return torch.from_numpy(draw(arrays(np.float32, draw(shape), elements=values)))


def rows(t: torch.Tensor) -> torch.Tensor:
    """The rows of `t` as a [M, D] matrix ([C,H,W] is one row)."""
    return t.reshape(t.shape[0], -1) if t.dim() == 4 else t.reshape(1, -1)


def row_norms(t: torch.Tensor, norm: str) -> torch.Tensor:
    return torch.linalg.vector_norm(rows(t).double(), ord=float("inf") if norm == "linf" else 2.0, dim=1)


def bound(eps: float) -> float:
    return eps * (1 + TOL) + 1e-7


@SETTINGS
@given(norm=norms, delta=tensors(), eps=epsilons)
def test_projection_lands_in_the_ball_row_by_row(norm, delta, eps):
    threat = THREATS[norm](eps)
    d = delta.clone()
    out = threat.project_(d)
    assert out.data_ptr() == d.data_ptr() and torch.equal(out, d)  # in place, as callers rely on
    assert out.shape == delta.shape and torch.isfinite(out).all()
    assert (row_norms(out, norm) <= bound(eps)).all()
    assert (threat.norms(out) <= bound(eps)).all()


@SETTINGS
@given(norm=norms, delta=tensors(), eps=epsilons)
def test_projection_is_idempotent(norm, delta, eps):
    threat = THREATS[norm](eps)
    once = threat.project_(delta.clone())
    twice = threat.project_(once.clone())
    torch.testing.assert_close(twice, once, rtol=1e-5, atol=1e-7)


@SETTINGS
@given(norm=norms, delta=tensors(), eps=epsilons, fraction=st.floats(0.0, 0.99))
def test_a_row_inside_the_ball_is_left_unchanged(norm, delta, eps, fraction):
    """Rows scaled to `fraction`·ε are already inside: projected into the ball, not onto its sphere."""
    threat = THREATS[norm](eps)
    r = rows(delta).double()
    scale = fraction * eps / row_norms(delta, norm).clamp_min(1e-12)
    inside = (r * scale.unsqueeze(1)).to(torch.float32).reshape(delta.shape)
    assert (row_norms(inside, norm) < eps).all()
    assert torch.equal(threat.project_(inside.clone()), inside)


@SETTINGS
@given(delta=tensors(), eps=epsilons)
def test_linf_projection_is_the_elementwise_clamp(delta, eps):
    expected = torch.maximum(torch.minimum(delta, torch.tensor(eps)), torch.tensor(-eps))
    assert torch.equal(LinfThreat(eps).project_(delta.clone()), expected)


@SETTINGS
@given(norm=norms, stack=tensors(stack_shapes), eps=epsilons)
def test_rows_of_a_stack_are_projected_independently(norm, stack, eps):
    """Projecting M starts (or K class-wise perturbations) at once equals projecting each on its own."""
    threat = THREATS[norm](eps)
    together = threat.project_(stack.clone())
    one_by_one = torch.stack([threat.project_(row.clone()) for row in stack])
    torch.testing.assert_close(together, one_by_one, rtol=1e-6, atol=1e-7)


@SETTINGS
@given(norm=norms, shape=shapes, eps=epsilons, seed=st.integers(0, 2**31 - 1))
def test_random_init_lies_inside_the_ball(norm, shape, eps, seed):
    threat = THREATS[norm](eps)
    d = threat.random_init(shape, generator=torch.Generator().manual_seed(seed))
    assert tuple(d.shape) == shape and torch.isfinite(d).all()
    assert (row_norms(d, norm) <= bound(eps)).all()
    assert torch.equal(d, threat.random_init(shape, generator=torch.Generator().manual_seed(seed)))


@SETTINGS
@given(data=st.data(), shape=shapes, alpha=st.floats(1e-3, 5.0))
def test_l2_step_has_length_alpha_per_row(data, shape, alpha):
    delta = data.draw(tensors(st.just(shape)))
    grad = data.draw(tensors(st.just(shape)))
    grad_rows = rows(grad)
    grad_rows[row_norms(grad, "l2") < 1e-3] = 1.0  # a zero gradient has no direction to step in
    before = delta.clone()
    after = L2Threat(1.0).step_(delta, grad, alpha)
    assert after.data_ptr() == delta.data_ptr()  # in place
    step = (after.double() - before.double())
    lengths = row_norms(step, "l2")
    assert lengths.numpy() == pytest.approx(np.full(lengths.shape, alpha), rel=1e-4, abs=1e-4)
    # along the gradient, row by row
    cos = torch.nn.functional.cosine_similarity(rows(step), rows(grad).double(), dim=1)
    assert (cos > 1 - 1e-4).all()
