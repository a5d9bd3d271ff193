"""torch.compile(fullgraph=True) traces through the op (custom ops with fake implementations)."""
import pytest
import torch

import kat
from tests.helpers import rel_err


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_compile_fullgraph_matches_eager(impl, device):
    torch._dynamo.reset()
    a = (torch.randn(1, 6) * 0.5).to(device).requires_grad_()
    b = (torch.randn(8, 4) * 0.5).to(device).requires_grad_()
    lin = torch.nn.Linear(64, 64).to(device)

    def f(x):
        return lin(kat.group_rational(x, a, b, impl=impl)).square().mean()

    compiled = torch.compile(f, fullgraph=True)
    x = torch.randn(3, 7, 64, device=device, requires_grad=True)
    out_e = f(x)
    grads_e = torch.autograd.grad(out_e, (x, a, b))
    out_c = compiled(x)
    grads_c = torch.autograd.grad(out_c, (x, a, b))
    assert rel_err(out_c, out_e) <= 1e-5
    for gc, ge in zip(grads_c, grads_e):
        assert rel_err(gc, ge) <= 1e-5


def test_fake_impl_shapes_and_strides(device):
    from torch._subclasses.fake_tensor import FakeTensorMode
    a, b = torch.randn(1, 6, device=device), torch.randn(8, 4, device=device)
    real = torch.randn(2, 16, 3, 5, device=device).contiguous(memory_format=torch.channels_last)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fx = mode.from_tensor(real)
        y = torch.ops.kat.group_rational_fwd(fx, mode.from_tensor(a), mode.from_tensor(b), 1)
        gx, ga, gb = torch.ops.kat.group_rational_bwd(fx, fx, mode.from_tensor(a), mode.from_tensor(b), 1)
    expected = torch.ops.kat.group_rational_fwd(real, a, b, 1)
    assert y.shape == expected.shape and y.stride() == expected.stride()
    assert gx.stride() == expected.stride() and ga.shape == a.shape and gb.shape == b.shape
