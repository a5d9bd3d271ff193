"""reference.DecomposedRational: what compiled graphs record for calls on the reference."""
import pytest
import torch

import kat
from kat.ops.group_rational.reference import DecomposedRational
from tests.helpers import formula64, rel_err

CASES = [  # (m, n, numerator rows, channel_dim, shape, groups)
    (5, 4, 1, 2, (3, 5, 16), 8),
    (5, 4, 8, 1, (2, 16, 3, 3), 8),
    (3, 2, 8, 1, (4, 16), 8),
    (0, 1, 1, 1, (4, 8), 8),
    (2, 1, 4, 0, (8, 3), 4),
]


def _args(m, n, rows, shape, groups, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 2
    a = torch.randn(rows, m + 1, generator=g, dtype=dtype)
    b = torch.randn(groups, n, generator=g, dtype=dtype)
    return x, a, b


@pytest.mark.parametrize("m,n,rows,cd,shape,groups", CASES)
def test_backward_is_the_derivative(m, n, rows, cd, shape, groups):
    x, a, b = (t.requires_grad_() for t in _args(m, n, rows, shape, groups))
    assert torch.autograd.gradcheck(lambda x, a, b: DecomposedRational.apply(x, a, b, cd), (x, a, b))


@pytest.mark.parametrize("m,n,rows,cd,shape,groups", CASES)
def test_values_and_gradients_match_the_formula_at_zero_too(m, n, rows, cd, shape, groups):
    """Against the independent float64 formula, with x = 0 and b = 0 entries, where sign(0) = +1
    (the kernels' convention) decides the gradients."""
    x, a, b = _args(m, n, rows, shape, groups)
    x.view(-1)[::5] = 0.0
    b[0, 0] = 0.0
    x, a, b = (t.requires_grad_() for t in (x, a, b))
    y = DecomposedRational.apply(x, a, b, cd)
    go = torch.randn_like(y)
    want = formula64(x, a, b, go, cd)
    assert rel_err(y, want[0]) <= 1e-13
    for got, expected in zip(torch.autograd.grad(y, (x, a, b), go), want[1:]):
        assert rel_err(got, expected) <= 1e-12


def test_saves_only_x_and_the_coefficients():
    """The reference under autograd keeps its Horner steps; the decomposed form keeps its inputs."""
    x, a, b = (t.float().requires_grad_() for t in _args(5, 4, 1, (4, 9, 64), 8))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        DecomposedRational.apply(x, a, b, 2)
    assert len(saved) == 3
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        kat.group_rational_reference(x, a, b)
    assert len(saved) > 10


def test_low_precision_inputs_compute_in_float32():
    x, a, b = _args(5, 4, 1, (4, 9, 64), 8, dtype=torch.float32)
    xb = x.bfloat16().requires_grad_()
    y = DecomposedRational.apply(xb, a, b, 2)
    go = torch.randn_like(y)
    gx = torch.autograd.grad(y, xb, go)[0]
    want = formula64(xb.float(), a, b, go.float(), 2)
    assert y.dtype == gx.dtype == torch.bfloat16
    assert rel_err(y, want[0]) <= 1e-2 and rel_err(gx, want[1]) <= 1e-2
