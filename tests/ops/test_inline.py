"""The opt-in inline ops for torch.compile (KAT_INLINE_TRITON=1, kat/ops/group_rational/inline.py):
traced, they are the plan's own kernel launches at the plan's configs and grids, with nothing of
the plan's construction left in the graph, and torch.compile routes the autograd Function to them.

Tracing a user Triton kernel needs Triton's real JIT functions, not the interpreter's, so this runs
in a subprocess without TRITON_INTERPRET (tests/conftest.py sets it for this process). Only the
tracing is checked here: running the traced kernels needs a GPU (tests on the H200:
scripts/gpu_session.sh)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from kat.ops.group_rational import inline

SCRIPT = textwrap.dedent('''
    import torch
    import kat
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    from torch._subclasses.functional_tensor import dispatch_functionalize
    from kat.ops.group_rational import function as fn, inline

    assert inline.ENABLED
    x, go = torch.randn(2, 7, 64), torch.randn(2, 7, 64)
    a, b = torch.randn(1, 6), torch.randn(8, 4)

    def f(x, a, b, go):
        y = torch.ops.kat.group_rational_fwd_inline(x, a, b)
        return (y, *torch.ops.kat.group_rational_bwd_inline(go, x, a, b))

    gm = make_fx(dispatch_functionalize(f), tracing_mode="fake")(x, a, b, go)
    launches = [n for n in gm.graph.nodes if "triton_kernel_wrapper" in str(n.target)]
    plan = fn._op_plan(x, a, b, -1)
    want = [plan.fwd, plan.bwd, plan.red.partials, plan.red.final]
    assert len(launches) == 4, gm.code
    for node, launch in zip(launches, want):
        traced = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
        # num_warps makes it a one-config Autotuner around the plan's JITFunction
        assert traced.fn is launch.kernel and [c.num_warps for c in traced.configs] == [launch.num_warps]
        assert tuple(node.kwargs["grid"][0]) == launch.grid, (node.kwargs["grid"], launch.grid)
        for name, value in launch.consts.items():
            assert node.kwargs["kwargs"][name] == value, name
    assert not any(s in gm.code for s in ("randn", "normal")), gm.code  # the plan was built off the graph
    print("trace ok")

    outs = []
    def grab(gm, example_inputs):
        outs.append(gm.print_readable(print_output=False))
        raise RuntimeError("stop: traced")  # running the kernels needs a GPU

    def g(x, a, b):  # the Function group_rational uses for compiled code (CPU tensors: no impl check)
        return fn.GroupRationalFunction.apply(x, a, b, -1)

    try:
        torch.compile(g, backend=grab, fullgraph=True)(x.requires_grad_(), a.requires_grad_(), b.requires_grad_())
    except Exception as e:
        assert "stop: traced" in str(e), e
    assert "group_rational_fwd_inline" in outs[0] and "group_rational_bwd_inline" in outs[0], outs[0]
    assert "kat.group_rational_fwd(" not in outs[0]
    print("routing ok")
''')


def test_inline_ops_trace_to_the_plans_kernels():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(KAT_INLINE_TRITON="1", KAT_AUTOTUNE="0")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "trace ok" in run.stdout and "routing ok" in run.stdout, run.stdout


@pytest.mark.parametrize("shape,stride,channel_dim,ok", [
    ((2, 7, 64), (448, 64, 1), -1, True),
    ((2, 7, 64), (448, 64, 1), 1, False),       # channels not last: the opaque ops
    ((2, 7, 64), (64, 128, 1), -1, False),      # rows do not collapse (a transposed view)
    ((1, 7, 64), (999, 64, 1), -1, True),       # a size-1 dim's stride does not matter
    ((2, 0, 64), (0, 64, 1), -1, False),        # nothing to compute
])
def test_inline_supported(shape, stride, channel_dim, ok):
    x = torch.empty_strided(shape, stride)
    assert inline.supported(x, channel_dim) == (ok and inline.triton_op is not None)


def test_inline_is_off_by_default():
    assert "KAT_INLINE_TRITON" in os.environ or not inline.ENABLED


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Inductor runs user Triton kernels on a GPU only")
def test_inline_ops_under_inductor_match_eager_bitwise(monkeypatch):
    """Compiled by Inductor with the inline ops, the op gives the eager plan's results bit for bit
    (the same kernels at the same configs; the reduction's two launches sum in the one-launch
    form's order)."""
    import torch._dynamo

    import kat
    monkeypatch.setattr(inline, "ENABLED", True)
    torch._dynamo.reset()
    torch.manual_seed(0)
    x = torch.randn(4, 197, 768, device="cuda", dtype=torch.bfloat16)
    a = (torch.randn(1, 6, device="cuda") * 0.3)
    b = (torch.randn(8, 4, device="cuda") * 0.3)
    go = torch.randn_like(x)

    def f(x, a, b):
        return kat.group_rational(x, a, b, impl="triton")

    def run(fun):
        xs, as_, bs = (t.detach().clone().requires_grad_() for t in (x, a, b))
        y = fun(xs, as_, bs)
        return (y, *torch.autograd.grad(y, (xs, as_, bs), go))

    want = run(f)
    got = run(torch.compile(f, fullgraph=True))
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    torch._dynamo.reset()
