"""Property-based tests (hypothesis) of group_rational: the PyTorch reference and the Triton kernels
(interpreted on a CPU-only machine) must agree on random shapes, strides, dtypes, coefficient
magnitudes and special values -- within the dtype's rounding, or with the same NaN/Inf pattern.
Also: fp16 inputs whose powers overflow fp16, and large |x| following the rational's asymptote.

The number of generated cases is printed at the end of the pytest run (tests/conftest.py)."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kat
from tests.helpers import formula64

FUZZ_STATS = {"cases": 0, "with_specials": 0, "backward_checked": 0, "mismatches": 0}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Element-wise tolerance: both paths compute in fp32; the half types then round once.
RTOL = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
SPECIALS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": 1e30, "-huge": -1e30}


def _layout(base_shape, layout, dtype, gen, device):
    """x of base_shape (channels last) with the requested memory layout."""
    if layout == "contiguous":
        return torch.randn(base_shape, generator=gen).to(device, dtype)
    if layout == "transposed" and len(base_shape) >= 3:  # swap two leading dims, then view back
        t = torch.randn(base_shape[1], base_shape[0], *base_shape[2:], generator=gen).to(device, dtype)
        return t.transpose(0, 1)
    if layout == "sliced":  # every other channel of a wider tensor, and a strided leading dim
        wide = torch.randn(*base_shape[:-1], 2 * base_shape[-1], generator=gen).to(device, dtype)
        return wide[..., ::2]
    if layout == "expanded" and base_shape[0] > 1:  # stride 0 along the first dim
        one = torch.randn(1, *base_shape[1:], generator=gen).to(device, dtype)
        return one.expand(base_shape)
    return torch.randn(base_shape, generator=gen).to(device, dtype)


@st.composite
def cases(draw):
    groups = draw(st.sampled_from([1, 2, 3, 4, 5, 8, 12]))
    per_group = draw(st.sampled_from([1, 3, 7, 8, 25, 33, 64, 96, 250, 384]))
    channels = groups * per_group
    budget = max(1, 24_000 // channels)  # keep the interpreted kernels quick
    n_lead = draw(st.integers(1, 4))
    lead = [draw(st.integers(1, 6)) for _ in range(n_lead)]
    while math.prod(lead) > budget and max(lead) > 1:
        lead[lead.index(max(lead))] -= 1
    return dict(shape=(*lead, channels), groups=groups,
                dtype=draw(st.sampled_from(DTYPES)),
                layout=draw(st.sampled_from(["contiguous", "transposed", "sliced", "expanded"])),
                scale=draw(st.sampled_from([0.0, 1e-3, 0.5, 3.0, 100.0])),
                zero_den=draw(st.booleans()), shared=draw(st.booleans()),
                x_scale=draw(st.sampled_from([1.0, 5.0, 50.0])),
                specials=draw(st.lists(st.sampled_from(list(SPECIALS)), max_size=4)),
                seed=draw(st.integers(0, 2**31 - 1)))


def _same_special_pattern(a: torch.Tensor, b: torch.Tensor) -> None:
    assert torch.equal(torch.isnan(a), torch.isnan(b)), "NaN positions differ"
    assert torch.equal(torch.isposinf(a), torch.isposinf(b)), "+Inf positions differ"
    assert torch.equal(torch.isneginf(a), torch.isneginf(b)), "-Inf positions differ"


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, scale: torch.Tensor | float) -> None:
    """Finite entries within rtol of each other, relative to the entry or to the magnitude of the
    terms it was computed from (``scale``; cancellation makes small results only that accurate)."""
    _same_special_pattern(actual, expected)
    fin = torch.isfinite(expected)
    a, e = actual.double()[fin], expected.double()[fin]
    s = scale[fin] if isinstance(scale, torch.Tensor) else scale
    bad = (a - e).abs() > rtol * (e.abs() + s) + 1e-30
    assert not bad.any(), f"{int(bad.sum())} of {a.numel()} entries differ, worst {(a - e).abs().max().item():.3g}"


def _term_scale(x, a, b, groups):
    """Per element, the magnitude of the terms of P/Q: (sum |a_k||x|^k) / Q(x), in float64."""
    xd = x.detach().double().cpu()
    c = xd.shape[-1]
    grp = torch.arange(c) // (c // groups)
    A = a.double().cpu().expand(groups, -1)[grp].abs()
    B = b.double().cpu()[grp].abs()
    ax = xd.abs().unsqueeze(-1)
    num = (A * ax ** torch.arange(A.shape[1], dtype=torch.float64)).sum(-1)
    den = 1 + (B * ax ** torch.arange(1, B.shape[1] + 1, dtype=torch.float64)).sum(-1)
    return (num / den).nan_to_num(nan=0.0, posinf=0.0)


@settings(max_examples=120, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases())
def test_reference_and_triton_agree(case):
    FUZZ_STATS["cases"] += 1
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(case["seed"])
    dtype, groups = case["dtype"], case["groups"]
    x = _layout(case["shape"], case["layout"], dtype, gen, device) * case["x_scale"]
    a = (torch.randn(1 if case["shared"] else groups, 6, generator=gen) * case["scale"]).to(device)
    b = (torch.randn(groups, 4, generator=gen) * case["scale"]).to(device)
    if case["zero_den"]:
        b = torch.zeros_like(b)
    if case["specials"]:
        FUZZ_STATS["with_specials"] += 1
        x = x.clone()  # keeps transposed/sliced strides (an expanded x becomes dense)
        for name in case["specials"]:
            where = tuple(torch.randint(0, n, (1,), generator=gen).item() for n in x.shape)
            x[where] = SPECIALS[name]
    try:
        y_ref = kat.group_rational(x, a, b, impl="torch")
        y_tri = kat.group_rational(x, a, b, impl="triton")
        assert y_tri.dtype == dtype and y_tri.shape == x.shape
        _close(y_tri.cpu(), y_ref.cpu(), RTOL[dtype], _term_scale(x, a, b, groups))
        if not case["specials"] and case["scale"] <= 3.0:
            FUZZ_STATS["backward_checked"] += 1
            go = torch.randn(x.shape, generator=gen).to(device, dtype)
            grads = []
            for impl in ("torch", "triton"):
                xi, ai, bi = (t.detach().clone().requires_grad_() for t in (x, a, b))
                grads.append(torch.autograd.grad(kat.group_rational(xi, ai, bi, impl=impl), (xi, ai, bi), go))
            # Both against the float64 formula (the reference's coefficient sums are in fp32 too).
            _, gx64, ga64, gb64 = formula64(x, a, b, go)
            for (gx, ga, gb) in grads:
                tol = 4 * RTOL[dtype]
                expect = gx64.to(dtype)  # an fp16 gradient may overflow fp16 legitimately
                _same_special_pattern(gx.cpu(), expect)
                fin = torch.isfinite(expect)
                assert (gx.double().cpu()[fin] - gx64[fin]).norm() <= tol * gx64[fin].norm() + 1e-6
                assert (ga.double().cpu() - ga64).norm() <= tol * ga64.norm() + 1e-6
                assert (gb.double().cpu() - gb64).norm() <= tol * gb64.norm() + 1e-6
    except AssertionError:
        FUZZ_STATS["mismatches"] += 1
        raise


def test_fuzz_ran_enough_cases():
    """Runs after the property test (file order): it generated its cases and none mismatched."""
    if FUZZ_STATS["cases"] == 0:
        pytest.fail("the property test did not run (run the whole file)")
    assert FUZZ_STATS["cases"] >= 100 and FUZZ_STATS["mismatches"] == 0
    assert FUZZ_STATS["with_specials"] >= 10 and FUZZ_STATS["backward_checked"] >= 20


# --- numerics ------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_fp16_powers_do_not_overflow(impl, device):
    """|x| ~ 100 in fp16: x^5 = 1e10 is far past fp16's 65504, but the math runs in fp32, so the
    result is the float64 formula rounded to fp16 (no Inf from an intermediate)."""
    x = torch.tensor([[-120.0, -100.0, -64.0, 64.0, 100.0, 120.0, 90.0, -90.0]], dtype=torch.float16, device=device)
    a = torch.tensor([[0.0, 1.0, 0.5, 0.25, 0.125, 0.0625]], device=device)
    b = torch.tensor([[0.5, 0.25, 0.125, 0.0625]], device=device)
    y = kat.group_rational(x, a, b, impl=impl)
    y64 = formula64(x, a, b, torch.ones_like(x))[0]
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double().cpu(), y64.to(torch.float16).double(), rtol=1e-3, atol=0)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_large_x_follows_the_asymptote(impl, device):
    """For |x| -> inf, P/Q -> (a5 / |b4|) * x (degrees 5 and 4), with relative error O(1/|x|), all the
    way to fp32's largest values: beyond |x| ~ 4e7, x^5 overflows fp32, and both paths switch to P and
    Q divided by x^4 there."""
    a = torch.tensor([[0.1, 1.0, -0.3, 0.2, 0.05, 0.7]], device=device)
    b = torch.tensor([[0.4, -0.2, 0.3, 2.0]], device=device)
    mags = [1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e12, 1e20, 1e30, 3e38]
    x = torch.tensor([[s * m for m in mags for s in (1.0, -1.0)]], device=device)
    y = kat.group_rational(x, a, b, impl=impl).double().cpu()
    line = (0.7 / 2.0) * x.double().cpu()
    rel = ((y - line) / line).abs()
    assert torch.isfinite(y).all()
    assert (rel <= 10.0 / x.double().cpu().abs() + 1e-6).all(), rel
    # the float64 formula (no overflow for any fp32 x: (3.4e38)^5 ~ 1e193) agrees to fp32 rounding
    torch.testing.assert_close(y, formula64(x, a, b, torch.ones_like(x))[0], rtol=1e-5, atol=0)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_huge_x_with_degenerate_coefficients(impl, device):
    """The scaled form must not break rationals whose leading coefficients vanish: the identity
    (P = x, Q = 1) stays exact up to fp32's limit, and x^5 alone overflows to +-Inf as it should."""
    x = torch.tensor([[1e10, -1e20, 3e38, -3e38, 1e7, -1e7, 7.0, 0.0]], device=device)
    ident = kat.group_rational(x, torch.tensor([[0.0, 1, 0, 0, 0, 0]], device=device),
                               torch.zeros(1, 4, device=device), impl=impl)
    assert torch.equal(ident, x)
    fifth = kat.group_rational(x, torch.tensor([[0.0, 0, 0, 0, 0, 1]], device=device),
                               torch.zeros(1, 4, device=device), impl=impl).cpu()
    assert torch.equal(torch.isposinf(fifth[0, :4]), torch.tensor([True, False, True, False]))
    assert torch.isneginf(fifth[0, 1]) and torch.isneginf(fifth[0, 3])
    torch.testing.assert_close(fifth[0, 4:].double(), x[0, 4:].double().cpu() ** 5, rtol=1e-6, atol=0)


def test_reference_gradient_is_exact_far_out():
    """The reference (autograd) differentiates the scaled form too: d/dx of (a5/|b4|) x + ... -> a5/|b4|."""
    a = torch.tensor([[0.1, 1.0, -0.3, 0.2, 0.05, 0.7]])
    b = torch.tensor([[0.4, -0.2, 0.3, 2.0]])
    x = torch.tensor([[1e9, -1e20, 1e30, 0.5, -0.25]], requires_grad=True)
    kat.group_rational(x, a, b, impl="torch").sum().backward()
    gx64 = formula64(x, a, b, torch.ones_like(x))[1]
    torch.testing.assert_close(x.grad.double(), gx64, rtol=1e-5, atol=1e-7)
