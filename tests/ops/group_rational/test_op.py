"""group_rational: both implementations against a float64 evaluation of the formula, and the
official implementation's golden outputs. The Triton path runs on the CPU through Triton's
interpreter when there is no GPU (tests/conftest.py sets TRITON_INTERPRET=1)."""
import platform

import pytest
import torch

import kat
from kat.ops.group_rational import triton_available, triton_supports
from tests.helpers import formula64, rel_err

IMPLS = ["torch", "triton"]
# (output, grad_x, coefficient-gradient) norm-relative tolerances per dtype. Coefficient gradients
# are fp32 sums of ~10^5 terms of both signs, so they get the golden data's 1e-4.
TOL = {torch.float64: (1e-12, 1e-12, 1e-12), torch.float32: (1e-5, 1e-5, 1e-4),
       torch.bfloat16: (1e-2, 1e-2, 1e-2), torch.float16: (2e-3, 2e-3, 2e-3)}


def _coeffs(groups=8, m=5, n=4, shared=True, device="cpu", scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(1 if shared else groups, m + 1, generator=g) * scale).to(device)
    b = (torch.randn(groups, n, generator=g) * scale).to(device)
    return a, b


def _run(impl, x, a, b, go, channel_dim=-1):
    x = x.detach().requires_grad_()
    a = a.detach().requires_grad_()
    b = b.detach().requires_grad_()
    y = kat.group_rational(x, a, b, impl=impl, channel_dim=channel_dim)
    gx, ga, gb = torch.autograd.grad(y, (x, a, b), go)
    return y, gx, ga, gb


def _check(impl, x, a, b, channel_dim=-1, seed=1):
    go = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x.device, x.dtype)
    y, gx, ga, gb = _run(impl, x, a, b, go, channel_dim)
    # The half-precision kernels see the rounded x and go, so the float64 truth uses them too.
    ry, rgx, rga, rgb = formula64(x, a, b, go, channel_dim)
    assert y.dtype == x.dtype and gx.dtype == x.dtype and y.shape == x.shape
    assert ga.shape == a.shape and gb.shape == b.shape
    ty, tx, tc = TOL[x.dtype]
    assert rel_err(y, ry) <= ty
    assert rel_err(gx, rgx) <= tx
    # Coefficient gradients are sums over every element of a group: compare to the float64 sum.
    assert rel_err(ga, rga) <= tc
    assert rel_err(gb, rgb) <= tc
    return y, gx, ga, gb


def test_triton_path_is_exercised_here():
    """The kernel tests below must run, not skip: on a CPU-only x86-64 Linux box that means the interpreter."""
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        assert triton_available(), "triton must be installed (it is a declared dependency)"
    if triton_available():
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        x = torch.randn(4, 8, device=dev)
        assert triton_supports(x, torch.zeros(1, 6, device=dev), torch.zeros(8, 4, device=dev)) is None


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 197, 192), (2, 9, 768), (3, 7, 200), (1, 1, 192), (5, 64)],
                         ids=["vit-tiny", "C768", "C200-group25", "one-token", "2d"])
def test_matches_float64_formula(impl, dtype, shape, device):
    if impl == "triton" and not triton_available():
        pytest.fail("triton not importable")
    x = (torch.randn(shape) * 1.5).to(device, dtype)
    a, b = _coeffs(device=device)
    _check(impl, x, a, b)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_first_4d(impl, dtype, device):
    x = torch.randn(2, 16, 5, 7).to(device, dtype)
    a, b = _coeffs(device=device)
    y, gx, ga, gb = _check(impl, x, a, b, channel_dim=1)
    # Same math as channels-last on the permuted tensor.
    y2 = kat.group_rational(x.permute(0, 2, 3, 1), a, b, impl=impl).permute(0, 3, 1, 2)
    assert rel_err(y, y2) <= TOL[dtype][0]
    assert kat.group_rational_channels_first(x, a, b, impl=impl).shape == x.shape


@pytest.mark.parametrize("impl", IMPLS)
def test_channels_first_in_channels_last_memory(impl, device):
    x = torch.randn(2, 24, 4, 3, device=device).contiguous(memory_format=torch.channels_last)
    a, b = _coeffs(device=device)
    y = _check(impl, x, a, b, channel_dim=1)[0]
    assert y.shape == x.shape


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("view", ["transposed", "sliced", "expanded", "channel-strided"])
def test_non_contiguous(impl, view, device):
    base = torch.randn(6, 10, 400, device=device)
    x = {"transposed": base.transpose(0, 1)[..., :200],
         "sliced": base[::2, 1:, ::2],
         "expanded": base[:1, :1, :200].expand(4, 3, 200),
         "channel-strided": base[..., ::2]}[view]
    assert not x.is_contiguous()
    _check(impl, x, *_coeffs(device=device))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("m,n", [(5, 4), (3, 2), (0, 1)])
def test_orders_and_unshared_numerator(impl, m, n, device):
    a, b = _coeffs(m=m, n=n, shared=False, device=device)
    _check(impl, torch.randn(3, 11, 64, device=device), a, b)


def test_reference_other_orders_and_float64(device):
    a, b = (t.double() for t in _coeffs(m=7, n=6, device=device, scale=0.3))
    _check("torch", torch.randn(3, 5, 16, device=device, dtype=torch.float64), a, b)


def test_gradcheck_reference():
    x = torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True)
    a, b = _coeffs(groups=4)
    a = a.double().requires_grad_()
    b = b.double().requires_grad_()
    f = lambda x, a, b: kat.group_rational(x, a, b, impl="torch")  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, a, b))
    assert torch.autograd.gradgradcheck(f, (x, a, b))


