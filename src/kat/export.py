"""Export KAT (or any model with GroupRational layers) to ONNX or ``torch.export``.

The fused Triton kernels are opaque custom ops that ONNX runtimes do not know, so export switches
every GroupRational to the PyTorch reference (``impl="torch"``), whose Horner evaluation decomposes
into standard element-wise ops (Mul, Add, Abs, Where, Div). The exported graph computes the same
formula; the model's own ``impl`` settings are restored afterwards.
"""
from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .layers import reference_impl

__all__ = ["reference_impl", "export_onnx", "export_program"]


def _example(model: nn.Module, input_size: Sequence[int], batch_size: int) -> torch.Tensor:
    p = next(model.parameters())
    return torch.randn(batch_size, *input_size, device=p.device, dtype=p.dtype)


def export_onnx(model: nn.Module, path: str | Path, input_size: Sequence[int] = (3, 224, 224),
                batch_size: int = 2, opset: int = 18, dynamic_batch: bool = True, dynamo: bool | None = None) -> Path:
    """Write ``model`` (in eval mode) to an ONNX file with input ``images`` and output ``logits``.

    ``dynamo=True`` uses PyTorch's torch.export-based exporter (needs the ``onnxscript`` package);
    ``False`` the older TorchScript-based one (only ``onnx``; deprecated by PyTorch); ``None`` picks
    the first when onnxscript is installed. The batch dimension is dynamic unless ``dynamic_batch=False``."""
    path = Path(path)
    if importlib.util.find_spec("onnx") is None:
        raise ImportError("export_onnx needs the onnx package: pip install 'kat-transformer[onnx]' (onnx, onnxscript "
                          "and onnxruntime to run the file)")
    if dynamo is None:
        dynamo = importlib.util.find_spec("onnxscript") is not None
    x = _example(model, input_size, batch_size)
    names = {"input_names": ["images"], "output_names": ["logits"]}
    was_training = model.training
    model.eval()
    try:
        with reference_impl(model), torch.no_grad(), _quiet_tracer():
            if dynamo:
                shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
                torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=opset,
                                  dynamic_shapes=shapes, verbose=False, **names)
            else:
                axes = {"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
                torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset, dynamic_axes=axes,
                                  **names)
    finally:
        model.train(was_training)
    return path


def export_program(model: nn.Module, input_size: Sequence[int] = (3, 224, 224), batch_size: int = 2):
    """``torch.export.export`` of ``model`` (eval mode, reference rationals): an ExportedProgram."""
    x = _example(model, input_size, batch_size)
    model.eval()
    with reference_impl(model):
        return torch.export.export(model, (x,))


@contextlib.contextmanager
def _quiet_tracer():
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        yield
