"""FLOPs and parameter counts of any model, with the GR-KAN rationals shown separately.

Convention (fvcore's, which timm's and the DeiT/KAT papers' model tables use): a multiply-add of a
matmul, linear, convolution or attention product counts as one FLOP; other element-wise work
(GELU, LayerNorm, softmax, residual adds) counts as zero. The rationals are the exception this report
exists for: each evaluated element costs the operations of Horner's rule on the formula,

    P: m multiplies + m adds;  Q: |x|, n multiplies, n adds (with the leading 1);  P / Q: 1 divide
    = 2m + 2n + 2 FLOPs per element (20 for order (5, 4)),

so "without GR-KAN" (the same model with the rationals' work and coefficients taken out) and "with"
differ by exactly that. Matmul counts come from ``torch.utils.flop_counter.FlopCounterMode``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .layers import GroupRational, reference_impl

__all__ = ["FlopsReport", "flops_report", "rational_flops_per_element"]


def rational_flops_per_element(order: tuple[int, int]) -> int:
    m, n = order
    return 2 * m + 2 * n + 2


@dataclass
class FlopsReport:
    """FLOPs (fvcore convention, see the module docstring) for one input, and parameters."""
    total_flops: int          # with the rationals
    rational_flops: int       # the rationals' share of total_flops
    parameters: int
    rational_parameters: int  # the rational coefficients' share of parameters
    input_shape: tuple

    @property
    def flops_without_rationals(self) -> int:
        return self.total_flops - self.rational_flops

    @property
    def parameters_without_rationals(self) -> int:
        return self.parameters - self.rational_parameters

    def __str__(self) -> str:
        g = 1e9
        return (f"input {self.input_shape}: {self.total_flops / g:.3f} GFLOPs with GR-KAN "
                f"({self.flops_without_rationals / g:.3f} without, rationals +{self.rational_flops / g:.3f}); "
                f"{self.parameters / 1e6:.3f} M parameters ({self.parameters_without_rationals / 1e6:.3f} M "
                f"without, rationals +{self.rational_parameters})")

    def as_dict(self) -> dict:
        return {"input_shape": list(self.input_shape), "gflops": self.total_flops / 1e9,
                "gflops_without_rationals": self.flops_without_rationals / 1e9,
                "rational_gflops": self.rational_flops / 1e9, "parameters": self.parameters,
                "parameters_without_rationals": self.parameters_without_rationals,
                "rational_parameters": self.rational_parameters}


@torch.no_grad()
def flops_report(model: nn.Module, input_size: Sequence[int] = (3, 224, 224), batch_size: int = 1) -> FlopsReport:
    """Count one forward pass of ``model`` on a random input of ``(batch_size, *input_size)``
    (on the model's device); FLOPs are per batch."""
    from torch.utils.flop_counter import FlopCounterMode
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.randn(batch_size, *input_size, device=device, dtype=dtype)
    rational = [0]

    def hook(module: GroupRational, inputs, output):
        rational[0] += inputs[0].numel() * rational_flops_per_element(module.order)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, GroupRational)]
    was_training = model.training
    try:
        model.eval()
        with FlopCounterMode(display=False) as counter, reference_impl(model):
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    macs = counter.get_total_flops() // 2  # FlopCounterMode counts a multiply-add as 2
    params = sum(p.numel() for p in model.parameters())
    rparams = sum(p.numel() for m in model.modules() if isinstance(m, GroupRational) for p in m.parameters(recurse=False))
    return FlopsReport(macs + rational[0], rational[0], params, rparams, tuple(x.shape))
