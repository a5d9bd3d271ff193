"""The Triton kernels compile for a real GPU target (sm_90, the H200's) on a machine without a GPU:
triton.compile runs the whole backend (TTIR -> TTGIR -> LLVM -> PTX -> cubin through the bundled
ptxas), which catches constructs the interpreter accepts but the compiler does not. Runs in a
subprocess because tests/conftest.py puts this process's Triton in interpreter mode."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kat.ops.group_rational import triton_available

SCRIPT = textwrap.dedent('''
    import sys
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from kat.ops.group_rational import kernels, tuning
    from kat.ops.group_rational.reduction import Reduction
    from kat.ops.layernorm_rational import kernels as lnk

    def signature(kernel, dtype):
        """Data pointers in dtype, coefficient/partial pointers fp32, the counter i32, ints i32."""
        sig = {}
        for p in kernel.params:
            if p.is_constexpr:
                sig[p.name] = "constexpr"
            elif p.name.endswith("_ptr"):
                sig[p.name] = ("*" + dtype if p.name in ("x_ptr", "y_ptr", "go_ptr", "gx_ptr", "gy_ptr")
                               else "*i32" if p.name == "count_ptr" else "*fp32")
            else:
                sig[p.name] = "fp32" if p.name == "eps" else "i32"
        return sig

    def fwd(cfg, gs):
        return tuning.fwd_consts(cfg, gs, 1000)

    # each kernel's default config, and the first config of its other variant (forward: SELECT;
    # backward: ROW_REDUCE), per-column and UNIFORM (scalar coefficients)
    cases = []
    for kernel, configs, consts in ((kernels.group_rational_fwd_kernel, tuning.GPU_FWD_CONFIGS, fwd),
                                    (kernels.group_rational_bwd_kernel, tuning.GPU_BWD_CONFIGS, tuning.bwd_consts)):
        first = configs[0]
        other = next(c for c in configs if c[3] != first[3])
        cases += [(kernel, consts(first, first[1] + 1)), (kernel, consts(other, other[1] + 1)),
                  (kernel, consts(first, 3 * first[1]))]
        assert cases[-1][1]["UNIFORM"] and not cases[-3][1]["UNIFORM"]
    # the backward with its loads pipelined through shared memory (STAGES > 0)
    piped = next(c for c in tuning.GPU_BWD_CONFIGS if len(c) > 4 and c[4] > 0)
    cases.append((kernels.group_rational_bwd_kernel, tuning.bwd_consts(piped, 3 * piped[1])))
    # folded accumulators (FOLD > 1), with and without pipelined loads
    for folded in [c for c in tuning.GPU_BWD_CONFIGS if len(c) > 5 and c[5] > 1][:2]:
        consts = tuning.bwd_consts(folded, 3 * folded[1])
        assert consts["FOLD"] > 1
        cases.append((kernels.group_rational_bwd_kernel, consts))
    # 8-wide blocks at group size 24 (C = 192): forward and folded backward with scalar coefficients
    narrow_fwd, narrow_bwd = fwd((128, 8, 4, False), 24), tuning.bwd_consts((16, 8, 1, False, 3, 8), 24)
    assert narrow_fwd["UNIFORM"] and narrow_bwd["UNIFORM"] and narrow_bwd["FOLD"] == 8
    cases += [(kernels.group_rational_fwd_kernel, narrow_fwd), (kernels.group_rational_bwd_kernel, narrow_bwd)]
    # the coefficient reduction (fp32 only: it reads the backward's fp32 partial sums)
    red = Reduction(torch.device("cpu"), 352, 8, 24, 6, 4, True, sms=132)
    reductions = [(kernels.coefficient_partials_kernel, red.partials.consts),
                  (kernels.coefficient_partials_kernel, red.merged.consts),  # last program finishes
                  (kernels.coefficient_grads_kernel, red.final.consts),
                  (kernels.coefficient_grads_kernel, dict(red.final.consts, SHARED=False))]
    for kernel, constexprs in reductions:
        src = ASTSource(fn=kernel, signature=signature(kernel, "fp32"), constexprs=constexprs)
        assert len(triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["cubin"]) > 1000
        print(kernel.__name__, constexprs, "ok")
    # LayerNorm + rational, forward and backward, KAT-S/B widths
    for kernel, rows in ((lnk.layernorm_rational_fwd_kernel, 4096), (lnk.layernorm_rational_bwd_kernel, 2048)):
        for block_c in (512, 1024):
            for dtype in ("fp32", "bf16"):
                src = ASTSource(fn=kernel, signature=signature(kernel, dtype),
                                constexprs={"BLOCK_M": rows // block_c, "BLOCK_C": block_c})
                assert len(triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["cubin"]) > 1000
                print(kernel.__name__, dtype, block_c, "ok")
    for kernel, constexprs in cases:
        for dtype in ("fp32", "bf16", "fp16"):
            src = ASTSource(fn=kernel, signature=signature(kernel, dtype), constexprs=constexprs)
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32))
            assert len(compiled.asm["cubin"]) > 1000
            # 1/Q as one approximate reciprocal, not div.full's range-checked sequence
            assert "rcp.approx.ftz.f32" in compiled.asm["ptx"], kernel.__name__
            print(kernel.__name__, dtype, constexprs, "ok")
    # Specialised as a real call is (unit channel strides; 16-divisible pointers and row strides),
    # the pipelined backward loads through asynchronous copies into shared memory
    names = [p.name for p in kernels.group_rational_bwd_kernel.params]
    aligned = ("x_ptr", "go_ptr", "gx_ptr", "S", "CA", "C", "stride_xs", "stride_gs", "stride_dxs")
    for dtype in ("fp32", "bf16"):
        constexprs = dict(tuning.bwd_consts(piped, 3 * piped[1]), stride_xc=1, stride_gc=1, stride_dxc=1)
        sig = signature(kernels.group_rational_bwd_kernel, dtype)
        sig.update({k: "constexpr" for k in constexprs})
        src = ASTSource(fn=kernels.group_rational_bwd_kernel, signature=sig, constexprs=constexprs,
                        attrs={(names.index(n),): [["tt.divisibility", 16]] for n in aligned})
        ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
        assert "cp.async" in ptx, (dtype, constexprs)
        print("pipelined backward", dtype, "ok")
''')


@pytest.mark.skipif(sys.platform != "linux", reason="Triton's CUDA backend tools ship for Linux")
def test_kernels_compile_for_sm90():
    assert triton_available(), "triton must be installed (a declared dependency on Linux x86-64)"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    src = str(Path(__file__).resolve().parents[3] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count(" ok") == 47, run.stdout  # every case above printed "ok"
