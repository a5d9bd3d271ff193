"""kat-transformer: the Kolmogorov-Arnold Transformer (Yang & Wang, arXiv 2409.10594) for PyTorch.

Importing ``kat`` registers the KAT models with timm.
"""
from . import models  # noqa: F401  (registers the KAT models with timm)
from .export import export_onnx, export_program
from .flops import flops_report
from .kanify import kanify
from .layers import GRKAN, GroupRational, GroupRational2d, set_rational_impl
from .ops import group_rational, group_rational_channels_first, group_rational_reference
from .models import KAT, from_vit
from .rational_init import activation_gain, fit_rational, init_coefficients, variance_gain

__version__ = "0.1.0"

__all__ = [
    "group_rational", "group_rational_channels_first", "group_rational_reference",
    "GroupRational", "GroupRational2d", "GRKAN", "set_rational_impl",
    "KAT", "from_vit", "kanify", "flops_report", "export_onnx", "export_program",
    "fit_rational", "init_coefficients", "variance_gain", "activation_gain", "__version__",
]
