"""The GR-KAN MLP node's CPU rationals (kat.ops.grkan_mlp.cpu): the group-rational formula as
compiled loops (numba), against the float64 formula, against the reference where P or Q overflow,
and inside GRKAN against the module-by-module computation."""
import pytest
import torch

import kat.layers
from kat.layers import GRKAN
from kat.ops.group_rational.reference import evaluate
from kat.ops.grkan_mlp import cpu
from tests.helpers import formula64, rel_err

pytestmark = pytest.mark.skipif(not cpu.available(), reason="numba is not installed")


@pytest.mark.parametrize("threads", [1, 2])  # the rows split into one chunk or two (with a tail)
@pytest.mark.parametrize("c,groups,m,n,shared", [
    (200, 8, 5, 4, True), (200, 8, 5, 4, False), (64, 4, 3, 2, True), (48, 8, 1, 1, False),
    (16, 2, 0, 3, False)])
def test_cpu_rational_matches_float64(c, groups, m, n, shared, threads, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    g = torch.Generator().manual_seed(c + m)
    x = torch.randn(37, c, generator=g) * 2
    a = torch.randn(1 if shared else groups, m + 1, generator=g) * 0.4
    b = torch.randn(groups, n, generator=g) * 0.4
    b[0, 0] = 0.0  # sign(0) = +1 for the denominator's gradient, as in the official kernels
    x[0, -2:] = torch.tensor([0.0, -0.0])  # and for x's, whichever zero (a group with b_1 != 0)
    go = torch.randn(37, c, generator=g)
    r = cpu.CPURational(c, groups, shared)
    y = r.forward(x, a, b)
    gx, ga, gb = r.backward(go, x, a, b)
    want = formula64(x, a, b, go)
    assert rel_err(y, want[0]) <= 1e-6 and rel_err(gx, want[1]) <= 1e-5
    assert ga.shape == a.shape and gb.shape == b.shape
    assert rel_err(ga, want[2]) <= 1e-5 and rel_err(gb, want[3]) <= 1e-5


def test_cpu_rational_coefficient_gradients_are_deterministic():
    g = torch.Generator().manual_seed(5)
    x, go = torch.randn(300, 64, generator=g), torch.randn(300, 64, generator=g)
    a, b = torch.randn(1, 6, generator=g), torch.randn(8, 4, generator=g)
    r = cpu.CPURational(64, 8, True)
    first, second = r.backward(go, x, a, b), r.backward(go, x.requires_grad_(), a, b)  # grad mode on
    assert all(torch.equal(u, v) for u, v in zip(first, second))
    assert torch.equal(r.forward(x, a.requires_grad_(), b), r.forward(x.detach(), a.detach(), b))


def test_cpu_rational_low_precision_input():
    """bf16 in: computed in fp32 and rounded once, as the reference does (the two round the same
    fp32 value up to its last bits, so they agree to one bf16 step)."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(20, 64, generator=g) * 2).bfloat16()
    a, b = torch.randn(1, 6, generator=g) * 0.4, torch.randn(8, 4, generator=g) * 0.4
    go = torch.randn(20, 64, generator=g).bfloat16()
    r = cpu.CPURational(64, 8, True)
    y, (gx, ga, gb) = r.forward(x, a, b), r.backward(go, x, a, b)
    assert y.dtype == gx.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), evaluate(x, a, b, 1).float(), rtol=2 ** -7, atol=1e-6)
    want = formula64(x, a, b, go)
    assert rel_err(y, want[0]) <= 1e-2 and rel_err(gx, want[1]) <= 1e-2
    assert rel_err(ga, want[2]) <= 1e-5 and rel_err(gb, want[3]) <= 1e-5


def test_cpu_rational_overflow_takes_the_reference():
    """Where P or Q overflows fp32 (or x holds NaN/Inf) the call is the reference's, forward and
    backward."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 64, generator=g)
    x[1, :3] = torch.tensor([1e30, -3e9, float("nan")])
    a, b = torch.randn(8, 6, generator=g) * 0.4, torch.randn(8, 4, generator=g) * 0.4
    go = torch.randn(16, 64, generator=g)
    r = cpu.CPURational(64, 8, False)
    y = r.forward(x, a, b)
    torch.testing.assert_close(y, evaluate(x, a, b, 1), rtol=1e-6, atol=1e-6, equal_nan=True)
    xs = x.clone()
    xs[1, 2] = 0.0  # gradients: no NaN, so that every sum stays comparable
    gx, ga, gb = r.backward(go, xs, a, b)
    xr, ar, br = (t.clone().requires_grad_() for t in (xs, a, b))
    want = torch.autograd.grad(evaluate(xr, ar, br, 1), (xr, ar, br), go)
    torch.testing.assert_close(gx, want[0], rtol=1e-5, atol=1e-6)
    assert rel_err(ga, want[1]) <= 1e-5 and rel_err(gb, want[2]) <= 1e-5
    assert torch.isfinite(y[1, :2]).all()


def _run(m, x0, node: bool, autocast: bool):
    with pytest.MonkeyPatch.context() as mp:
        if not node:  # module by module, the rationals on the reference
            mp.setattr(kat.layers, "grkan_mlp", lambda *args, **kwargs: None)
        m.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = m(x)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype))
    return type(out.grad_fn).__name__, out, [x.grad] + [p.grad for p in m.parameters()]


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("shared", [True, False])
def test_grkan_on_the_cpu_runs_the_node_and_matches_the_modules(shared, autocast):
    torch.manual_seed(0)
    m = GRKAN(48, 96, act_init="gelu", shared_numerator=shared)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x0 = torch.randn(4, 7, 48)
    node, out, grads = _run(m, x0, True, autocast)
    node_u, out_u, grads_u = _run(m, x0, False, autocast)
    assert node == "GRKANFunctionBackward" and node_u != node
    tol = 2e-2 if autocast else 1e-5
    assert rel_err(out, out_u) <= tol
    for g, gu in zip(grads, grads_u):
        assert g.dtype == gu.dtype and rel_err(g, gu) <= tol
    assert type(GRKAN(48, 96, impl="torch")(x0.requires_grad_()).grad_fn).__name__ != "GRKANFunctionBackward"


def test_without_numba_the_modules_run(monkeypatch):
    """No numba: GRKAN on the CPU runs module by module (the reference), with the same result."""
    from kat.ops import grkan_mlp
    torch.manual_seed(0)
    m, x = GRKAN(48, 96, act_init="gelu"), torch.randn(2, 5, 48, requires_grad=True)
    want = m(x)
    monkeypatch.setattr(cpu, "available", lambda: False)
    monkeypatch.setattr(grkan_mlp, "_PLANS", {})
    got = m(x)
    assert type(got.grad_fn).__name__ != "GRKANFunctionBackward"
    assert rel_err(got, want) <= 1e-5