@pytest.mark.parametrize("impl", IMPLS)
def test_golden_official(impl, golden_dir, device):
    inputs = torch.load(golden_dir / "op_cases_input.pt")
    expected = torch.load(golden_dir / "op_cases_official.pt")
    assert len(inputs) == len(expected) == 3
    for case, ref in zip(inputs, expected):
        x = case["x"].to(device)
        go = case["grad_output"].to(device)
        y, gx, ga, gb = _run(impl, x, case["weight_numerator"].to(device),
                             case["weight_denominator"].to(device), go)
        assert rel_err(y, ref["y"]) <= 1e-5
        assert rel_err(gx, ref["grad_x"]) <= 1e-5
        assert rel_err(ga, ref["grad_weight_numerator"]) <= 1e-4
        assert rel_err(gb, ref["grad_weight_denominator"]) <= 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_deterministic(dtype, device):
    x = torch.randn(4, 33, 200, device=device, dtype=dtype)
    go = torch.randn_like(x)
    a, b = _coeffs(device=device)
    first = _run("triton", x, a, b, go)
    second = _run("triton", x, a, b, go)
    for u, v in zip(first[1:], second[1:]):
        assert torch.equal(u, v)


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_inf_propagate(impl, device):
    x = torch.randn(2, 3, 16, device=device)
    x[0, 0, 0], x[0, 1, 3], x[1, 2, 5] = float("nan"), float("inf"), float("-inf")
    a, b = _coeffs(groups=4, device=device)
    y = kat.group_rational(x, a, b, impl=impl)
    ref = kat.group_rational(x.double(), a.double(), b.double(), impl="torch")
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    finite = torch.isfinite(ref)
    assert torch.allclose(y[finite].double(), ref[finite], rtol=1e-5, atol=1e-6)
    assert torch.isnan(y[0, 0, 0])


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_input(impl, device):
    a, b = _coeffs(device=device)
    x = torch.randn(0, 3, 16, device=device, requires_grad=True)
    y = kat.group_rational(x, a, b, impl=impl)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_auto_picks_reference_on_cpu_tensors_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the kernels' check reads it per new call signature
    x = torch.randn(2, 48)  # a shape no other test calls with impl="triton"
    a, b = _coeffs()
    assert triton_supports(x, a, b) is not None
    with pytest.raises(ValueError, match="impl='triton' cannot run this call"):
        kat.group_rational(x, a, b, impl="triton")
    assert torch.equal(kat.group_rational(x, a, b), kat.group_rational(x, a, b, impl="torch"))


# --- bad input -----------------------------------------------------------------------------------

def test_channels_not_divisible_by_groups():
    a, b = _coeffs()
    with pytest.raises(ValueError, match=r"channels C=100 must be divisible by groups G=8"):
        kat.group_rational(torch.randn(2, 100), a, b)


@pytest.mark.parametrize("a_shape,b_shape,match", [
    ((2, 6), (8, 4), r"numerator must have shape \(1, m\+1\) or \(G, m\+1\) with G=8.*got \(2, 6\)"),
    ((6,), (8, 4), r"numerator must have shape.*got \(6,\)"),
    ((1, 6), (8,), r"denominator must have shape \(G, n\).*got \(8,\)"),
    ((1, 6), (8, 0), r"denominator must have shape \(G, n\).*got \(8, 0\)"),
])
def test_wrong_coefficient_shapes(a_shape, b_shape, match):
    with pytest.raises(ValueError, match=match):
        kat.group_rational(torch.randn(2, 64), torch.randn(a_shape), torch.randn(b_shape))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_dtype(dtype):
    a, b = _coeffs()
    with pytest.raises(TypeError, match=f"x must have a floating dtype, got {dtype}"):
        kat.group_rational(torch.ones(2, 64, dtype=dtype), a, b)
    with pytest.raises(TypeError, match=f"numerator must have a floating dtype, got {dtype}"):
        kat.group_rational(torch.randn(2, 64), a.to(dtype), b)


def test_complex_dtype():
    a, b = _coeffs()
    with pytest.raises(TypeError, match="x must have a floating dtype, got torch.complex64"):
        kat.group_rational(torch.randn(2, 64, dtype=torch.complex64), a, b)


def test_mismatched_devices():
    a, b = _coeffs()
    with pytest.raises(ValueError, match=r"coefficients must be on x's device meta, got numerator on cpu"):
        kat.group_rational(torch.randn(2, 64, device="meta"), a, b)


def test_bad_impl_and_channel_dim():
    a, b = _coeffs()
    with pytest.raises(ValueError, match=r"impl must be one of .*got 'cuda'"):
        kat.group_rational(torch.randn(2, 64), a, b, impl="cuda")
    with pytest.raises(ValueError, match=r"channel_dim=3 is out of range for x of shape \(2, 64\)"):
        kat.group_rational(torch.randn(2, 64), a, b, channel_dim=3)
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        kat.group_rational([1.0, 2.0], a, b)


@pytest.mark.parametrize("impl", IMPLS)
def test_zero_denominator_still_learns(impl, device):
    """Identity init has b = 0; d|b|/db must be +1 there (official convention), not torch.abs' 0."""
    a = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]], device=device)
    b = torch.zeros(8, 4, device=device)
    x = torch.randn(4, 64, device=device)
    _, gx, ga, gb = _run(impl, x, a, b, torch.ones_like(x))
    assert torch.all(gb != 0)
    assert torch.allclose(gx, torch.ones_like(gx))  # F = identity, so dF/dx = 1 exactly
    expected = -(x * x.abs() ** torch.arange(1, 5, device=device).view(4, 1, 1)).sum(1)  # (4, 8)
    assert rel_err(gb, expected.view(4, 8, 8).sum(-1).t()) <= 1e-5
